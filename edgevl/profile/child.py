"""One artifact measured in its own process, so its peak resident memory is its own:
`python -m edgevl.profile.child REQUEST.json RESULT.json`.

REQUEST holds: folder (the export), manifest (its parsed manifest.json), path, component,
runtime, options (the manifest's runtime_options), batches, budget_s. RESULT gets: load_s,
configs (one timing per batch and text length), rss_before_load_bytes, peak_rss_bytes,
process_threads, flops_batch1 (per text length; image under key "0"), or error.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

from edgevl.profile.flops import count_onnx, count_openvino
from edgevl.profile.inputs import ExportInputs, bind
from edgevl.profile.timing import time_calls
from edgevl.registry import RUNTIMES


def _proc_status_bytes(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_bytes() -> Optional[int]:
    return _proc_status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident set. Linux: VmHWM, which belongs to this program's address
    space (ru_maxrss survives exec, so a child started by a large parent reports the parent's
    peak); elsewhere ru_maxrss (KiB on Linux, bytes on macOS)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def thread_count() -> Optional[int]:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def measure(request: dict[str, Any]) -> dict[str, Any]:
    folder = Path(request["folder"])
    component = request["component"]
    inputs = ExportInputs.from_manifest(folder, request["manifest"])
    result: dict[str, Any] = {"rss_before_load_bytes": current_rss_bytes()}
    runtime = RUNTIMES.get(request["runtime"])()
    start = time.perf_counter()
    loaded = runtime.load(folder / request["path"], request.get("options") or {})
    result["load_s"] = time.perf_counter() - start
    lengths: list[Optional[int]] = inputs.text_lengths() if component == "text" else [None]
    configs = [(batch, seq) for batch in request["batches"] for seq in lengths]
    share = float(request["budget_s"]) / len(configs)
    timings = []
    for batch, seq in configs:
        entry: dict[str, Any] = {"batch": batch, "seq": seq}
        feeds = bind(inputs.feeds(component, batch, seq), loaded.input_names, component)
        try:
            timing = time_calls(lambda: loaded.run(feeds), share)
        except Exception as exc:  # noqa: BLE001 - e.g. a static batch: reported, the others still run
            entry["error"] = first_line(exc)
        else:
            entry.update(timing.to_json())
            entry["items_per_s"] = batch / timing.p50_s
        timings.append(entry)
    result["configs"] = timings
    result["process_threads"] = thread_count()
    result["peak_rss_bytes"] = peak_rss_bytes()  # before FLOP counting, which is not inference
    artifact = folder / request["path"]
    flops = {}
    for seq in lengths:
        feeds = bind(inputs.feeds(component, 1, seq), loaded.input_names, component)
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        if artifact.suffix == ".pte":
            # No FLOP counter reads ExecuTorch programs; an ONNX sibling in the export lends its count.
            flops[str(seq or 0)] = {"total": None, "error": "FLOPs of a .pte program are not counted"}
            continue
        try:
            counted = count_openvino(artifact, shapes) if artifact.suffix == ".xml" else count_onnx(artifact, shapes, feeds)
            flops[str(seq or 0)] = counted.to_json()
        except Exception as exc:  # noqa: BLE001 - a graph the counter cannot read leaves FLOPs unknown
            flops[str(seq or 0)] = {"total": None, "error": first_line(exc)}
    result["flops_batch1"] = flops
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m edgevl.profile.child REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    try:
        result = measure(request)
    except Exception as exc:  # noqa: BLE001 - the parent reports any failure as this artifact's error
        result = {"error": first_line(exc), "peak_rss_bytes": peak_rss_bytes()}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
