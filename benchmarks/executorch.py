"""ExecuTorch fp32 vs int8 `.pte` programs (XNNPACK delegate) on this CPU, same run.

For the default model (EfficientNet-Lite0 + all-MiniLM-L6-v2) and, unless --no-tiny, the small
trained CLIP checkpoint of `edgevl.models.tiny`: each tower is exported with the real CLI
(`edgevl export --target executorch`, fp32 and int8 as separate runs), and both programs are
timed through ExecuTorch's Python runtime bindings (`executorch.runtime`), batch 1, after a
warmup, fp32 and int8 in alternating rounds (the machine is shared; alternating keeps both under
the same load). Reported: the median of all timed runs (and the best round's median beside it).
Text at 16 tokens and at the context length (a real caption's tokens repeated to fill it).

Parity and the int8 share come from the export manifests. When the accuracy gate refuses a
tower's int8 (exit 3, nothing written), the whole-tower int8 candidate the gate judged is built
with the exporter's own functions (`quantize_pt2e`, `lower`) and timed, and its parity measured
with edgevl's parity code on the same held-out split, marked as refused.

Which ops take int8 data: the PT2E-converted graph, each op counted as int8 in / out when its
inputs come from dequantize nodes and its output goes into a quantize node (dq -> op -> q, the
pattern the XNNPACK delegate can run on int8 data; whether it computes such an op in int8 is the
delegate's choice), else float; plus the ops the lowering left on portable kernels (outside the
delegate).

    python benchmarks/executorch.py [--rounds 7] [--iters 20] [--no-tiny] [--markdown-only] [--work DIR]

With --work DIR the exports are kept in DIR/<model>/<tower>/<precision> and an export whose
manifest.json is already there is read instead of run again (e.g. a long int8 search run before
with the same CLI line, `--out DIR/effnet-minilm/image/int8`).

Writes benchmarks/results/executorch.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

# Run as a script, this file's folder is sys.path[0] and this file would shadow the executorch
# package it benchmarks.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu() -> dict:
    """lscpu's model name and the int8 dot-product flags this CPU has."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {
        "model_name": fields.get("Model name", "").strip(),
        "cores": int(fields.get("CPU(s)", "0").strip() or 0),
        "int8_flags": {f: f in flags for f in ("avx2", "avx_vnni", "avx512_vnni", "amx_int8", "amx_tile")},
    }


def _export(model: Optional[str], component: str, precision: str, out: Path) -> tuple[int, Optional[dict], list[str]]:
    """The CLI export of one tower at one precision: (exit code, manifest artifact or None, the
    progress lines about the accuracy gate and the error line, if any). An export already in
    `out` (its manifest.json there) is read, not run again."""
    from edgevl.cli import main

    if (out / "manifest.json").exists():
        (art,) = json.loads((out / "manifest.json").read_text())["artifacts"]
        art["file"] = str(out / art["path"])
        return 0, art, ["read from an earlier export in " + str(out)]

    argv = ["export", *([model] if model else []), "--target", "executorch", "--precision", precision,
            "--components", component, "--out", str(out), "--force"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    lines = [ln.strip() for ln in err.getvalue().splitlines() if "accuracy gate" in ln or ln.startswith("edgevl: error")]
    if code != 0:
        return code, None, lines
    (art,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    art["file"] = str(out / art["path"])
    return code, art, lines


def _int8_ops(spec: Any, component: str) -> dict:
    """The PT2E-converted tower (the exporter's quantizer and calibration): per op, how many take
    int8 data in and out (every non-constant input from a dequantize node, the output into a
    quantize node, directly or through a clamp XNNPACK fuses into it) and how many run float."""
    from edgevl.compress.plan import resolve_calibration
    from edgevl.exporters.executorch import CALIBRATION_SAMPLES
    from edgevl.exporters.executorch_lower import example_and_shapes, quantize_pt2e

    tower = spec.tower(component)
    examples, dynamic, _ = example_and_shapes(tower, spec.preprocess.context_length, None)
    feeds = resolve_calibration(None, None).feeds(spec, component, limit=CALIBRATION_SAMPLES)
    converted, _ = quantize_pt2e(tower.module.eval(), examples, dynamic, feeds)

    def target(node: Any) -> str:
        return str(getattr(node, "target", ""))

    def is_q(node: Any) -> bool:
        return "quantize_per" in target(node) and "dequantize" not in target(node)

    def is_clamp(node: Any) -> bool:
        return any(c in target(node) for c in ("hardtanh", "relu"))

    def quantized_out(node: Any) -> bool:
        users = list(node.users)
        return bool(users) and all(is_q(u) or (is_clamp(u) and all(is_q(v) for v in u.users)) for u in users)

    int8: Counter = Counter()
    flt: Counter = Counter()
    int8_nodes = set()
    for node in converted.graph.nodes:
        if node.op != "call_function" or "quantize_per" in target(node):
            continue
        name = getattr(node.target, "__name__", target(node)).split(".")[0]
        if name in ("getitem", "sym_size", "_assert_tensor_metadata"):
            continue
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if is_clamp(node) and inputs and inputs[0] in int8_nodes:
            int8_nodes.add(node)  # fused into the int8 op before it
        elif inputs and all("dequantize" in target(a) for a in inputs) and quantized_out(node):
            int8_nodes.add(node)
        (int8 if node in int8_nodes else flt)[name] += 1
    return {"int8": dict(sorted(int8.items())), "float": dict(sorted(flt.items()))}


def _candidate(spec: Any, component: str, out: Path) -> dict:
    """The whole-tower int8 candidate the gate judges, built with the exporter's functions, and
    its parity on the held-out split (edgevl's parity code, the ("executorch", "int8") row)."""
    from edgevl.compress.plan import resolve_calibration
    from edgevl.exporters.executorch import CALIBRATION_SAMPLES
    from edgevl.exporters.executorch_lower import example_and_shapes, lower, quantize_pt2e, weighted_op_count
    from edgevl.paritydata import build_parity_data, run_batched, verify_outputs
    from edgevl.runtimes.executorch import load_program
    from edgevl.tolerances import tolerance_for

    tower = spec.tower(component)
    module = tower.module.eval()
    examples, dynamic, _ = example_and_shapes(tower, spec.preprocess.context_length, None)
    feeds = resolve_calibration(None, None).feeds(spec, component, limit=CALIBRATION_SAMPLES)
    converted, quantized = quantize_pt2e(module, examples, dynamic, feeds)
    program, lowering = lower(converted, examples, dynamic)
    path = out / f"{component}_encoder.int8.candidate.pte"
    path.write_bytes(program.buffer)
    names = {"input_names": list(tower.input_names), "output_names": [tower.output.name]}
    loaded = load_program(path, names)
    data = build_parity_data(spec)
    outputs = run_batched(lambda f: loaded.run(f)[tower.output.name], data.feeds(component))
    result = verify_outputs(data, component, outputs, tolerance_for("executorch", "int8"), tower.output.name)
    return {
        "file": str(path), "refused_by_gate": True,
        "parity": {"cosine_min": float(result.cosine_min), "sqnr_db": float(result.sqnr_db),
                   "top1_agreement": float(result.top1_agreement),
                   "top1_agreement_strict": float(result.top1_agreement_strict), "passed": bool(result.passed)},
        "quantized_ops": quantized, "weighted_ops": weighted_op_count(module, examples),
        "lowering": {k: v for k, v in lowering.items() if k != "attention"},
    }


def _inputs(spec: Any, component: str) -> dict[str, list]:
    """Batch-1 inputs: the first parity photo; a real caption's tokens filled to 16 tokens and to
    the context length."""
    import torch

    from edgevl.paritydata import build_parity_data

    if component == "image":
        data = build_parity_data(spec)
        return {"batch1": [torch.from_numpy(np.ascontiguousarray(data.image_feeds["pixel_values"][:1]))]}
    tok = spec.tokenize(["a ginger tabby cat looking to the side"])
    ids, mask = tok["input_ids"][0], tok["attention_mask"][0]
    n = int(mask.sum())
    shapes = {}
    for seq in sorted({16, spec.preprocess.context_length}):
        body = np.resize(ids[1 : n - 1], seq - 2)
        row = np.concatenate([ids[:1], body, ids[n - 1 : n]]).astype(np.int64)[None]
        feeds = {"input_ids": row, "attention_mask": np.ones_like(row)}
        names = spec.tower("text").input_names
        shapes[f"seq{seq}"] = [torch.from_numpy(feeds[name]) for name in names]
    return shapes


def _time(files: dict[str, str], args: list, rounds: int, iters: int) -> dict:
    """fp32 and int8 alternating per round (order swapped every round), batch 1."""
    from executorch.runtime import Runtime

    rt = Runtime.get()
    methods = {k: rt.load_program(f).load_method("forward") for k, f in files.items()}
    for m in methods.values():
        for _ in range(5):
            m.execute(args)
    times: dict[str, list[list[float]]] = {k: [] for k in methods}
    order = list(methods)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            run = []
            for _ in range(iters):
                t0 = time.perf_counter()
                methods[key].execute(args)
                run.append(time.perf_counter() - t0)
            times[key].append(run)
    out: dict = {"load_average_1min": round(os.getloadavg()[0], 2)}
    for key, runs in times.items():
        flat = [t for run in runs for t in run]
        out[key] = {"median_ms": float(np.median(flat) * 1e3),
                    "best_round_median_ms": float(min(np.median(run) for run in runs) * 1e3)}
    return out


def _model(label: str, model: Optional[str], spec: Any, work: Path, rounds: int, iters: int) -> dict:
    entry: dict = {"model": label, "towers": {}}
    for component in ("image", "text"):
        tower: dict = {}
        code, fp32, _ = _export(model, component, "fp32", work / label / component / "fp32")
        if fp32 is None:
            raise SystemExit(f"{label} {component} fp32 export failed (exit {code})")
        code, int8, gate_lines = _export(model, component, "int8", work / label / component / "int8")
        tower["fp32"] = {"bytes": Path(fp32["file"]).stat().st_size, "parity": fp32["parity"],
                         "lowering": {k: v for k, v in fp32["passes"]["lowering"].items() if k != "attention"},
                         "attention_fused": fp32["fused_attention"], "attention_blocks": fp32["passes"]["attention_blocks"]}
        if int8 is not None:
            q = int8["passes"]["quantization"]
            tower["int8"] = {"bytes": Path(int8["file"]).stat().st_size, "parity": int8["parity"], "refused_by_gate": False,
                             "quantized_ops": q["quantized_ops"], "weighted_ops": q["weighted_ops"],
                             "gate": {k: q["gate"].get(k) for k in ("passed", "cosine_min", "tried")},
                             "lowering": {k: v for k, v in int8["passes"]["lowering"].items() if k != "attention"},
                             "attention_fused": int8["fused_attention"]}
            int8_file = int8["file"]
        else:
            cand = _candidate(spec, component, work / label / component)
            cand["bytes"] = Path(cand["file"]).stat().st_size
            cand["export_exit_code"] = code
            cand["gate_lines"] = gate_lines
            tower["int8"] = cand
            int8_file = cand["file"]
        tower["int8"]["ops"] = _int8_ops(spec, component)
        tower["latency_ms"] = {}
        for shape, args in _inputs(spec, component).items():
            lat = _time({"fp32": fp32["file"], "int8": int8_file}, args, rounds, iters)
            load = lat.pop("load_average_1min")
            tower["latency_ms"][shape] = {
                **{f"{p}_{k}": round(v, 3) for p, d in lat.items() for k, v in d.items()},
                "load_average_1min_after": load,
                "ratio_median": round(lat["int8"]["median_ms"] / lat["fp32"]["median_ms"], 3),
                "ratio_best_round": round(lat["int8"]["best_round_median_ms"] / lat["fp32"]["best_round_median_ms"], 3),
            }
        for p in ("fp32", "int8"):
            tower[p].pop("file", None)
        entry["towers"][component] = tower
        print(label, component, json.dumps(tower["latency_ms"]), flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-tiny", action="store_true")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the exports here and reuse those already there (default: a temporary folder)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite executorch.md from executorch.json (no export, no timing)")
    args = parser.parse_args()
    if args.markdown_only:
        (RESULTS / "executorch.md").write_text(_markdown(json.loads((RESULTS / "executorch.json").read_text())))
        return

    import executorch.extension.pybindings.portable_lib as et_lib
    import torch
    from importlib.metadata import version

    from edgevl.models.resolve import resolve_model
    from edgevl.models.spec import LoadOptions

    torch.set_num_threads(2)
    report: dict = {
        "machine": {**_cpu(), "executorch": version("executorch"), "torch": torch.__version__,
                    "xnnpack_threads": int(et_lib._threadpool_get_thread_count())},
        "method": {"rounds": args.rounds, "iters_per_round": args.iters, "batch": 1, "warmup": 5,
                   "statistic": "median of all timed runs (best round's median beside it); fp32 and int8 "
                                "alternating, order swapped every round"},
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        report["models"].append(_model("effnet-minilm", None, resolve_model(None, LoadOptions()), work,
                                       args.rounds, args.iters))
        if not args.no_tiny:
            from edgevl.models.tiny import tiny_checkpoint

            folder = tiny_checkpoint("clip", work / "tiny-clip")
            report["models"].append(_model("tiny-clip", str(folder), resolve_model(str(folder), LoadOptions()), work,
                                           args.rounds, args.iters))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executorch.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "executorch.md").write_text(_markdown(report))
    print((RESULTS / "executorch.md").read_text())


def _ops(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items()) or "none"


def _markdown(r: dict) -> str:
    m = r["machine"]
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in m["int8_flags"].items())
    lines = [
        "# ExecuTorch fp32 vs int8 (XNNPACK delegate)",
        "",
        f"CPU: {m['model_name']} ({m['cores']} cores; {flags}). ExecuTorch {m['executorch']} Python runtime "
        f"bindings, XNNPACK threadpool {m['xnnpack_threads']} threads, torch {m['torch']}. Batch 1, "
        f"{r['method']['statistic']} ({r['method']['rounds']} rounds x {r['method']['iters_per_round']}, "
        f"{r['method']['warmup']} warmup runs each). Programs exported with dynamic batch and sequence "
        "(the default). Parity: against the PyTorch reference on the held-out parity split, from the "
        "export manifest; top-1 agreement tie-aware (strict in brackets).",
        "",
        "| model | tower | input | fp32 ms | int8 ms | int8/fp32 (median) | int8/fp32 (best round) | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in r["models"]:
        for comp, t in e["towers"].items():
            for shape, lat in t["latency_ms"].items():
                lines.append(f"| {e['model']} | {comp} | {shape} | {lat['fp32_median_ms']:.2f} | {lat['int8_median_ms']:.2f} | "
                             f"{lat['ratio_median']:.2f} | {lat['ratio_best_round']:.2f} | {lat.get('load_average_1min_after', '')} |")
    lines += ["", "| model | tower | precision | .pte MB | int8 ops | min cosine | SQNR dB | top-1 agreement | parity | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["models"]:
        for comp, t in e["towers"].items():
            for p in ("fp32", "int8"):
                a = t[p]
                par = a["parity"]
                share = f"{a['quantized_ops']}/{a['weighted_ops']}" if p == "int8" else ""
                note = ""
                if p == "int8" and a.get("refused_by_gate"):
                    note = "refused by the accuracy gate (exit 3): the whole-tower candidate, built and measured here"
                lines.append(f"| {e['model']} | {comp} | {p} | {a['bytes'] / 1e6:.2f} | {share} | {par['cosine_min']:.6f} | "
                             f"{par['sqnr_db']:.1f} | {par['top1_agreement']:.3f} ({par['top1_agreement_strict']:.3f}) | "
                             f"{'passed' if par['passed'] else 'FAILED'} | {note} |")
    lines += ["", "## Which ops take int8 data", "",
              "int8 in / out: dq -> op -> q in the PT2E graph (an int8 op or int8 data movement); float: the "
              "rest. Lowered: nodes inside XNNPACK calls, and nodes left on portable kernels.", ""]
    for e in r["models"]:
        for comp, t in e["towers"].items():
            a = t["int8"]
            low = a["lowering"]
            lines.append(f"- {e['model']} {comp}: int8 in / out: {_ops(a['ops']['int8'])}; float: {_ops(a['ops']['float'])}. "
                         f"Lowered: {low['delegated_nodes']} nodes in {low['delegate_calls']} XNNPACK calls, "
                         f"{low['portable_nodes']} portable ({_ops(low['portable_ops'])}); fp32 program: "
                         f"{t['fp32']['lowering']['delegated_nodes']} in {t['fp32']['lowering']['delegate_calls']} calls, "
                         f"{t['fp32']['lowering']['portable_nodes']} portable ({_ops(t['fp32']['lowering']['portable_ops'])}).")
            for line in a.get("gate_lines", []):
                lines.append(f"  - export: `{line}`")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
