// The page: loads an edgevl export (?export=URL, default "export/"; ?precision=, default fp32),
// classifies a dropped or picked image against the typed labels and shows the ranking and the
// time each tower took. The last result is also kept in `window.edgevlResult` for tests.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";
import { cropRgb, normalise, rgbaToRgb } from "./preprocess.js";
import { checkManifest, chooseArtifact, encodeTexts, rank, sha256Hex } from "./zeroshot.js";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// Threads need a cross-origin-isolated page (SharedArrayBuffer); elsewhere one thread.
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const base = new URL(params.get("export") || "export/", location.href);
const precision = params.get("precision") || "fp32";
const state = { image: null };

async function fetchOk(path, as) {
  const response = await fetch(new URL(path, base));
  if (!response.ok) throw new Error(`${new URL(path, base)}: HTTP ${response.status}; is the export folder served there?`);
  return as === "json" ? response.json() : response.arrayBuffer();
}

async function session(artifact) {
  const bytes = await fetchOk(artifact.path, "buffer");
  const digest = await sha256Hex(bytes);
  if (digest !== artifact.sha256) throw new Error(`${artifact.path}: sha256 differs from the manifest's; copy the export again`);
  return ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
}

async function load() {
  const manifest = await fetchOk("manifest.json", "json");
  checkManifest(manifest);
  const pre = await fetchOk("preprocess.json", "json");
  const tokenizerJson = await fetchOk("tokenizer/tokenizer.json", "json");
  let tokenizerConfig = {};
  try { tokenizerConfig = await fetchOk("tokenizer/tokenizer_config.json", "json"); } catch { /* optional file */ }
  const [image, text] = await Promise.all(["image", "text"].map((c) => session(chooseArtifact(manifest, c, precision))));
  return { manifest, pre, tokenizer: new Tokenizer(tokenizerJson, tokenizerConfig), image, text };
}

// The decoded file's own pixels: no colour-space conversion, alpha not premultiplied.
async function pixels(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { rgb: rgbaToRgb(data), width: bitmap.width, height: bitmap.height };
}

async function classify(model) {
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const template = $("template").value;
  if (labels.length < 2 || new Set(labels).size !== labels.length) throw new Error("give two or more distinct labels");
  if (!template.includes("{}")) throw new Error("the template needs {} where the label goes");
  const { pre } = model;
  let t = performance.now();
  const { rgb, width, height } = await pixels(state.image);
  const crop = cropRgb(rgb, width, height, pre);
  const tensor = normalise(crop, pre.crop, pre);
  const preprocessMs = performance.now() - t;
  t = performance.now();
  const imageOut = await model.image.run({ [model.image.inputNames[0]]: new ort.Tensor("float32", tensor, [1, 3, pre.crop, pre.crop]) });
  const imageMs = performance.now() - t;
  const prompts = labels.map((l) => template.replace("{}", l));
  const enc = encodeTexts(model.tokenizer, prompts, pre);
  const feeds = { input_ids: new ort.Tensor("int64", enc.ids, [enc.n, enc.length]),
                  attention_mask: new ort.Tensor("int64", enc.mask, [enc.n, enc.length]) };
  t = performance.now();
  const textOut = await model.text.run(Object.fromEntries(pre.text_inputs.map((n) => [n, feeds[n]])));
  const textMs = performance.now() - t;
  const ranking = rank(labels, imageOut[model.image.outputNames[0]].data, textOut[model.text.outputNames[0]].data);
  let crop64 = "";
  for (let i = 0; i < crop.length; i += 0x8000) crop64 += String.fromCharCode(...crop.subarray(i, i + 0x8000));
  return { ranking, prompts, inputIds: enc.rows, timingsMs: { preprocess: preprocessMs, image: imageMs, text: textMs },
           cropBase64: btoa(crop64) };
}

function show(result) {
  const best = result.ranking[0].score;
  const worst = result.ranking[result.ranking.length - 1].score;
  $("results").innerHTML = "";
  for (const { label, score } of result.ranking) {
    const row = $("results").insertRow();
    row.insertCell().textContent = label;
    row.insertCell().textContent = score.toFixed(4);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, (100 * (score - worst)) / Math.max(best - worst, 1e-9))}%`;
    row.insertCell().appendChild(bar);
  }
  const t = result.timingsMs;
  $("timings").textContent = `image tower ${t.image.toFixed(1)} ms · text tower ${t.text.toFixed(1)} ms ` +
    `(${result.prompts.length} prompts) · preprocessing ${t.preprocess.toFixed(1)} ms`;
}

function pick(file) {
  state.image = file;
  $("preview").src = URL.createObjectURL(file);
  $("run").disabled = !state.model;
}

async function main() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) pick(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) pick(e.target.files[0]); });
  try {
    state.model = await load();
    $("status").textContent = `ready: ${state.model.manifest.model?.name ?? "model"} (onnx ${precision})`;
  } catch (err) {
    $("status").textContent = `error: ${err.message}`;
    return;
  }
  $("run").disabled = !state.image;
  $("run").addEventListener("click", async () => {
    $("status").textContent = "running…";
    try {
      const result = await classify(state.model);
      window.edgevlResult = result;
      show(result);
      $("status").textContent = "done";
    } catch (err) {
      $("status").textContent = `error: ${err.message}`;
    }
  });
}

main();
