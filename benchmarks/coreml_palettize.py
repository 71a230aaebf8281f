"""Core ML palettize4 on the default model's text tower (MiniLM), measured in one run: the fp16
package and palettize4 packages without fine-tuning and with each given number of tuning steps,
each exported by `edgevl export` and judged by the reference interpreter on the held-out parity
split. Records package sizes (and their ratio to fp16), parity, the gate's choice and the tuning
report.

    .venv/bin/python -P benchmarks/coreml_palettize.py [--steps 0,400] [--component text]

(-P: benchmarks/executorch.py would shadow the executorch package that coremltools imports.)

Writes benchmarks/results/coreml_palettize4.json and coreml_palettize4.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def export(component: str, precision: str, steps: int, out: Path) -> dict:
    """One `edgevl export` run; the artifact's manifest entry plus the wall time."""
    from edgevl.cli import main

    started = time.perf_counter()
    code = main(["export", "--target", "coreml", "--precision", precision, "--components", component,
                 "--palette-tune-steps", str(steps), "--out", str(out), "--keep-failed", "-q"])
    seconds = time.perf_counter() - started
    if code not in (0, 3):
        raise SystemExit(f"edgevl export {precision} (tuning steps {steps}) exited {code}")
    (artifact,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    return {"precision": precision, "tune_steps": steps, "seconds": round(seconds, 1), "exit_code": code,
            "bytes": artifact["bytes"], "parity": artifact["parity"],
            "compression": artifact.get("passes", {}).get("compression")}


def markdown(rows: list[dict], component: str, meta: dict) -> str:
    fp16 = next(r for r in rows if r["precision"] == "fp16")
    lines = [
        f"# Core ML palettize4, default model, {component} tower",
        "",
        f"One run of `benchmarks/coreml_palettize.py` on {meta['cpu']} ({meta['cores']} cores), "
        f"{meta['date']}. Parity: the reference interpreter on the held-out parity split; the "
        "palettize4 row asks min cosine >= {cos}, tie-aware agreement >= {agree}.".format(**meta["row"]),
        "",
        "| package | tuning steps | tuned: 6-bit tables | tuned, all palettized: gate min cos | size (MB) | "
        "x fp16 | layers palettized | kept float | gate min cos | parity min cos | agreement (strict) | parity | export (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, p = r["compression"] or {}, r["parity"]
        tuned = c.get("tuning") or {}
        steps = str(r["tune_steps"]) if c else "-"
        if tuned and not tuned.get("used"):
            steps += " (not used)"
        tuned_cos = tuned.get("gate_cosine_min_all_palettized")
        cells = [
            r["precision"], steps, str(len(tuned["wide_tables"])) if "wide_tables" in tuned else "-",
            "-" if tuned_cos is None else f"{tuned_cos:.4f}",
            f"{r['bytes'] / 1e6:.1f}", f"{r['bytes'] / fp16['bytes']:.2f}",
            str(c.get("compressed_layers", "-")), str(len(c["kept_float"])) if c else "-",
            f"{c['gate_cosine_min']:.4f}" if c else "-", f"{p['cosine_min']:.4f}",
            f"{p['top1_agreement']:.3f} ({p.get('top1_agreement_strict', float('nan')):.3f})",
            "pass" if p["passed"] else "FAIL", f"{r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0,400", help="comma-separated tuning steps to try")
    parser.add_argument("--component", default="text", choices=("text", "image"))
    args = parser.parse_args()
    from edgevl.profile.machine import cpu_info
    from edgevl.tolerances import tolerance_for

    row = tolerance_for("coreml", "palettize4")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("fp16", 0)] + [("palettize4", int(s)) for s in args.steps.split(",")]
        for i, (precision, steps) in enumerate(runs):
            log(f"exporting {args.component} {precision} (tuning steps {steps})")
            rows.append(export(args.component, precision, steps, Path(tmp) / str(i)))
            log(json.dumps({k: rows[-1][k] for k in ("bytes", "seconds")} | {"parity": rows[-1]["parity"]}))
    cpu = cpu_info()
    meta = {"cpu": cpu.model, "cores": cpu.usable_cores,
            "date": time.strftime("%Y-%m-%d"), "row": {"cos": row.cosine_min, "agree": row.top1_agreement}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coreml_palettize4.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "coreml_palettize4.md").write_text(markdown(rows, args.component, meta))
    print(markdown(rows, args.component, meta))


if __name__ == "__main__":
    main()
