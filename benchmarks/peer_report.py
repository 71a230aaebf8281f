"""The peers benchmark's report: machine facts and the markdown tables of `benchmarks/RESULTS.md`."""

from __future__ import annotations

import platform
from pathlib import Path

COLUMNS = {"image": ("ms_b1", "ms_b8"), "text": ("ms_L16", "ms_L77")}


def machine_info() -> dict:
    import nncf
    import onnxruntime
    import openvino
    import torch

    info = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    flags = set(info.split())
    return {"cpu": cpu, "threads": 2,
            "int8_isa": [f for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__,
            "torch": torch.__version__}


def best_int8(rows: dict, runtime: str, edgevl: bool) -> tuple[str, dict] | None:
    """The fastest int8 row (batch-1 image / 77-token text latency) on `runtime`, edgevl's or a peer's."""
    picks = [(k, r) for k, r in rows.items() if r["runtime"] == runtime and r["precision"] == "int8"
             and k.startswith("edgevl") == edgevl]
    key = "ms_b1" if "ms_b1" in next(iter(rows.values())) else "ms_L77"
    return min(picks, key=lambda kr: kr[1][key]) if picks else None


def verdicts(rows: dict, component: str) -> list[str]:
    """Per runtime: edgevl's fastest int8 row against the fastest peer int8 row (aim: <= 0.8x
    the latency with a higher min cosine)."""
    lines = []
    for runtime in ("onnxruntime", "openvino"):
        ours, peer = best_int8(rows, runtime, True), best_int8(rows, runtime, False)
        if not ours or not peer:
            continue
        ratios = ", ".join(f"{c} {ours[1][c] / peer[1][c]:.2f}x" for c in COLUMNS[component])
        lines.append(f"- {runtime}: {ours[0]} vs {peer[0]}: latency {ratios}; min cosine "
                     f"{ours[1]['cosine_min']:.5f} vs {peer[1]['cosine_min']:.5f}")
    return lines


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# edgevl beside its peers", "",
             f"One run of `benchmarks/peers.py`. Machine: {m['cpu']} ({', '.join(m['int8_isa']) or 'no int8 ISA'}), "
             f"{m['threads']} threads; onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, nncf {m['nncf']}, "
             f"torch {m['torch']}.", ""]
    for name, model in report["models"].items():
        lines += [f"## {name}", "", model["note"], ""]
        if model["edgevl_build_s"] is not None:
            lines.append(f"edgevl export (onnx + openvino, fp32 + int8, gates included): {model['edgevl_build_s']} s.")
        for peer, info in model["peers"].items():
            lines.append(f"{peer}: {info}")
        for why in model["left_out"]:
            lines.append(f"Left out: {why}")
        lines.append("")
        for component, t in model["towers"].items():
            cols = ["runtime", "precision", *COLUMNS[component], "size_mb", "cosine_min", "top1_agreement",
                    "top1_agreement_strict", "fused_attention"]
            lines += [f"### {component} tower ({t['parity_samples']} held-out parity rows)", "",
                      "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for k, r in t["rows"].items():
                cells = [f"{r[c]:.5f}" if c.startswith("cosine") and r.get(c) is not None else str(r.get(c, ""))
                         for c in cols]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines += ["", *verdicts(t["rows"], component), ""]
    lines += ["Latency in ms, best of interleaved rounds (the machine is shared; compare rows within one table). "
              "Cosine and agreement against the PyTorch reference on the held-out parity split; "
              "top1_agreement is tie-aware (a pick within its tie band at the int8 row's cosine floor agrees, edgevl.parity.tie_bands), strict beside it. "
              "Peers' towers are cut out of their two-tower graphs. OpenVINO peers run with OpenVINO's defaults, "
              "edgevl's OpenVINO artifacts with their manifest's runtime options. ORT `quantize_dynamic` is given "
              "MatMul/Gemm only (its dynamic ConvInteger path is not what users ship), so on a convolutional tower "
              "it is close to fp32; an edgevl int8 row whose min cosine is 1.00000 is one the accuracy gate kept "
              "entirely float (its manifest says why)."]
    return "\n".join(lines) + "\n"
