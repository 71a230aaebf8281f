"""The ONNX flavours' int8 text graphs on the default model: "standard" (ai.onnx ops only:
DynamicQuantizeLinear + MatMulInteger, standard Attention) against "ort" (the same plus ONNX
Runtime's com.microsoft fusions: Q/K/V packed into QAttention, EmbedLayerNormalization), every
linear layer int8 (no gate, so both graphs quantize the same layers), and int4w in both forms
(blocked DequantizeLinear + MatMul against MatMulNBits). Latency: ORT CPU, 2 threads, batch 1,
16 and 77 tokens, best of interleaved rounds, in one run.

    python benchmarks/onnx_flavors.py [--rounds 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevl.tolerances import tolerance_for as _tolerance_for  # noqa: E402

# The parity row whose cosine floor decides which zero-shot picks are ties (parity.tie_bands).
INT8_FLOOR = _tolerance_for("onnx", "int8").cosine_min

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort

    from edgevl.calibration.datasets import bundled
    from edgevl.compress import quantize as Q
    from edgevl.compress.gate import gate_data, measure, ort_run
    from edgevl.compress.ort_graph import foreign_ops, session
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    spec = resolve_model(None, LoadOptions())
    tmp = Path(tempfile.mkdtemp(prefix="edgevl-flavors-"))
    export_tower_onnx(spec.text, tmp / "text.onnx")
    fp32 = onnx.load(str(tmp / "text.onnx"))
    feeds = bundled().feeds(spec, "text", limit=64)
    judge = gate_data(spec, "text", ort_run(fp32), INT8_FLOOR, split="parity")
    variants: dict[str, object] = {"fp32": fp32}
    build_s = {}
    for precision, label in (("int8", "int8, every layer"), ("int4w", "int4w, every MatMul and table")):
        for flavor in ("standard", "ort"):
            t0 = time.perf_counter()
            model, _, _ = Q.quantize_model(fp32, Q.PRECISION_CONFIGS[precision](), feeds, "text", None, 0.0, flavor=flavor)
            name = f"{label}, {flavor} ({', '.join(foreign_ops(model)) or 'ai.onnx only'})"
            build_s[name] = round(time.perf_counter() - t0, 1)
            variants[name] = model
    sessions = {k: session(m) for k, m in variants.items()}
    results = {k: {"size_mb": round(len(m.SerializeToString()) / 1e6, 2), "build_s": build_s.get(k)} for k, m in variants.items()}
    for k, m in variants.items():
        results[k].update(measure(judge, m))
    text = "a portrait of an astronaut in a space suit with a flag " * 10
    for length in (16, 77):
        feed = {k: v[:, :length] for k, v in spec.tokenize([text]).items()}
        best = _best_latencies(sessions, feed, args.rounds, args.runs)
        for k in sessions:
            results[k][f"ms_{length}"] = round(best[k] * 1e3, 3)
            results[k][f"ratio_{length}"] = round(best[k] / best["fp32"], 3)
    names = list(variants)
    pairs = {"int8 standard / ort": (names[1], names[2]), "int4w standard / ort": (names[3], names[4])}
    ratios = {p: {f"ms_{n}": round(results[a][f"ms_{n}"] / results[b][f"ms_{n}"], 3) for n in (16, 77)}
              for p, (a, b) in pairs.items()}
    report = {"model": spec.name, "tower": "text", "threads": 2, "batch": 1,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__},
              "standard_over_ort": ratios, "variants": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_flavors.json").write_text(json.dumps(report, indent=1) + "\n")
    cols = ["ms_16", "ratio_16", "ms_77", "ratio_77", "cosine_min", "cosine_mean", "top1_agreement", "size_mb"]
    lines = [f"# ONNX flavours, {spec.name} text tower (ONNX Runtime {ort.__version__}, 2 threads, batch 1)", "",
             "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(str(r.get(c)) for c in cols) + " |" for k, r in results.items()]
    lines += ["", "Latency of the standard form over the ort form, same run: "
              + "; ".join(f"{p}: {r['ms_16']} at 16 tokens, {r['ms_77']} at 77" for p, r in ratios.items()), "",
              "ratio = latency / fp32 (best of interleaved rounds on a shared machine); cosine and agreement "
              "on the held-out parity texts against the fp32 graph. No gate: every layer quantized in both flavours."]
    (args.out / "onnx_flavors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _best_latencies(sessions: dict, feed: dict, rounds: int, runs: int) -> dict[str, float]:
    """Seconds per run of each session: 3 warm-up runs, then `rounds` interleaved rounds of
    `runs` timed runs, keeping the best."""
    best = {k: np.inf for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                best[k] = min(best[k], time.perf_counter() - t)
    return best


if __name__ == "__main__":
    main()
