"""OpenVINO int8 vs fp32 on the default model (EfficientNet-Lite0 + all-MiniLM-L6-v2), same run.

Latency: batch 1, INFERENCE_NUM_THREADS=2, PERFORMANCE_HINT=LATENCY, warmup, then fp32 and int8
measured in alternating rounds (this machine is shared; alternating keeps both under the same
load) and the median of all rounds reported; text at 16 and 77 tokens (real captions, padded).
Parity: int8 vs the PyTorch reference on the bundled real parity set, with edgevl's own parity
code (min cosine, SQNR, zero-shot top-1 agreement), for the chosen method and the alternatives.

    python benchmarks/openvino_int8.py [--rounds 7] [--iters 20] [--no-alternatives]

Writes benchmarks/results/openvino_int8.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BAR_LATENCY, BAR_COSINE, BAR_TOP1 = 0.4, 0.99, 0.98

# Alternatives re-measured for the record: the same gate with full 8-bit weights, which only
# CPUs with VNNI or AMX compute exactly.
ALTERNATIVES = [("--cpu-isa vnni (8-bit weights)", {"cpu_isa": "vnni"})]


def _compile(core, model, hint: str | None):
    config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    return core.compile_model(model, "CPU", config)


def _latencies(compiled: dict, feeds: dict, rounds: int, iters: int) -> dict[str, float]:
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    for r in requests.values():
        for _ in range(5):
            r.infer(feeds)
    times: dict[str, list[float]] = {k: [] for k in compiled}
    for _ in range(rounds):
        for key, request in requests.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                request.infer(feeds)
                times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def _parity(data, component, compiled, tolerance) -> dict:
    from edgevl.paritydata import run_batched, verify_outputs

    out = run_batched(lambda f: np.array(compiled(f)[0], copy=True), data.feeds(component))
    result = verify_outputs(data, component, out, tolerance, f"{component}_embeds")
    return {
        "cosine_min": round(float(result.cosine_min), 5),
        "sqnr_db": round(float(result.sqnr_db), 2),
        "top1_agreement": round(float(result.top1_agreement), 4),
        "top1_agreement_strict": round(float(result.top1_agreement_strict), 4),
        "passed": bool(result.passed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-alternatives", action="store_true")
    args = parser.parse_args()

    import openvino as ov
    import torch

    torch.set_num_threads(2)
    from edgevl.exporters.base import ExportOptions
    from edgevl.exporters.openvino import OpenVinoExporter
    from edgevl.models.spec import LoadOptions
    from edgevl.paritydata import build_parity_data
    from edgevl.registry import MODELS
    from edgevl.tolerances import tolerance_for

    spec = MODELS.get("effnet-minilm")(None, LoadOptions())
    data = build_parity_data(spec)
    core = ov.Core()
    exporter = OpenVinoExporter()
    report: dict = {
        "model": spec.name,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 2,
                    "openvino": ov.__version__},
        "method": {"rounds": args.rounds, "iters_per_round": args.iters, "batch": 1,
                   "statistic": "median over all timed runs, fp32 and int8 alternating"},
        "towers": {},
    }
    # Reference margins: why zero-shot agreement is fragile on this model.
    ref_prompts = data.reference["text"][-data.n_prompts:]
    scores = np.sort(data.reference["image"] @ ref_prompts.T, axis=1)
    margins = scores[:, -1] - scores[:, -2]
    report["reference_top1_margins"] = {
        "min": float(margins.min()), "below_0.002": int((margins < 0.002).sum()), "n": int(len(margins))
    }
    with tempfile.TemporaryDirectory() as tmp:
        for component in ("image", "text"):
            arts = {p: exporter.export(spec, component, Path(tmp), ExportOptions(precision=p)) for p in ("fp32", "int8")}
            compiled = {
                p: _compile(core, str(a.path), a.runtime_options.get("INFERENCE_PRECISION_HINT"))
                for p, a in arts.items()
            }
            entry: dict = {
                "int8_method": arts["int8"].passes["quantization"],
                "bytes": {p: a.path.with_suffix(".bin").stat().st_size for p, a in arts.items()},
                "parity_int8": _parity(data, component, compiled["int8"], tolerance_for("openvino", "int8")),
                "latency_ms": {},
            }
            if component == "image":
                feeds = {"pixel_values": data.image_feeds["pixel_values"][:1]}
                shapes = {"batch1": feeds}
            else:
                # Real caption tokens, repeated to fill the length, so "seq" really is the work done
                # (the default model's tokenizer truncates to its 32-token context).
                caption = spec.tokenize(["a ginger tabby cat looking to the side"])
                n = int(caption["attention_mask"].sum())
                body = caption["input_ids"][0, 1 : n - 1]
                shapes = {}
                for seq in (16, 77):
                    ids = np.concatenate([caption["input_ids"][0, :1], np.resize(body, seq - 2), caption["input_ids"][0, n - 1 : n]])
                    shapes[f"seq{seq}"] = {"input_ids": ids[None].astype(np.int64), "attention_mask": np.ones((1, seq), np.int64)}
            for label, feeds in shapes.items():
                lat = _latencies(compiled, feeds, args.rounds, args.iters)
                entry["latency_ms"][label] = {
                    "fp32": round(lat["fp32"], 3), "int8": round(lat["int8"], 3),
                    "ratio": round(lat["int8"] / lat["fp32"], 3),
                }
            if not args.no_alternatives:
                alts = []
                for label, extra in ALTERNATIVES:
                    alt = exporter.export(spec, component, Path(tmp) / "alt", ExportOptions(precision="int8", **extra))
                    c = _compile(core, str(alt.path), "f32")
                    row = {"variant": label, "float_layers": alt.passes["quantization"]["float_layer_count"],
                           **_parity(data, component, c, tolerance_for("openvino", "int8"))}
                    first = next(iter(shapes.values()))
                    lat = _latencies({"fp32": compiled["fp32"], "alt": c}, first, max(2, args.rounds // 2), args.iters)
                    row["latency_ratio_" + next(iter(shapes))] = round(lat["alt"] / lat["fp32"], 3)
                    alts.append(row)
                entry["alternatives"] = alts
            report["towers"][component] = entry
            print(component, json.dumps(entry), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "openvino_int8.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "openvino_int8.md").write_text(_markdown(report))
    print((RESULTS / "openvino_int8.md").read_text())


def _markdown(r: dict) -> str:
    lines = [
        "# OpenVINO int8 vs fp32, default model (effnet-minilm)",
        "",
        f"OpenVINO {r['machine']['openvino']}, CPU, 2 threads, batch 1, LATENCY hint; "
        f"{r['method']['statistic']} ({r['method']['rounds']} rounds x {r['method']['iters_per_round']}). "
        "fp32 runs with INFERENCE_PRECISION_HINT=f32 (this CPU defaults to bf16), int8's float "
        "remainder too. Parity: int8 vs the PyTorch reference on the held-out parity split; "
        "top-1 agreement tie-aware (strict in brackets).",
        "",
        f"Bars: int8 latency <= {BAR_LATENCY} x fp32; min cosine >= {BAR_COSINE}; "
        f"top-1 agreement >= {BAR_TOP1}.",
        "",
        "| tower | input | fp32 ms | int8 ms | int8/fp32 | latency bar |",
        "|---|---|---|---|---|---|",
    ]
    for comp, e in r["towers"].items():
        for label, lat in e["latency_ms"].items():
            ok = "met" if lat["ratio"] <= BAR_LATENCY else "NOT met"
            lines.append(f"| {comp} | {label} | {lat['fp32']:.2f} | {lat['int8']:.2f} | {lat['ratio']:.2f} | {ok} |")
    lines += ["", "| tower | int8 variant | min cosine | SQNR dB | top-1 agreement | int8/fp32 (first input) |",
              "|---|---|---|---|---|---|"]
    for comp, e in r["towers"].items():
        p = e["parity_int8"]
        first = next(iter(e["latency_ms"].values()))["ratio"]
        lines.append(f"| {comp} | default (--cpu-isa any): {e['int8_method'].get('float_layer_count', 0)} layers float | "
                     f"{p['cosine_min']:.4f} | {p['sqnr_db']:.1f} | {p['top1_agreement']:.3f} ({p['top1_agreement_strict']:.3f}) | {first:.2f} |")
        for a in e.get("alternatives", []):
            ratio = next((v for k, v in a.items() if k.startswith("latency_ratio_")), None)
            lines.append(f"| {comp} | {a['variant']}: {a['float_layers']} layers float | {a['cosine_min']:.4f} | {a['sqnr_db']:.1f} | "
                         f"{a['top1_agreement']:.3f} ({a['top1_agreement_strict']:.3f}) | {'' if ratio is None else f'{ratio:.2f}'} |")
    m = r["reference_top1_margins"]
    lines += [
        "",
        f"Reference zero-shot margins (top-1 minus top-2 score, {m['n']} photo views x label prompts): "
        f"smallest {m['min']:.5f}, {m['below_0.002']} below 0.002. A top-1 agreement of 0.98 allows "
        f"one flip in {m['n']}, so near-ties this close decide it, whatever the int8 method.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
