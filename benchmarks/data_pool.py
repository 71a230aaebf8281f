"""What the Tux Paint stamps cost and change: the default model's ONNX int8 export
(`edgevl export --target onnx --precision int8`) with the package photos alone (the stamps folder
pointed at an empty one, `EDGEVL_TUXPAINT_STAMPS`) and with the stamps, in one run, alternating,
`--rounds` each. Records wall time per export (median), each tower's int8 layer count, the gate's
tries, the split sizes and the parity figures from the manifests. Writes
benchmarks/results/data_pool.{json,md}."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _export(out: Path, stamps_root: str | None) -> tuple[float, dict]:
    env = dict(os.environ)
    if stamps_root is not None:
        env["EDGEVL_TUXPAINT_STAMPS"] = stamps_root
    cmd = [str(Path(sys.executable).parent / "edgevl"), "export", "--target", "onnx", "--precision", "int8",
           "--out", str(out), "--force", "-q"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"export failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, json.loads((out / "manifest.json").read_text())


def _summary(manifest: dict) -> dict:
    towers = {}
    for art in manifest["artifacts"]:
        quant = art["passes"]["quantization"]
        towers[art["component"]] = {
            "int8_layers": art["compression"]["compressed_layers"],
            "compressible_layers": art["compression"]["compressible_layers"],
            "gate_tries": len(quant["gate"]["tried"]),
            "gate_figures": quant["gate"]["figures"],
            "parity": {k: art["parity"][k] for k in ("passed", "cosine_min", "sqnr_db", "top1_agreement",
                                                      "top1_agreement_strict", "decisive_queries", "n_samples")},
        }
    splits = {name: {k: rec[k] for k in ("source", "photos", "images", "texts")}
              for name, rec in manifest["data_splits"].items() if name in ("calibration", "gate", "parity")}
    return {"towers": towers, "splits": splits, "parity_set": manifest["parity_set"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    empty = tempfile.mkdtemp(prefix="no-stamps-")
    runs: dict[str, list[float]] = {"package photos": [], "with stamps": []}
    found: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, root in (("package photos", empty), ("with stamps", None)):
                seconds, manifest = _export(Path(tmp) / f"{r}-{name.replace(' ', '-')}", root)
                runs[name].append(round(seconds, 1))
                found[name] = _summary(manifest)
                print(f"{name}: {seconds:.1f} s", flush=True)
    os.rmdir(empty)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    result = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rounds": args.rounds,
              "wall_s": runs, "median_wall_s": medians,
              "ratio_with_stamps": round(medians["with stamps"] / medians["package photos"], 3), "runs": found}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_pool.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Default model, ONNX int8: package photos alone vs with the Tux Paint stamps", "",
             f"`python benchmarks/data_pool.py --rounds {args.rounds}`; {result['cpus']} CPUs; both pools "
             "exported in one run, alternating. Wall times include the model load, both gates and parity; "
             "on a shared machine with other jobs running they are rough (compare rounds).", "",
             "| pool | median wall s | image int8 | text int8 | gate images | gate texts | parity images | "
             "parity texts | image parity cos / agree (strict, decisive) | text parity cos / agree (strict, decisive) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, summary in found.items():
        t, s = summary["towers"], summary["splits"]

        def fig(c: str) -> str:
            p = t[c]["parity"]
            return (f"{p['cosine_min']:.6f} / {p['top1_agreement']:.3f} ({p['top1_agreement_strict']:.3f}, "
                    f"{p['decisive_queries']} of {p['n_samples'] if c == 'image' else summary['parity_set']['images']})")
        lines.append(
            f"| {name} | {medians[name]:.1f} | {t['image']['int8_layers']}/{t['image']['compressible_layers']} | "
            f"{t['text']['int8_layers']}/{t['text']['compressible_layers']} | {s['gate']['images']} | "
            f"{s['gate']['texts']} | {s['parity']['images']} | {s['parity']['texts']} | {fig('image')} | {fig('text')} |")
    lines += ["", f"Ratio of wall times (with stamps / package photos): {result['ratio_with_stamps']}.", ""]
    (RESULTS / "data_pool.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
