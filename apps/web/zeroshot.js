// Reading an edgevl export in the browser: the manifest (version check, artifact choice, sha256),
// the text tower's inputs from the export's tokenizer.json, and the zero-shot ranking.

export const SUPPORTED_MAJOR = 1;

export function checkManifest(manifest) {
  const version = String(manifest.manifest_version ?? "1.0");
  const major = Number.parseInt(version.split(".")[0], 10);
  if (!Number.isInteger(major)) throw new Error(`manifest_version ${version} is not MAJOR.MINOR; re-export with edgevl`);
  if (major > SUPPORTED_MAJOR) {
    throw new Error(`manifest_version ${version} is newer than this page reads (${SUPPORTED_MAJOR}.x); update the page`);
  }
  if (!Array.isArray(manifest.artifacts)) throw new Error("manifest.json has no 'artifacts' list; it is not an edgevl manifest");
}

// The ONNX artifact of `component` at `precision`.
export function chooseArtifact(manifest, component, precision) {
  const found = manifest.artifacts.find((a) => a.target === "onnx" && a.component === component && a.precision === precision);
  if (!found) {
    const have = manifest.artifacts.filter((a) => a.component === component).map((a) => `${a.target}/${a.precision}`);
    throw new Error(`the export has no onnx/${precision} ${component} artifact; it has: ${have.join(", ") || "none"}`);
  }
  return found;
}

export async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ids of one text, truncated as Hugging Face tokenizers' `enable_truncation(max_length)` does for a
// single sequence: the text's own tokens are cut so that they and the special tokens fit.
export function encodeOne(tokenizer, text, maxLength) {
  const full = tokenizer.encode(text, { add_special_tokens: true }).ids;
  if (full.length <= maxLength) return full;
  const raw = tokenizer.encode(text, { add_special_tokens: false }).ids;
  const added = full.length - raw.length;
  let start = 0;
  while (start + raw.length <= full.length && raw.some((id, i) => full[start + i] !== id)) start++;
  if (added >= maxLength || start + raw.length > full.length) return full.slice(0, maxLength);
  return [...full.slice(0, start), ...raw.slice(0, maxLength - added), ...full.slice(start + raw.length)];
}

// Texts -> { input_ids, attention_mask } as int64 arrays [n, context_length], padded with pad_token_id.
export function encodeTexts(tokenizer, texts, pre) {
  const length = pre.context_length;
  const ids = new BigInt64Array(texts.length * length).fill(BigInt(pre.pad_token_id));
  const mask = new BigInt64Array(texts.length * length);
  const rows = [];
  texts.forEach((text, row) => {
    const tokens = encodeOne(tokenizer, text, length);
    rows.push(tokens);
    tokens.forEach((id, i) => {
      ids[row * length + i] = BigInt(id);
      mask[row * length + i] = 1n;
    });
  });
  return { ids, mask, rows, n: texts.length, length };
}

// Cosine scores (the towers' outputs are L2-normalised) of one image to each prompt, best first.
export function rank(labels, imageEmb, textEmb) {
  const dim = imageEmb.length;
  const scores = labels.map((label, j) => {
    let s = 0;
    for (let k = 0; k < dim; k++) s += imageEmb[k] * textEmb[j * dim + k];
    return { label, score: s };
  });
  return scores.sort((a, b) => b.score - a.score);
}
