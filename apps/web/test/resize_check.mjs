// node test/resize_check.mjs CASES.json: resizes each case's raw RGB file with preprocess.js and
// prints, per case, how many bytes differ from the expected file (Pillow's output).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { resize } from "../preprocess.js";

const casesPath = process.argv[2];
const dir = dirname(casesPath);
const out = [];
for (const c of JSON.parse(readFileSync(casesPath, "utf8"))) {
  const src = new Uint8Array(readFileSync(join(dir, c.src)));
  const want = new Uint8Array(readFileSync(join(dir, c.want)));
  const got = resize(src, c.w, c.h, c.nw, c.nh, c.interp);
  let differing = got.length === want.length ? 0 : want.length;
  for (let i = 0; i < Math.min(got.length, want.length); i++) if (got[i] !== want[i]) differing++;
  out.push({ case: c.want, differing });
}
console.log(JSON.stringify(out));
