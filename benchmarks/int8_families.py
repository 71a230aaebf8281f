"""edgevl int8 vs ONNX Runtime's `quantize_dynamic` (per-tensor, per-channel) vs NNCF's default
int8, on both towers of a ViT-B/32-size Hugging Face `CLIPModel` (random weights, said so in the
output) and of the embedded default model, in one run.

Per tower and variant: min / mean embedding cosine to the fp32 artifact and zero-shot top-1
agreement (tie-aware and strict) on the held-out parity split (calibration and the gate never
see it), latency as a ratio to fp32 on the same runtime at batch 1 and 8 (interleaved rounds,
best round kept: the machines are shared), artifact size, and edgevl's build time.

    python benchmarks/int8_families.py [--models vitb32,default] [--rounds 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgevl.tolerances import tolerance_for as _tolerance_for  # noqa: E402

# The parity row whose cosine floor decides which zero-shot picks are ties (parity.tie_bands).
INT8_FLOOR = _tolerance_for("onnx", "int8").cosine_min

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 300  # projection-only contrastive steps for the ViT-B/32 checkpoint
Run = Callable[[dict], np.ndarray]


def vitb32_checkpoint(folder: Path) -> Path:
    """`CLIPModel(CLIPConfig())` (ViT-B/32 image tower, 12-block causal text tower) with seeded
    random tower weights, a word-level tokenizer over the bundled texts, and its two projections
    trained contrastively on the bundled photos (`edgevl.models.tiny`) so that zero-shot picks
    are decisive; saved as a user's checkpoint folder (safetensors)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions
    from edgevl.models.tiny import train_clip_projections, word_tokenizer

    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    config = CLIPConfig()
    model = CLIPModel(config)
    model.save_pretrained(folder)
    text = config.text_config
    word_tokenizer(folder, bos=text.bos_token_id, eos=text.eos_token_id, pad=text.pad_token_id, size=4096)
    spec = load_hf_clip(str(folder), LoadOptions())
    train_clip_projections(model, spec.preprocess, spec.tokenize, steps=STEPS)
    model.save_pretrained(folder)
    return folder


def best_seconds(runs: dict[str, Run], feed: dict, rounds: int, iters: int) -> dict[str, float]:
    """Seconds per call of each runner: 2 warm-up calls, then `rounds` interleaved rounds of
    `iters` calls, keeping the best."""
    best = {k: np.inf for k in runs}
    for run in runs.values():
        for _ in range(2):
            run(feed)
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(iters):
                t = time.perf_counter()
                run(feed)
                best[key] = min(best[key], time.perf_counter() - t)
    return best


def openvino_runner(model: "object") -> Run:
    """An OpenVINO model compiled for CPU, 2 threads, f32 inference precision (int8 layers stay
    int8; the rest is not lowered to bf16 on CPUs that have it)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda feeds: np.array(request.infer(feeds)[0], copy=True)


def ov_size_mb(model: "object", tmp: Path, name: str) -> float:
    import openvino as ov

    path = tmp / f"{name}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return round((path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6, 2)


def tower(spec: "object", component: str, tmp: Path, rounds: int, iters: int, log: Callable[[str], None]) -> dict:
    import nncf
    import onnx
    import openvino as ov
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevl.calibration.datasets import bundled
    from edgevl.compress import quantize as Q
    from edgevl.compress.gate import gate_cosine_floor, gate_data, measure, ort_run
    from edgevl.compress.ort_graph import session
    from edgevl.compress.qdq import linear_nodes, prepare, strip_value_info
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.tolerances import tolerance_for

    fp32_path = tmp / f"{component}.fp32.onnx"
    export_tower_onnx(spec.tower(component), fp32_path)
    fp32 = onnx.load(str(fp32_path))
    n_linear = len(linear_nodes(prepare(fp32)[0]))
    feeds = bundled().feeds(spec, component)
    judge = gate_data(spec, component, ort_run(fp32), INT8_FLOOR, split="parity")

    onnx_models: dict[str, object] = {"ORT fp32": fp32}
    notes: dict[str, dict] = {"ORT fp32": {"int8_layers": 0}}
    log(f"{component}: edgevl int8 (default config, gated) ...")
    t0 = time.perf_counter()
    gate = Q.build_gate_data(spec, component, fp32, INT8_FLOOR)
    config = Q.default_config("int8", fp32, max_drop=0.01)
    floor = gate_cosine_floor(tolerance_for("onnx", "int8").cosine_min)  # what `edgevl export` asks of the gate
    model, recipe, _ = Q.quantize_model(fp32, config, feeds, component, gate, floor, progress=log)
    key = f"edgevl int8 ({type(config).__name__})"
    onnx_models[key] = model
    notes[key] = {"int8_layers": len(recipe.layers), "build_s": round(time.perf_counter() - t0, 1)}
    clean = tmp / f"{component}.clean.onnx"
    onnx.save(strip_value_info(onnx.load(str(fp32_path))), str(clean))  # ORT's quantizer re-infers shapes
    for label, per_channel in (("per-tensor", False), ("per-channel", True)):
        out = tmp / f"{component}.dyn{int(per_channel)}.onnx"
        quantize_dynamic(str(clean), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel,
                         weight_type=QuantType.QInt8)
        onnx_models[f"ORT quantize_dynamic {label}"] = onnx.load(str(out))
        notes[f"ORT quantize_dynamic {label}"] = {"int8_layers": n_linear}

    log(f"{component}: NNCF default int8 ...")
    ov_fp32 = ov.convert_model(str(fp32_path))
    t0 = time.perf_counter()
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(feeds))
    notes["NNCF int8 (OpenVINO)"] = {"build_s": round(time.perf_counter() - t0, 1)}
    notes["OpenVINO fp32"] = {}

    results: dict[str, dict] = {}
    onnx_runs = {k: (lambda s: (lambda f: s.run(None, f)[0]))(session(m)) for k, m in onnx_models.items()}
    ov_runs = {"OpenVINO fp32": openvino_runner(ov_fp32), "NNCF int8 (OpenVINO)": openvino_runner(ov_int8)}
    for k, m in onnx_models.items():
        results[k] = {**notes[k], **measure(judge, onnx_runs[k]), "size_mb": round(len(m.SerializeToString()) / 1e6, 2)}
    for k, run in ov_runs.items():
        results[k] = {**notes[k], **measure(judge, run), "size_mb": ov_size_mb(ov_fp32 if "fp32" in k else ov_int8, tmp, k.split()[0])}
    for batch in (1, 8):
        feed = {k: v[:batch] for k, v in judge.feeds.items()}
        log(f"{component}: timing at batch {batch} ...")
        for runs, base in ((onnx_runs, "ORT fp32"), (ov_runs, "OpenVINO fp32")):
            best = best_seconds(runs, feed, rounds, iters)
            for k in runs:
                results[k][f"ms_b{batch}"] = round(best[k] * 1e3, 2)
                results[k][f"ratio_b{batch}"] = round(best[k] / best[base], 3)
    return {"linear_layers": n_linear, "parity_samples": judge.n_samples, "variants": results}


def markdown(report: dict) -> str:
    cols = ["cosine_min", "cosine_mean", "top1_agreement", "top1_agreement_strict", "ratio_b1", "ratio_b8",
            "ms_b1", "ms_b8", "size_mb", "int8_layers", "build_s"]
    lines = ["# int8 across model families: edgevl vs ORT quantize_dynamic vs NNCF", "",
             f"Machine: {report['machine']['cpu']} ({', '.join(report['machine']['int8_isa']) or 'no int8 dot-product ISA'}), "
             f"{report['machine']['threads']} threads; onnxruntime {report['machine']['onnxruntime']}, "
             f"openvino {report['machine']['openvino']}, nncf {report['machine']['nncf']}.", ""]
    for name, model in report["models"].items():
        lines += [f"## {name}", "", model["note"], ""]
        for component, t in model["towers"].items():
            lines += [f"### {component} tower ({t['linear_layers']} linear layers, {t['parity_samples']} held-out parity rows)", "",
                      "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for k, r in t["variants"].items():
                lines.append(f"| {k} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
            lines.append("")
    lines += ["ratio = latency / fp32 latency on the same runtime in the same run (ORT rows against ORT fp32, "
              "NNCF against OpenVINO fp32), 2 threads, best of interleaved rounds. Cosine and agreement against "
              "the fp32 ONNX artifact on the held-out parity split; top1_agreement is tie-aware (a pick within its "
              "tie band at the int8 row's cosine floor agrees, edgevl.parity.tie_bands), strict beside it. int8_layers for ORT's quantizer: every MatMul/Gemm it was given."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vitb32,default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import nncf
    import onnxruntime as ort
    import openvino as ov

    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="edgevl-families-"))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    flags = set(Path("/proc/cpuinfo").read_text().split())
    report = {"machine": {"cpu": cpu, "threads": 2, "int8_isa": [f for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
                          "onnxruntime": ort.__version__, "openvino": ov.__version__, "nncf": nncf.__version__},
              "models": {}}
    for name in args.models.split(","):
        if name == "vitb32":
            source = str(vitb32_checkpoint(tmp / "clip-vit-b32-random"))
            note = ("Hugging Face `CLIPModel(CLIPConfig())`: ViT-B/32 image tower, 12-block causal text tower, "
                    "**random tower weights** (seed 0), projections trained contrastively on the bundled photos "
                    f"({STEPS} steps), word-level tokenizer over the bundled texts.")
        else:
            source, note = None, "The embedded default model (EfficientNet-Lite0 image tower, all-MiniLM-L6-v2 text tower)."
        spec = resolve_model(source, LoadOptions())
        towers = {}
        for component in ("image", "text"):
            log(f"{name} {component}")
            towers[component] = tower(spec, component, tmp, args.rounds, args.iters, log)
        report["models"][name] = {"note": note, "towers": towers}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_families.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "int8_families.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
