"""Token reduction (`--tokens`) on a ViT-B/16-size CLIP vision tower, and its cost in agreement on
the small trained CLIP and SigLIP checkpoints.

Part 1: a CLIP ViT-B/16 vision tower (transformers `CLIPVisionConfig` defaults but patch 16,
224 px: 197 tokens, 12 layers, width 768; random weights) exported fp32, batch 1, through edgevl's
ONNX and OpenVINO exporters at ToMe r in {0, 4, 8, 12, 16}; latency on ONNX Runtime and OpenVINO
(CPU, all candidates in ONE run, alternating rounds, median of each artifact's per-round best),
ratios against r=0 of the same run; FLOPs counted from the ONNX graph (edgevl.profile.flops) and
from the plan; attention blocks fused per artifact.

Part 2: agreement with the unreduced tower on the held-out parity split (real photos) for the
tiny trained CLIP and SigLIP (`edgevl.models.tiny.tiny_checkpoint`), through `apply_tokens`.

    python benchmarks/tokens.py [--rounds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

R_VALUES = (0, 4, 8, 12, 16)


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), platform.processor())


def vit_b16_checkpoint(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from edgevl.models.tiny import word_tokenizer

    torch.manual_seed(0)
    text = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=1022, eos_token_id=1023, pad_token_id=1)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(folder)
    word_tokenizer(folder, bos=1022, eos=1023, pad=1, size=1022)
    return folder


def latency_part(work: Path, rounds: int, runs: int) -> dict:
    import openvino as ov
    import onnxruntime as ort

    from edgevl.compress.tokens import reduce_tokens_
    from edgevl.compress.tokens_config import TokenConfig
    from edgevl.exporters.base import ExportOptions
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions
    from edgevl.profile.flops import count_onnx
    from edgevl.registry import EXPORTERS

    spec = load_hf_clip(str(vit_b16_checkpoint(work / "vit-b16")), LoadOptions())
    options = ExportOptions(precision="fp32", static_shapes={"batch": 1})
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows, runners = [], {}
    threads = os.cpu_count() or 1
    for r in R_VALUES:
        record = reduce_tokens_(spec, TokenConfig("tome", r=r))
        row = {"r": r, "per_layer_tokens": record["per_layer_tokens"], "plan_flops_ratio": record["flops_ratio"]}
        for target in ("onnx", "openvino"):
            t0 = time.perf_counter()
            art = EXPORTERS.get(target)().export(spec, "image", work / f"{target}-r{r}", options)
            row[f"{target}_export_s"] = round(time.perf_counter() - t0, 1)
            row[f"{target}_fused_attention"] = art.fused_attention
            row[f"{target}_unfused_attention"] = art.unfused_attention
            if target == "onnx":
                row["graph_flops"] = count_onnx(art.path, {"pixel_values": [1, 3, 224, 224]}).total
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                sess = ort.InferenceSession(str(art.path), so, providers=["CPUExecutionProvider"])
                runners[(r, target)] = lambda s=sess: s.run(None, {"pixel_values": pixels})[0]
            else:
                compiled = ov.Core().compile_model(str(art.path), "CPU", {"INFERENCE_NUM_THREADS": threads})
                req = compiled.create_infer_request()
                runners[(r, target)] = lambda q=req: q.infer({0: pixels})
        rows.append(row)
        print(f"exported r={r}: tokens {row['per_layer_tokens']}", flush=True)
    for run in runners.values():  # warm-up
        run()
    best: dict = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            best[key].append(min(times))
    for row in rows:
        for target in ("onnx", "openvino"):
            ms = float(np.median(best[(row["r"], target)])) * 1e3
            base = float(np.median(best[(0, target)])) * 1e3
            row[f"{target}_ms"] = round(ms, 2)
            row[f"{target}_speedup"] = round(base / ms, 3)
        row["graph_flops_ratio"] = round(row["graph_flops"] / rows[0]["graph_flops"], 4)
    return {"rows": rows, "threads": threads, "rounds": rounds, "runs_per_round": runs}


def agreement_part(work: Path) -> dict:
    from edgevl.compress.tokens_config import TokenConfig
    from edgevl.compress.tokens_gate import apply_tokens
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions
    from edgevl.models.tiny import tiny_checkpoint

    configs = {"clip": [TokenConfig("tome", r=r) for r in (0, 1, 2, 3)] + [TokenConfig("tome", r=3, schedule="decreasing")]
               + [TokenConfig("evit", keep=k) for k in (1.0, 0.7, 0.5)],
               "siglip": [TokenConfig("tome", r=r) for r in (0, 1, 2, 3, 4)]
               + [TokenConfig("tome", r=3, schedule="decreasing")]}
    out = {}
    for kind, cfgs in configs.items():
        folder = tiny_checkpoint(kind, work / f"tiny-{kind}")
        rows = []
        for cfg in cfgs:
            spec = load_hf_clip(str(folder), LoadOptions())
            rec = apply_tokens(spec, cfg)
            agree = rec["agreement_with_unreduced"]
            rows.append({"config": cfg.label(), "per_layer_tokens": rec["per_layer_tokens"],
                         "flops_ratio": rec["flops_ratio"], **{k: agree[k] for k in (
                             "cosine_min", "cosine_mean", "top1_agreement", "top1_agreement_strict", "queries")}})
            print(kind, rows[-1], flush=True)
        spec = load_hf_clip(str(folder), LoadOptions())
        auto = apply_tokens(spec, TokenConfig("tome", auto=True), max_drop=0.01)
        out[kind] = {"rows": rows, "auto_max_drop_0.01": {"chosen": auto["config"], "gate": auto["gate"],
                                                          "parity": auto["agreement_with_unreduced"]}}
    return out


def markdown(result: dict) -> str:
    lat = result["latency"]
    run = lat.get("run", result)
    lines = [
        "# Token reduction (`--tokens`): ViT-B/16-size CLIP vision tower, and agreement on the tiny trained checkpoints",
        "",
        f"Part 1 produced by `python benchmarks/tokens.py` on {run['cpu']} ({lat['threads']} threads), "
        f"{run['date']}, wall time {run['wall_s']:.0f} s"
        + (f"; part 2 rerun alone by `python benchmarks/tokens.py --agreement-only` ({result['wall_s']:.0f} s)"
           if "run" in lat else "") + ". Latency: batch 1, fp32, the median over "
        f"{lat['rounds']} alternating rounds of each artifact's best of {lat['runs_per_round']} runs; speed-ups "
        "against r=0 of the same run. The machine was shared with other jobs: ratios, not absolute times, are the result.",
        "",
        "## ViT-B/16-size CLIP vision tower (random weights, 224 px, 197 tokens, 12 layers), ToMe constant r",
        "",
        "| r | tokens per layer (in, ..., out) | ONNX graph FLOPs | vs r=0 | ORT ms | ORT speed-up | OpenVINO ms | OpenVINO speed-up | attention fused (ORT / OV) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in lat["rows"]:
        lines.append(
            f"| {row['r']} | {row['per_layer_tokens']} | {row['graph_flops'] / 1e9:.2f} G | {row['graph_flops_ratio']:.3f} | "
            f"{row['onnx_ms']} | {row['onnx_speedup']:.2f}x | {row['openvino_ms']} | {row['openvino_speedup']:.2f}x | "
            f"{row['onnx_fused_attention']}/12, {row['openvino_fused_attention']}/12 |")
    lines += ["", "## Agreement with the unreduced tower, held-out parity split (real photos)", "",
              "Tiny trained checkpoints from `edgevl.models.tiny.tiny_checkpoint` (48 px, patch 16: 9 patches, "
              "3 layers). Top-1: zero-shot agreement (tie-aware at the fp32 floor / strict).", ""]
    for kind, part in result["agreement"].items():
        lines += [f"### {kind}", "", "| config | tokens per layer | encoder FLOPs vs unreduced | cosine min | cosine mean | top-1 (tie-aware) | top-1 (strict) |",
                  "|---|---|---|---|---|---|---|"]
        for row in part["rows"]:
            lines.append(f"| {row['config']} | {row['per_layer_tokens']} | {row['flops_ratio']:.3f} | {row['cosine_min']:.4f} | "
                         f"{row['cosine_mean']:.4f} | {row['top1_agreement']} | {row['top1_agreement_strict']} |")
        auto = part["auto_max_drop_0.01"]
        lines += ["", f"`tome:r=auto` with `--max-drop 0.01` chose `{auto['chosen']}` (gate tries: "
                  + ", ".join(f"{t['config']} {t['top1_agreement']}" for t in auto["gate"]["tries"])
                  + f"); on the parity split: top-1 {auto['parity']['top1_agreement']}, cosine min {auto['parity']['cosine_min']:.4f}.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--agreement-only", action="store_true",
                    help="rerun part 2 only; part 1 is kept from OUT/tokens.json (its own run, marked so)")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
        if args.agreement_only:
            previous = json.loads((args.out / "tokens.json").read_text())
            result["latency"] = {**previous["latency"], "run": {k: previous[k] for k in ("cpu", "date", "wall_s")}}
        else:
            result["latency"] = latency_part(work, args.rounds, args.runs)
        result["agreement"] = agreement_part(work)
    result["wall_s"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokens.json").write_text(json.dumps(result, indent=1))
    (args.out / "tokens.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
