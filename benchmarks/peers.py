"""edgevl's artifacts beside what a user would otherwise pick, on the same model and machine, in
one run: PyTorch eager; Hugging Face optimum's ONNX export with its ORT optimizer and
`ORTQuantizer` dynamic int8; optimum-intel's OpenVINO export (fp32, int8 weight compression, NNCF
int8 through `OVQuantizer`); ORT `quantize_dynamic` (per-channel) and OpenVINO `convert_model` +
NNCF's default int8 on edgevl's fp32 graph.

Per tower and row: latency (image at batch 1 and 8, text at batch 1 with 16 and 77 tokens; all
rows of a tower timed in interleaved rounds, best round kept, 2 threads), the ratio of edgevl's
best int8 artifact on the same runtime to the row, size, min cosine and zero-shot agreement
(tie-aware and strict) against the PyTorch reference on the held-out parity split, and the fused
attention ops in the row's graph.

The optimum peers pin transformers versions edgevl cannot share, so they export in their own
virtual environments (`benchmarks/peers_setup.sh` creates them under benchmarks/.peers); every
artifact is then loaded and measured here, on the same runtimes. Rows whose venv is missing are
left out and the report says so.

    python benchmarks/peers.py [--models vitb32,default] [--rounds 5] [--iters 3]
                               [--edgevl-export vitb32=DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevl.tolerances import tolerance_for as _tolerance_for  # noqa: E402

# The parity row whose cosine floor decides which zero-shot picks are ties (parity.tie_bands).
INT8_FLOOR = _tolerance_for("onnx", "int8").cosine_min

from int8_families import RESULTS, best_seconds, vitb32_checkpoint
from peer_report import markdown, machine_info
from peer_towers import Tower, extract_onnx_tower, hf_clip_eager, ort_tower, ov_sub_model, ov_tower, torch_tower

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def run_edgevl_export(source: str | None, out: Path) -> float:
    """`edgevl export` to ONNX and OpenVINO at fp32 and int8 (defaults otherwise); seconds."""
    cmd = [sys.executable, "-m", "edgevl", "export", *([source] if source else []), "--target", "onnx,openvino",
           "--precision", "fp32,int8", "--out", str(out), "--force"]
    log("edgevl: " + " ".join(cmd[3:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def edgevl_towers(export: Path, component: str, tmp: Path) -> list[Tower]:
    import openvino as ov

    manifest = json.loads((export / "manifest.json").read_text())
    towers = []
    for a in manifest["artifacts"]:
        if a["component"] != component or a["precision"] not in ("fp32", "int8"):
            continue
        name = f"edgevl {a['target']} {a['precision']}"
        path = export / a["path"]
        if a["target"] == "onnx":
            towers.append(ort_tower(name, path, a["precision"]))
        elif a["target"] == "openvino":
            towers.append(ov_tower(name, ov.Core().read_model(str(path)), a["precision"],
                                   a.get("runtime_options") or {}, tmp))
    return towers


def plain_runtime_towers(fp32_onnx: Path, component: str, feeds: list[dict], tmp: Path) -> list[Tower]:
    """ORT `quantize_dynamic` per-channel and OpenVINO `convert_model` + NNCF default int8, both
    on edgevl's fp32 graph (what a user does after a plain `torch.onnx.export`)."""
    import nncf
    import onnx
    import openvino as ov
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgevl.compress.qdq import strip_value_info

    clean = tmp / f"{component}.clean.onnx"
    onnx.save(strip_value_info(onnx.load(str(fp32_onnx))), str(clean))  # ORT's quantizer re-infers shapes
    dyn = tmp / f"{component}.qdyn.onnx"
    quantize_dynamic(str(clean), str(dyn), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     weight_type=QuantType.QInt8)
    ov_fp32 = ov.convert_model(str(fp32_onnx))
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(feeds))
    return [ort_tower("ORT quantize_dynamic per-channel", dyn, "int8"),
            ov_tower("OpenVINO convert_model + NNCF int8", ov_int8, "int8", {}, tmp)]


def optimum_towers(folder: Path, component: str, tmp: Path) -> list[Tower]:
    towers = []
    for sub, file, label, precision in (("fp32", "model.onnx", "optimum ONNX fp32", "fp32"),
                                        ("optimized", "model_optimized.onnx", "optimum ORTOptimizer O2 fp32", "fp32"),
                                        ("int8-pt", "model_quantized.onnx", "optimum ORTQuantizer int8 per-tensor", "int8"),
                                        ("int8-pc", "model_quantized.onnx", "optimum ORTQuantizer int8 per-channel", "int8")):
        path = extract_onnx_tower(folder / sub / file, component, tmp / f"optimum-{sub}-{component}.onnx")
        towers.append(ort_tower(label, path, precision))
    return towers


def optimum_intel_towers(folder: Path, component: str, tmp: Path) -> list[Tower]:
    import openvino as ov

    towers = []
    for sub, label, precision in (("fp32", "optimum-intel fp32", "fp32"),
                                  ("int8w", "optimum-intel int8 weights", "int8w"),
                                  ("int8", "optimum-intel OVQuantizer int8", "int8")):
        model = ov.Core().read_model(str(folder / sub / "openvino_model.xml"))
        towers.append(ov_tower(label, ov_sub_model(model, component), precision, {}, tmp))
    return towers


def run_peer(venv: Path, script: str, args: list[str]) -> dict:
    python = venv / "bin" / "python"
    log(f"peer: {script} ({python})")
    subprocess.run([str(python), str(HERE / script), *args], check=True)
    return json.loads((Path(args[1]) / "peer.json").read_text())


def timing_feeds(judge_feeds: dict, component: str) -> dict[str, dict]:
    if component == "image":
        return {f"b{b}": {k: v[:b] for k, v in judge_feeds.items()} for b in (1, 8)}
    return {f"L{n}": {k: np.ascontiguousarray(v[:1, :n]) for k, v in judge_feeds.items()} for n in (16, 77)}


def measure_model(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    from edgevl.calibration.datasets import bundled
    from edgevl.compress.gate import gate_data, measure
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    source = str(vitb32_checkpoint(args.vitb32 or tmp / "clip-vit-b32-random")) if name == "vitb32" else None
    spec = resolve_model(source, LoadOptions())
    reused = dict(kv.split("=", 1) for kv in args.edgevl_export)
    export = Path(reused[name]) if name in reused else tmp / f"edgevl-{name}"
    build_s = None if name in reused else round(run_edgevl_export(source, export), 1)

    peers, missing = {}, []
    if name == "vitb32":
        for venv, script, extra in (("optimum", "peer_optimum.py", []),
                                    ("optimum-intel", "peer_optimum_intel.py", [str(tmp / "calib.npz")])):
            if not (args.peers / venv / "bin" / "python").is_file():
                missing.append(f"{venv}: no venv at {args.peers / venv} (run benchmarks/peers_setup.sh)")
                continue
            if extra:  # each tower's calibration feeds, preprocessed / tokenized once
                feeds = {c: bundled().feeds(spec, c) for c in ("image", "text")}
                np.savez(extra[0], **{k: np.concatenate([f[k] for f in feeds[c]])
                                      for c in feeds for k in spec.tower(c).input_names})
            peers[venv] = run_peer(args.peers / venv, script, [source, str(tmp / venv), *extra])
    else:
        missing.append("optimum / optimum-intel: they export Hugging Face transformers checkpoints; the default "
                       "model's image tower (EfficientNet-Lite0) is not one, and its text tower carries edgevl's "
                       "projection")

    towers_out = {}
    for component in ("image", "text"):
        log(f"{name} {component}: loading rows")
        tower = spec.tower(component)
        judge = gate_data(spec, component, tower.forward_numpy, INT8_FLOOR, split="parity")
        fp32_onnx = tmp / f"{name}-{component}.fp32.onnx"
        export_tower_onnx(tower, fp32_onnx)
        calib = bundled().feeds(spec, component, limit=64)
        eager = hf_clip_eager(source, component) if name == "vitb32" else (lambda t, m=tower.module: m(**t))
        rows = [torch_tower("PyTorch eager", eager), *edgevl_towers(export, component, tmp),
                *plain_runtime_towers(fp32_onnx, component, calib, tmp)]
        if "optimum" in peers:
            rows += optimum_towers(tmp / "optimum", component, tmp)
        if "optimum-intel" in peers:
            rows += optimum_intel_towers(tmp / "optimum-intel", component, tmp)
        results = {r.name: {"runtime": r.runtime, "precision": r.precision, "size_mb": r.size_mb,
                            "fused_attention": r.fused_attention, **measure(judge, r.run)} for r in rows}
        for key, feed in timing_feeds(judge.feeds, component).items():
            log(f"{name} {component}: timing {key} ({len(rows)} rows, interleaved)")
            best = best_seconds({r.name: r.run for r in rows}, feed, args.rounds, args.iters)
            for r in rows:
                results[r.name][f"ms_{key}"] = round(best[r.name] * 1e3, 2)
        towers_out[component] = {"parity_samples": judge.n_samples, "rows": results}
    note = ("Hugging Face `CLIPModel(CLIPConfig())`: ViT-B/32 image tower, 12-block causal text tower, **random tower "
            "weights**, projections trained on the bundled photos (see int8_families.py)." if name == "vitb32"
            else "The embedded default model (EfficientNet-Lite0 image tower, all-MiniLM-L6-v2 text tower).")
    return {"note": note, "edgevl_build_s": build_s, "peers": peers, "left_out": missing, "towers": towers_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vitb32,default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--peers", type=Path, default=HERE / ".peers", help="folder of the peers' venvs")
    ap.add_argument("--edgevl-export", action="append", default=[], metavar="MODEL=DIR",
                    help="reuse an `edgevl export --target onnx,openvino --precision fp32,int8` folder")
    ap.add_argument("--vitb32", type=Path, help="the ViT-B/32 checkpoint folder (made there once if missing)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgevl-peers-"))
    report = {"machine": machine_info(), "models": {}}
    for name in args.models.split(","):
        report["models"][name] = measure_model(name, args, tmp)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (HERE / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
