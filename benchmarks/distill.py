"""Distil the embedded default (effnet-minilm) into its inherited student (`--student
effnet-lite0`) on the real-image pool's calibration and gate splits (`--data bundled`: the package
photos and the Tux Paint stamps; the parity split is never trained on), one row per
loss/schedule, every row judged on the same held-out images (the whole parity split: every view of
its package photos and each of its stamps): top-1/top-5 agreement with the teacher over the 1000
ImageNet class prompts, caption accuracy, cosines. Then shrink twice: export the best row's student to ONNX and
OpenVINO at fp32 and int8 through `edgevl export` (the accuracy gate included) and measure the
teacher fp32, the student fp32 and the student int8 side by side in one run: latency per tower
(batch 1 and 8, ONNX Runtime and OpenVINO, interleaved rounds), FLOPs, size on disk and top-1
agreement over the 1000 prompts computed from the exported artifacts.

    .venv/bin/python benchmarks/distill.py [--steps N] [--rows N] [--jobs 2] [--threads 1] [--phase all]

The default `--rows 3` trains function matching with feature distillation, then the fixed-view
rows (feature distillation, and the two-stage schedule the CLI defaults to); `--rows 0` adds
function matching with the two-stage schedule, the costliest row.

`--phase train` trains the rows into `--work` and stops; `--phase shrink` takes the rows a
train phase left in `--work`. Writes benchmarks/results/distill.json and distill.md (the shrink
and all phases).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
STUDENT = "effnet-lite0"
EDGEVL = [sys.executable, "-m", "edgevl"]


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def rows() -> dict[str, tuple[str, tuple]]:
    """Row name -> (augment, stages), in training order. Feature distillation alone (CLIP-KD's
    strongest single loss) and DC-CLIP's two stages (features, then features + affinity +
    contrastive: the CLI's default schedule), each with the fixed cached views and with function
    matching; function matching with two stages, the costliest row, comes last (`--rows 0`)."""
    from edgevl.distill.config import DEFAULT_STAGES, LossWeights, Stage

    features = (Stage("features", 1.0, LossWeights(feature=1.0)),)
    return {
        "function matching, feature distillation": ("function-matching", features),
        "fixed views, feature distillation (CLIP-KD)": ("fixed", features),
        "fixed views, two-stage (DC-CLIP; the CLI default)": ("fixed", DEFAULT_STAGES),
        "function matching, two-stage (DC-CLIP)": ("function-matching", DEFAULT_STAGES),
    }


def train_row(index: int, name: str, work: str, steps: int, batch: int, views: int, eval_every: int,
              threads: int) -> dict:
    """One row in its own process (`threads` torch threads): `distill_run` as `edgevl distill
    --student effnet-lite0 --data bundled` runs it, with the row's augment and schedule."""
    import torch

    torch.set_num_threads(threads)
    from edgevl.distill.command import INHERITED_LR
    from edgevl.distill.config import DistillConfig, OptimConfig, parse_student
    from edgevl.distill.trainer import distill_run

    augment, stages = rows()[name]
    out = Path(work) / f"row{index}"
    shutil.rmtree(out, ignore_errors=True)  # a row folder an earlier run of the benchmark left in --work
    logfile = open(Path(work) / f"row{index}.log", "w")

    def say(line: str) -> None:
        logfile.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
        logfile.flush()
        if "eval step" in line or line.startswith("wrote"):
            log(f"row {index}: {line.strip()}")

    cfg = DistillConfig(teacher=None, student=parse_student(STUDENT), data="bundled", heldout="bundled-parity",
                        out=out, steps=steps, batch=batch, views=views, stages=stages,
                        optim=OptimConfig(lr=INHERITED_LR), checkpoint_every=0, eval_every=eval_every,
                        augment=augment)
    t0 = time.time()
    result = distill_run(cfg, log=say)
    seconds = time.time() - t0
    return {"name": name, "out": str(out), "augment": augment, "stages": [s.name for s in stages],
            "steps": steps, "batch": batch, "seconds": seconds, "data_seconds": result.data_seconds,
            "cache_hit": result.cache_hit, "metrics": result.metrics, "final": result.metrics[-1],
            "sizes": result.sizes, "lr": INHERITED_LR}


def pool_counts() -> dict:
    """What `--data bundled` trains on and `--heldout bundled-parity` judges on: package photos
    and Tux Paint stamps per split, and the held-out images."""
    from edgevl.calibration.samples import pool_name, split_samples

    out: dict = {"pool": pool_name()}
    for split in ("calibration", "gate", "parity"):
        samples = split_samples(split)
        out[split] = {"package_photos": sum(not s.is_stamp for s in samples),
                      "stamps": sum(s.is_stamp for s in samples)}
    return out


def train(args: argparse.Namespace) -> dict:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    names = list(rows())[: args.rows] if args.rows else list(rows())
    eval_every = max(1, args.steps // 3)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(train_row, i, name, str(work), args.steps, args.batch, args.views, eval_every,
                                     args.threads) for i, name in enumerate(names)}
        done = {name: f.result() for name, f in futures.items()}
    out = {"rows": done, "train_seconds": time.time() - t0, "jobs": args.jobs, "threads": args.threads,
           "steps": args.steps, "batch": args.batch, "views": args.views, "eval_every": eval_every,
           "data": pool_counts(), "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    (work / "train.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


# ---------------------------------------------------------------- shrink: export and measure


def export(model: Optional[str], out: Path, targets: str, precision: str) -> dict:
    """`edgevl export` as a user runs it; returns its exit code, its last lines and the manifest
    (None when it refused)."""
    cmd = EDGEVL + ["export"] + ([model] if model else []) + ["--target", targets, "--precision", precision,
                                                              "--out", str(out), "--force"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    manifest = json.loads((out / "manifest.json").read_text()) if proc.returncode == 0 else None
    shown = " ".join(c if "/" not in c or c.startswith("--") else Path(c).name for c in cmd[2:])
    log(f"edgevl {shown}: exit {proc.returncode} in {time.time() - t0:.0f} s")
    return {"command": "edgevl " + " ".join(cmd[3:]), "rc": proc.returncode, "seconds": time.time() - t0,
            "tail": text[-12:], "manifest": manifest, "folder": str(out)}


def artifact_files(folder: Path, rel: str) -> list[Path]:
    """The files one artifact occupies: the graph and its weights beside it."""
    path = folder / rel
    out = [path]
    for extra in (Path(str(path) + ".data"), path.with_suffix(".bin")):
        if extra.exists() and extra != path:
            out.append(extra)
    return out


def runners(folder: Path, manifest: dict, threads: int) -> dict[tuple[str, str], Callable]:
    """(runtime, tower) -> a callable on numpy feeds returning the embedding, per artifact."""
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    out: dict[tuple[str, str], Callable] = {}
    for a in manifest["artifacts"]:
        path = str(folder / a["path"])
        if a["target"] == "onnx":
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]
            out[("onnxruntime", a["component"])] = (
                lambda f, s=sess, n=names: s.run(None, {k: v for k, v in f.items() if k in n})[0])
        elif a["target"] == "openvino":
            model = core.read_model(path)
            names = [p.get_any_name() for p in model.inputs]
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": threads})
            out[("openvino", a["component"])] = (
                lambda f, c=compiled, n=names: np.asarray(c({k: v for k, v in f.items() if k in n})[0]))
    return out


def timings(calls: dict[str, Callable[[], object]], rounds: int, iters: int) -> dict[str, float]:
    """Median over rounds of the mean seconds per call, the candidates interleaved within each
    round so load from other processes falls on all of them alike."""
    per: dict[str, list[float]] = {k: [] for k in calls}
    for run in calls.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in calls.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                run()
            per[name].append((time.perf_counter() - t0) / iters)
    return {k: float(np.median(v)) for k, v in per.items()}


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def embed(run: Callable, feeds: dict, chunk: int) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    return unit(np.concatenate([run({k: v[i:i + chunk] for k, v in feeds.items()}) for i in range(0, n, chunk)]))


def shrink(args: argparse.Namespace, trained: dict) -> dict:
    import edgevl
    from edgevl.distill.data import imagenet_prompts
    from edgevl.distill.sources import load_heldout
    from edgevl.preprocess import preprocess_images
    from edgevl.profile.flops import count_onnx

    work = args.work
    best_name = max(trained["rows"], key=lambda n: trained["rows"][n]["final"]["imagenet_top1"])
    best = trained["rows"][best_name]
    student_dir = best["out"]
    log(f"shrinking the best row: {best_name} (top-1 {best['final']['imagenet_top1']:.3f})")
    exports = {
        "teacher fp32": export(None, work / "teacher-fp32", "onnx,openvino", "fp32"),
        "student fp32": export(student_dir, work / "student-fp32", "onnx,openvino", "fp32"),
        "student int8 onnx": export(student_dir, work / "student-int8-onnx", "onnx", "int8"),
        "student int8 openvino": export(student_dir, work / "student-int8-openvino", "openvino", "int8"),
    }
    # model -> (runtime, tower) -> runner; model -> spec for feeds
    specs = {"teacher": edgevl.load(None), "student": edgevl.load(student_dir)}
    models: dict[str, dict] = {"teacher fp32": {}, "student fp32": {}, "student int8": {}}
    facts: dict[str, dict] = {m: {} for m in models}
    for key, e in exports.items():
        if e["manifest"] is None:
            continue
        model = "student int8" if "int8" in key else key
        folder = Path(e["folder"])
        models[model].update(runners(folder, e["manifest"], args.threads))
        for a in e["manifest"]["artifacts"]:
            runtime = "onnxruntime" if a["target"] == "onnx" else a["target"]
            files = artifact_files(folder, a["path"])
            facts[model][f"{runtime}/{a['component']}"] = {
                "bytes": sum(f.stat().st_size for f in files), "files": [f.name for f in files],
                "parity": a.get("parity", {}), "compression": a.get("extra", {}).get("compression")
                or a.get("compression"), "path": str(folder / a["path"])}
    heldout = load_heldout("bundled-parity", "bundled")
    prompts = imagenet_prompts()
    feeds = {}
    for who, spec in specs.items():
        feeds[who] = {
            "image": {"pixel_values": preprocess_images(heldout.images, spec.preprocess)},
            "text": {k: np.asarray(v) for k, v in spec.tokenize(prompts).items()},
        }
    # FLOPs of the fp32 and int8 ONNX graphs at batch 1 (the int8 graph's integer matmuls counted).
    flops: dict[str, dict] = {}
    for model, table in facts.items():
        who = model.split()[0]
        for tower in ("image", "text"):
            f = table.get(f"onnxruntime/{tower}")
            if f is None:
                continue
            shapes = {k: [1, *v.shape[1:]] for k, v in feeds[who][tower].items()}
            count = count_onnx(Path(f["path"]), shapes)
            flops.setdefault(model, {})[tower] = {"gflops": count.total / 1e9, "uncounted": count.uncounted,
                                                  "int8_nodes": count.int8_nodes, "inputs": shapes}
    # Agreement from the exported artifacts: each model's pick among the 1000 prompts on every
    # held-out view, against the teacher fp32 ONNX export's pick.
    agreement: dict[str, dict] = {}
    teacher_pick = None
    for runtime in ("onnxruntime", "openvino"):
        for model, table in models.items():
            if (runtime, "image") not in table or (runtime, "text") not in table:
                continue
            who = model.split()[0]
            img = embed(table[(runtime, "image")], feeds[who]["image"], 8)
            txt = embed(table[(runtime, "text")], feeds[who]["text"], 100)
            scores = img @ txt.T
            if teacher_pick is None and model == "teacher fp32" and runtime == "onnxruntime":
                teacher_pick = scores.argmax(-1)
            top5 = np.argsort(-scores, axis=-1)[:, :5]
            agreement.setdefault(model, {})[runtime] = {
                "top1": float((scores.argmax(-1) == teacher_pick).mean()),
                "top5": float((top5 == teacher_pick[:, None]).any(-1).mean())}
            log(f"agreement {model} {runtime}: top-1 {agreement[model][runtime]['top1']:.3f}")
    # Latency: every model's tower interleaved in one loop per (runtime, tower, batch).
    latency: dict[str, dict] = {}
    for runtime in ("onnxruntime", "openvino"):
        for tower in ("image", "text"):
            for b in (1, 8):
                calls = {}
                for model, table in models.items():
                    if (runtime, tower) in table:
                        who = model.split()[0]
                        feed = {k: np.ascontiguousarray(v[:b]) for k, v in feeds[who][tower].items()}
                        calls[model] = (lambda r=table[(runtime, tower)], f=feed: r(f))
                iters = args.iters if b == 1 else max(1, args.iters // 4)
                t = timings(calls, args.rounds, iters)
                row = {f"{m}_ms": v * 1e3 for m, v in t.items()}
                row.update({f"{m}_ratio": v / t["teacher fp32"] for m, v in t.items() if m != "teacher fp32"})
                latency[f"{runtime}/{tower}/b{b}"] = row
                log(f"latency {runtime} {tower} batch {b}: "
                    + ", ".join(f"{m} {v * 1e3:.2f} ms" for m, v in t.items()))
    both = {}
    for runtime in ("onnxruntime", "openvino"):
        for b in (1, 8):
            rows_ = [latency[f"{runtime}/{t}/b{b}"] for t in ("image", "text")]
            both[f"{runtime}/b{b}"] = {
                m: (rows_[0][f"{m}_ms"] + rows_[1][f"{m}_ms"]) / (rows_[0]["teacher fp32_ms"] + rows_[1]["teacher fp32_ms"])
                for m in ("student fp32", "student int8") if f"{m}_ms" in rows_[0] and f"{m}_ms" in rows_[1]}
    return {"best_row": best_name, "student_dir": student_dir,
            "exports": {k: {kk: vv for kk, vv in v.items() if kk != "manifest"} for k, v in exports.items()},
            "facts": facts, "flops": flops, "agreement": agreement, "latency": latency, "both_towers_ratio": both,
            "heldout_images": len(heldout.images), "prompts": len(prompts), "timing": {
                "rounds": args.rounds, "iters_batch1": args.iters, "iters_batch8": max(1, args.iters // 4),
                "threads": args.threads}}


# ---------------------------------------------------------------- report


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def f3(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f}"


def data_sentence(d: Optional[dict]) -> str:
    """Where the training and held-out images come from, in words."""
    if not d:
        return ""
    cal, gate, par = d["calibration"], d["gate"], d["parity"]
    return (f"Pool: {d['pool']}. Trained on the calibration and gate splits: {cal['package_photos'] + gate['package_photos']} "
            f"package photos (each with its caption and its label prompt) and {cal['stamps'] + gate['stamps']} Tux Paint "
            f"stamps (each with its caption). Never trained on: the parity split, {par['package_photos']} package photos "
            f"(5 views each) and {par['stamps']} stamps (one view each).")


def markdown(r: dict) -> str:
    t = r["train"]
    lines = [
        "# Distillation: effnet-minilm -> its inherited student `effnet-lite0` (benchmarks/distill.py)",
        "",
        f"One run on {r['cpu']} ({os.cpu_count()} CPUs, shared with other jobs; load average (1, 5, 15 min) at "
        f"the start {r['load_start']}, after training {t.get('load_end', '-')}, at the end {r.get('load_end', '-')}), "
        f"{r['date']}. Command: `{r['command']}`. " + data_sentence(t.get("data")) + f" Training: {t['steps']} steps "
        f"per row, batch {t['batch']}, lr {next(iter(t['rows'].values()))['lr']:g}, {t['jobs']} rows at a time, each "
        f"its own process with {t['threads']} torch thread(s): {t['train_seconds'] / 60:.1f} min for the rows. "
        f"Held out: the whole parity split ({r['shrink']['heldout_images']} images), zero-shot over the "
        f"{r['shrink']['prompts']} ImageNet class prompts. Whole run {r['total_seconds'] / 60:.1f} min.",
        "",
        "## Rows: loss and schedule, judged on the same held-out images",
        "",
        "| row | 1000-prompt top-1 | top-5 | student image + teacher text top-1 | teacher image + student text "
        "top-1 | image cosine | prompt text cosine | caption accuracy | label accuracy | row wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = next(iter(t["rows"].values()))["metrics"][0]

    def cells(m: dict) -> str:
        return " | ".join(f3(m.get(k)) for k in (
            "imagenet_top1", "imagenet_top5", "imagenet_top1_image_tower", "imagenet_top1_text_tower",
            "image_cosine", "imagenet_text_cosine", "student_caption_accuracy", "student_accuracy"))

    lines.append(f"| step 0 (the inherited student, every row) | {cells(first)} | |")
    for name, row in t["rows"].items():
        lines.append(f"| {name} | {cells(row['final'])} | {row['seconds'] / 60:.1f} |")
    lines += ["", f"Teacher on the same images: caption accuracy {f3(first.get('teacher_caption_accuracy'))}, "
              f"label accuracy {f3(first.get('teacher_accuracy'))}. Caption accuracy: an image's own caption is its "
              "best match among the held-out captions (the package photos' and the stamps'); label accuracy: "
              "zero-shot over the parity split's own classes (the package photos' label prompts and the stamps' "
              "captions).", "",
              "Top-1 over the 1000 prompts at each evaluation (step: value):", ""]
    for name, row in t["rows"].items():
        lines.append(f"- {name}: " + ", ".join(f"{m['step']}: {m['imagenet_top1']:.3f}" for m in row["metrics"]))
    s = r["shrink"]
    lines += ["", f"## Shrink twice: the best row ({s['best_row']}) exported", ""]
    for key, e in s["exports"].items():
        lines.append(f"- `{e['command']}`: exit {e['rc']} ({e['seconds']:.0f} s)"
                     + ("" if e["rc"] == 0 else "; refused: " + " / ".join(x.strip() for x in e["tail"][-6:])))
    lines += ["", "| model | tower | ONNX GFLOPs (batch 1) | int8 nodes | size ONNX MB | size OpenVINO MB |",
              "|---|---|---|---|---|---|"]
    for model, table in s["facts"].items():
        for tower in ("image", "text"):
            fl = s["flops"].get(model, {}).get(tower)
            sizes = [table.get(f"{rt}/{tower}", {}).get("bytes") for rt in ("onnxruntime", "openvino")]
            if fl is None and all(x is None for x in sizes):
                continue
            lines.append(f"| {model} | {tower} | {f3(fl and fl['gflops'])} | {fl['int8_nodes'] if fl else '-'} | "
                         + " | ".join("-" if x is None else f"{x / 1e6:.1f}" for x in sizes) + " |")
    lines += ["", "Top-1 / top-5 agreement with the teacher (fp32 ONNX export) over the 1000 prompts, from the "
              "exported artifacts, on the held-out images:", "",
              "| model | ONNX Runtime top-1 | top-5 | OpenVINO top-1 | top-5 |", "|---|---|---|---|---|"]
    for model, per in s["agreement"].items():
        o, v = per.get("onnxruntime", {}), per.get("openvino", {})
        lines.append(f"| {model} | {f3(o.get('top1'))} | {f3(o.get('top5'))} | {f3(v.get('top1'))} | "
                     f"{f3(v.get('top5'))} |")
    tm = s["timing"]
    lines += ["", f"Latency (ms per call; median of {tm['rounds']} interleaved rounds of {tm['iters_batch1']} "
              f"calls at batch 1, {tm['iters_batch8']} at batch 8; {tm['threads']} runtime threads), ratio to the "
              "teacher fp32 in the same loop:", "",
              "| runtime | tower | batch | teacher fp32 ms | student fp32 ms | ratio | student int8 ms | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for key, row in s["latency"].items():
        runtime, tower, b = key.split("/")
        lines.append(f"| {runtime} | {tower} | {b[1:]} | {row['teacher fp32_ms']:.2f} | "
                     f"{row.get('student fp32_ms', float('nan')):.2f} | {f3(row.get('student fp32_ratio'))} | "
                     + (f"{row['student int8_ms']:.2f} | {f3(row.get('student int8_ratio'))} |"
                        if "student int8_ms" in row else "- | - |"))
    lines += ["", "Both towers (image + text time) against the teacher's:", ""]
    for key, ratios in s["both_towers_ratio"].items():
        lines.append(f"- {key}: " + ", ".join(f"{m} {v:.3f}x" for m, v in ratios.items()))
    lines += ["", f"Aim (issue 26): student top-1 >= 0.85 at <= 0.5x the teacher's fp32 latency (both towers, ONNX "
              f"Runtime, batch 1); student int8 >= 0.8 at <= 0.35x. {r['verdict']}", ""]
    return "\n".join(lines)


def verdict(shrink_: dict) -> str:
    ag = shrink_["agreement"]
    both = shrink_["both_towers_ratio"].get("onnxruntime/b1", {})
    parts = []
    for model, (aim_top1, aim_ratio) in (("student fp32", (0.85, 0.5)), ("student int8", (0.8, 0.35))):
        top1 = ag.get(model, {}).get("onnxruntime", {}).get("top1")
        ratio = both.get(model)
        if top1 is None or ratio is None:
            parts.append(f"{model}: no ONNX artifact (refused, above)")
            continue
        met = top1 >= aim_top1 and ratio <= aim_ratio
        parts.append(f"{model}: top-1 {top1:.3f} at {ratio:.3f}x ({'met' if met else 'NOT met'})")
    return "Measured: " + "; ".join(parts) + "."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=("all", "train", "shrink"), default="all")
    ap.add_argument("--steps", type=int, default=72, help="optimizer steps per row")
    ap.add_argument("--rows", type=int, default=3,
                    help="train the first N rows (0: all four, adding function matching with two stages)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--views", type=int, default=2, help="cached views per photo of the fixed-view rows")
    ap.add_argument("--jobs", type=int, default=2, help="rows trained at a time, each in its own process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row process, and runtime threads")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgevl-distill-bench"))
    args = ap.parse_args()
    start = time.time()
    load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    trained = train(args) if args.phase in ("all", "train") else json.loads((args.work / "train.json").read_text())
    if args.phase == "train":
        return
    shrunk = shrink(args, trained)
    report = {
        "cpu": cpu_name(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "load_start": load_start, "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]),
        "teacher": "effnet-minilm (EfficientNet-Lite0 + all-MiniLM-L6-v2)", "student": STUDENT,
        "train": trained, "shrink": shrunk, "verdict": verdict(shrunk),
        "total_seconds": time.time() - start + (0 if args.phase == "all" else trained["train_seconds"]),
        "load_end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "phases": args.phase,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (RESULTS / "distill.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
