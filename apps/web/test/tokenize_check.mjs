// node test/tokenize_check.mjs EXPORT_DIR TEXTS.json: the page's text encoding (tokenizers.js with
// the export's tokenizer.json, truncated and padded as preprocess.json says) of each text, as JSON.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { encodeTexts } from "../zeroshot.js";

const [exportDir, textsPath] = process.argv.slice(2);
const read = (path) => JSON.parse(readFileSync(path, "utf8"));
const configPath = join(exportDir, "tokenizer", "tokenizer_config.json");
const tokenizer = new Tokenizer(read(join(exportDir, "tokenizer", "tokenizer.json")), existsSync(configPath) ? read(configPath) : {});
const pre = read(join(exportDir, "preprocess.json"));
const enc = encodeTexts(tokenizer, read(textsPath), pre);
const rows = [];
for (let i = 0; i < enc.n; i++) {
  rows.push({ input_ids: Array.from(enc.ids.subarray(i * enc.length, (i + 1) * enc.length), Number),
              attention_mask: Array.from(enc.mask.subarray(i * enc.length, (i + 1) * enc.length), Number) });
}
console.log(JSON.stringify(rows));
