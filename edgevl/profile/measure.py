"""The parent side of measuring: which artifacts can run here, and one child process each."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgevl.errors import UnknownNameError
from edgevl.registry import EXPORTERS, RUNTIMES

# Targets edgevl names but cannot run on this kind of machine, and why.
NO_SDK = {
    "tensorrt": "TensorRT: no SDK on this machine (needs an NVIDIA GPU and CUDA); ONNX Runtime checked the "
    "engine-ready graph's numbers at export, its speed would not be TensorRT's",
    "coreml": "Core ML runs on Apple devices only; here a reference interpreter checks its numbers, not its speed",
}
# Seconds a child may take beyond its timing budget (imports, load/compile, FLOP counting).
CHILD_OVERHEAD_S = 300.0


@dataclass(frozen=True)
class Plan:
    """One manifest artifact and the runtime that runs it here, or why none does."""

    index: int
    entry: dict[str, Any]
    runtime: Optional[str]
    reason: str = ""

    @property
    def label(self) -> str:
        e = self.entry
        return f"{e.get('component')} {e.get('target')} {e.get('precision')}"


def _tensorrt_runs() -> bool:
    from edgevl.exporters.tensorrt_engine import tensorrt_available

    return tensorrt_available()


def runtime_for(target: str) -> tuple[Optional[str], str]:
    """(runtime name, "") for a target whose runtime is installed, else (None, reason)."""
    if target in NO_SDK and not (target == "tensorrt" and _tensorrt_runs()):
        return None, NO_SDK[target]
    try:
        runtime = EXPORTERS.get(target).runtime
    except UnknownNameError:
        return None, f"unknown target {target!r}: this edgevl has no runtime for it"
    if not runtime:
        return None, f"target {target!r} has no runtime on this machine (no SDK)"
    missing = [m for m in RUNTIMES.get(runtime).requires if importlib.util.find_spec(m) is None]
    if missing:
        extra = RUNTIMES.get(runtime).extra
        return None, f"{', '.join(missing)} not installed: pip install 'edgevl[{extra}]'"
    return runtime, ""


def plan(folder: Path, manifest: dict[str, Any]) -> list[Plan]:
    plans = []
    for index, entry in enumerate(manifest.get("artifacts") or []):
        runtime, reason = runtime_for(str(entry.get("target")))
        if runtime is not None and not (folder / str(entry.get("path"))).is_file():
            runtime, reason = None, f"file {entry.get('path')} is missing from the export folder"
        plans.append(Plan(index, entry, runtime, reason))
    return plans


def child_env() -> dict[str, str]:
    """The parent's environment, with the folder holding this edgevl first on PYTHONPATH so the
    child imports the same code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def run_child(folder: Path, manifest: dict[str, Any], item: Plan, batches: list[int], budget_s: float) -> dict[str, Any]:
    """Measure one artifact in a fresh `python -m edgevl.profile.child`; its result, or an error."""
    entry = item.entry
    request = {
        "folder": str(folder), "manifest": manifest, "path": entry["path"], "component": entry.get("component"),
        "runtime": item.runtime, "options": entry.get("runtime_options") or {}, "batches": batches,
        "budget_s": budget_s,
    }
    with tempfile.TemporaryDirectory(prefix="edgevl-profile-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "edgevl.profile.child", str(req), str(res)],
                env=child_env(), capture_output=True, text=True, timeout=CHILD_OVERHEAD_S + 4 * budget_s,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the measuring process ran past {CHILD_OVERHEAD_S + 4 * budget_s:.0f} s and was stopped"}
        if res.is_file():
            return json.loads(res.read_text())
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"the measuring process failed: {tail[0][:300]}"}
