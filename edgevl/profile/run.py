"""`edgevl profile DIR`: read the export's manifest, measure every artifact that can run here in
its own process, relate its FLOPs to this machine's GEMM peak, flag slower precisions, and write
profile.json, report.md and report.html into DIR (or --out), all three or none."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from edgevl.errors import InputError, OutputWriteError
from edgevl.manifest import MANIFEST_NAME
from edgevl.profile.machine import CpuInfo, Peak, cpu_info, load_or_probe_peak
from edgevl.profile.measure import Plan, plan, run_child
from edgevl.profile.verdicts import flag_slower
from edgevl.progress import Progress
from edgevl.version import __version__

PROFILE_NAME, MARKDOWN_NAME, HTML_NAME = "profile.json", "report.md", "report.html"


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export's manifest, or an InputError naming what is wrong and the fix."""
    if not folder.exists():
        raise InputError(f"export folder {folder} does not exist; pass the folder `edgevl export --out` wrote")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file, not an export folder; pass the folder `edgevl export --out` wrote")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{folder} has no {MANIFEST_NAME}; pass a folder written by `edgevl export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"{path} cannot be read ({why}); re-run `edgevl export` to write it again") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list) or not manifest["artifacts"]:
        raise InputError(f"{path} lists no artifacts; re-run `edgevl export` to write it again")
    bad = [i for i, a in enumerate(manifest["artifacts"])
           if not isinstance(a, dict) or not {"path", "target", "precision", "component"} <= set(a)]
    if bad:
        raise InputError(f"{path}: artifact #{bad[0]} lacks path/target/precision/component; "
                         "re-run `edgevl export` to write it again")
    preprocess = folder / str(manifest.get("preprocess", "preprocess.json"))
    if not preprocess.is_file():
        raise InputError(f"{folder} has no {preprocess.name} (the preprocessing the towers are fed with); "
                         "re-run `edgevl export` to write it again")
    return manifest


def check_out(out: Path) -> None:
    """The reports' folder (--out, default the export folder) must be a folder edgevl can write."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder")
    parent = out if out.exists() else out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the reports: folder {parent} is not writable; pass --out with a folder you can write to")


def _reference(configs: list[dict]) -> Optional[dict]:
    """The batch-1 timing at the longest text length (the preprocessing's context length)."""
    ok = [c for c in configs if c.get("batch") == 1 and "p50_s" in c]
    return max(ok, key=lambda c: c.get("seq") or 0) if ok else None


def _record(item: Plan, result: Optional[dict], peak: Peak) -> dict[str, Any]:
    e = item.entry
    parity = e.get("parity") or {}
    record: dict[str, Any] = {
        "path": e["path"], "component": e["component"], "target": e["target"], "precision": e["precision"],
        "runtime": item.runtime, "runtime_options": e.get("runtime_options") or {},
        "threads_option": (e.get("runtime_options") or {}).get("threads", "runtime default"),
        "bytes": e.get("bytes"), "verified": e.get("verified"),
        "parity": {k: parity.get(k) for k in ("passed", "cosine_min", "top1_agreement", "top1_agreement_strict")},
        "status": "skipped", "reason": item.reason, "latency": None, "configs": [], "flops": None,
    }
    if result is None:
        return record
    if "error" in result:
        record.update(status="failed", reason=result["error"])
        return record
    reference = _reference(result["configs"])
    record.update(
        status="measured" if reference else "failed",
        reason="" if reference else "no batch-1 run succeeded: " + "; ".join(c.get("error", "") for c in result["configs"]),
        load_s=result["load_s"], configs=result["configs"], peak_rss_bytes=result["peak_rss_bytes"],
        rss_before_load_bytes=result.get("rss_before_load_bytes"), process_threads=result.get("process_threads"),
    )
    if reference:
        record["latency"] = {k: reference[k] for k in ("batch", "seq", "runs", "p50_s", "p90_s", "p99_s", "warmup_s")}
        record["throughput"] = {f"batch{c['batch']}" + (f"_seq{c['seq']}" if c.get("seq") else ""): c["items_per_s"]
                                for c in result["configs"] if "items_per_s" in c}
        counted = result["flops_batch1"].get(str(reference.get("seq") or 0), {})
        record["flops"] = counted.get("total")
        record["flops_detail"] = counted
        record["int8_nodes"] = counted.get("int8_nodes")
    _rate(record, peak)
    return record


def _rate(record: dict[str, Any], peak: Peak) -> None:
    """Achieved FLOP/s at batch 1 against the peak of the artifact's precision."""
    latency, flops = record.get("latency"), record.get("flops")
    peak_value, kind = peak.for_precision(record["precision"])
    record["peak_kind"] = kind
    record["peak_flops_per_s"] = peak_value
    record["achieved_flops_per_s"] = flops / latency["p50_s"] if latency and flops else None
    achieved = record["achieved_flops_per_s"]
    record["fraction_of_peak"] = achieved / peak_value if achieved and peak_value else None


def _borrow_flops(records: list[dict[str, Any]], peak: Peak) -> None:
    """An artifact whose graph could not be counted takes its ONNX sibling's count (same
    component, same precision, else fp32), and says so."""
    onnx = {(r["component"], r["precision"]): r for r in records if r["target"] == "onnx" and r.get("flops")}
    for r in records:
        if r.get("flops") or not r.get("latency"):
            continue
        sibling = onnx.get((r["component"], r["precision"])) or onnx.get((r["component"], "fp32"))
        if sibling is not None:
            r["flops"] = sibling["flops"]
            r["flops_detail"] = dict(sibling["flops_detail"], source=f"borrowed from the ONNX sibling {sibling['path']}")
            _rate(r, peak)


def profile_export(folder: Path, manifest: dict[str, Any], budget_s: float, batches: list[int],
                   progress: Progress) -> dict[str, Any]:
    """The profile of the export in `folder` (its manifest read by `read_manifest`)."""
    cpu = cpu_info()
    with progress.step("GEMM peak of this machine (cached per CPU)") as details:
        peak, cached = load_or_probe_peak(cpu)
        details.append(("from cache; " if cached else "") + f"fp32 {peak.fp32 / 1e9:.1f} GFLOP/s"
                       + (f", int8 {peak.int8 / 1e9:.1f} GOP/s" if peak.int8 else ""))
    plans = plan(folder, manifest)
    records = []
    for n, item in enumerate(plans, 1):
        head = f"[{n}/{len(plans)}] {item.label} ({item.entry['path']})"
        if item.runtime is None:
            progress.info(f"{head}: not run: {item.reason}")
            records.append(_record(item, None, peak))
            continue
        result = run_child(folder, manifest, item, batches, budget_s)
        record = _record(item, result, peak)
        records.append(record)
        if record["latency"]:
            progress.info(f"{head}: p50 {record['latency']['p50_s'] * 1e3:.2f} ms, "
                          f"peak RSS {record['peak_rss_bytes'] / 2**20:.0f} MiB")
        else:
            progress.info(f"{head}: failed: {record['reason']}")
    _borrow_flops(records, peak)
    flag_slower(records, cpu)
    return {
        "schema": 1, "edgevl_version": __version__,
        "export": {"folder": str(folder), "model": manifest.get("model"), "edgevl_version": manifest.get("edgevl_version")},
        "machine": _machine(cpu),
        "peak": {"fp32_flops_per_s": peak.fp32, "int8_ops_per_s": peak.int8, "bf16_flops_per_s": peak.bf16,
                 "fp32_source": peak.fp32_source, "int8_source": peak.int8_source, "bf16_source": peak.bf16_source,
                 "probe_size": peak.size, "from_cache": cached},
        "settings": {"budget_s": budget_s, "batches": batches},
        "artifacts": records,
    }


def _machine(cpu: CpuInfo) -> dict[str, Any]:
    return {"cpu_model": cpu.model, "isa_flags": list(cpu.flags), "int8_dot_product": cpu.int8_dot,
            "logical_cores": cpu.logical_cores, "usable_cores": cpu.usable_cores, "mhz": cpu.mhz}


def write_outputs(out: Path, files: dict[str, str]) -> None:
    """Write every file under a temporary name in `out`, then rename each into place: a failure
    before the renames leaves nothing behind."""
    temps: list[tuple[Path, Path]] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = out / f".{name}.edgevl-tmp-{os.getpid()}"
            tmp.write_text(text)
            temps.append((tmp, out / name))
        for tmp, final in temps:
            os.replace(tmp, final)
    except OSError as exc:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise OutputWriteError(f"cannot write the profile into {out} ({exc.strerror or exc}); "
                               "free disk space or pass another --out") from exc


def report_files(profile: dict[str, Any]) -> dict[str, str]:
    """profile.json, report.md and report.html, as text."""
    from edgevl.profile.html import page
    from edgevl.profile.tables import markdown

    return {PROFILE_NAME: json.dumps(profile, indent=1, allow_nan=False) + "\n",
            MARKDOWN_NAME: markdown(profile), HTML_NAME: page(profile)}


def manifest_summary(profile: dict[str, Any]) -> dict[str, Any]:
    """What `edgevl export --profile` folds into manifest.json under "profile": the machine, its
    peak, and per artifact path the headline figures (the full record is in profile.json)."""
    keys = ("status", "peak_rss_bytes", "achieved_flops_per_s", "fraction_of_peak")
    artifacts = {}
    for a in profile["artifacts"]:
        entry = {k: a.get(k) for k in keys}
        entry["p50_s"] = (a.get("latency") or {}).get("p50_s")
        entry["p99_s"] = (a.get("latency") or {}).get("p99_s")
        flag = a.get("slower_than_fp32")
        entry["slower_than_fp32"] = flag["ratio"] if flag else None
        artifacts[a["path"]] = entry
    return {"report": PROFILE_NAME, "cpu_model": profile["machine"]["cpu_model"],
            "isa_flags": profile["machine"]["isa_flags"], "peak_fp32_flops_per_s": profile["peak"]["fp32_flops_per_s"],
            "peak_int8_ops_per_s": profile["peak"]["int8_ops_per_s"], "budget_s": profile["settings"]["budget_s"],
            "artifacts": artifacts}


def profile_into_export(folder: Path, budget_s: float, batches: list[int], progress: Progress) -> dict[str, Any]:
    """`edgevl export --profile`: profile the just-published export and write the three reports
    and the manifest with its "profile" summary into it, renamed into place together."""
    manifest = read_manifest(folder)
    profile = profile_export(folder, manifest, budget_s, batches, progress)
    files = report_files(profile)
    files[MANIFEST_NAME] = json.dumps(dict(manifest, profile=manifest_summary(profile)), indent=2, allow_nan=False) + "\n"
    write_outputs(folder, files)
    return profile
