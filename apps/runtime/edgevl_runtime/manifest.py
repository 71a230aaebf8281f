"""Reading an export's manifest.json and choosing the artifact each tower runs from.

The library reads manifest versions 1.x (a manifest without `manifest_version` is read as 1.0);
a newer major version, a listed file that is missing, or an artifact whose sha256 differs from
the manifest's is refused with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgevl_runtime.errors import NoArtifact, RefusedExport

MANIFEST_NAME = "manifest.json"
SUPPORTED_MAJOR = 1
# The runtime that runs each target's artifacts, and the pip extra that installs it.
TARGET_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
RUNTIME_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
REQUIRED_ENTRY_KEYS = ("target", "precision", "component", "path", "sha256")


@dataclass(frozen=True)
class Artifact:
    """One tower's artifact as the manifest lists it; `path` and `files` are absolute."""

    target: str
    precision: str
    component: str
    path: Path
    sha256: str
    files: tuple[Path, ...]
    runtime_options: dict[str, Any] = field(default_factory=dict)
    verified: str = "not-run"
    parity_passed: bool = False
    cosine_min: float = 0.0
    size: int = 0

    @property
    def runtime(self) -> str:
        return TARGET_RUNTIME[self.target]

    @property
    def trusted(self) -> bool:
        """Run by the target's real runtime at export time and equal to the reference there."""
        return self.verified == "runtime" and self.parity_passed


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(data: dict, where: Path) -> tuple[int, int]:
    raw = str(data.get("manifest_version", "1.0"))
    try:
        major, minor = (int(p) for p in (raw.split(".") + ["0"])[:2])
    except ValueError:
        raise RefusedExport(f"{where}: manifest_version {raw!r} is not MAJOR.MINOR; re-export with edgevl") from None
    if major > SUPPORTED_MAJOR:
        raise RefusedExport(
            f"{where}: manifest_version {raw} is newer than this edgevl-runtime reads "
            f"({SUPPORTED_MAJOR}.x); upgrade edgevl-runtime"
        )
    return major, minor


def read_manifest(folder: Path) -> dict:
    """The folder's manifest.json, checked for what this library needs to read it."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise RefusedExport(f"{folder} is not a folder; pass the folder `edgevl export --out` wrote")
    if not path.is_file():
        raise RefusedExport(f"{folder} has no {MANIFEST_NAME}; pass the folder `edgevl export --out` wrote")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusedExport(f"{path} is not readable JSON ({exc}); re-export the folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise RefusedExport(f"{path} has no 'artifacts' list; it is not an edgevl manifest")
    _version(data, path)
    return data


def artifacts(folder: Path, data: dict) -> list[Artifact]:
    """Every artifact entry of a manifest whose target this library can run."""
    folder = Path(os.path.abspath(folder))
    found = []
    for i, entry in enumerate(data["artifacts"]):
        if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED_ENTRY_KEYS):
            raise RefusedExport(
                f"{folder / MANIFEST_NAME}: artifact {i} lacks one of {', '.join(REQUIRED_ENTRY_KEYS)}; re-export"
            )
        if entry["target"] not in TARGET_RUNTIME:
            continue  # e.g. Core ML or TensorRT: other apps run those
        parity = entry.get("parity") or {}
        main = _inside(folder, entry["path"])
        files = tuple(_inside(folder, f) for f in entry.get("files") or [entry["path"]])
        found.append(Artifact(
            target=entry["target"], precision=entry["precision"], component=entry["component"],
            path=main, sha256=str(entry["sha256"]), files=files if main in files else (main, *files),
            runtime_options=dict(entry.get("runtime_options") or {}), verified=str(entry.get("verified")),
            parity_passed=bool(parity.get("passed")), cosine_min=float(parity.get("cosine_min") or 0.0),
            size=int(entry.get("bytes") or 0),
        ))
    return found


def other_targets(data: dict) -> list[str]:
    """'target/precision/component' of each manifest entry this library does not run (Core ML,
    TensorRT, ...), so a message can say they are there and why they are not used."""
    return sorted({f"{e.get('target')}/{e.get('precision')}/{e.get('component')}" for e in data["artifacts"]
                   if isinstance(e, dict) and e.get("target") not in TARGET_RUNTIME})


# Targets this library will not run for a reason beyond "another app's format".
WHY_NOT_RUN = {
    # executorch 1.5.1's Python bindings link libtorch and import torch (its wheel does not declare it).
    "executorch": "ExecuTorch's Python runtime needs torch, which edgevl-runtime does not install; "
                  "run .pte files with ExecuTorch's app runtimes (apps/android)",
}


def not_run_here(others: list[str]) -> str:
    """The clause a message adds for `other_targets`: empty when there are none."""
    if not others:
        return ""
    why = [WHY_NOT_RUN[t] for t in sorted({o.split("/", 1)[0] for o in others}) if t in WHY_NOT_RUN]
    return (f"; {', '.join(others)} {'is' if len(others) == 1 else 'are'} for other apps "
            f"(edgevl-runtime runs {' and '.join(TARGET_RUNTIME)} artifacts" + "".join(f"; {w}" for w in why) + ")")


def _inside(folder: Path, relative: str) -> Path:
    # Lexical containment: an artifact may be a symlink to shared storage, but the manifest may
    # not name a path that climbs out of the folder.
    path = Path(os.path.normpath(folder / relative))
    if folder != path and folder not in path.parents:
        raise RefusedExport(f"{folder / MANIFEST_NAME} lists {relative!r} outside the export folder; re-export")
    return path


def check_files(artifact: Artifact, verify_sha256: bool = True) -> None:
    """Refuse an artifact whose files are missing or whose bytes differ from the manifest."""
    for path in artifact.files:
        if not path.is_file():
            raise RefusedExport(f"{path} is listed in the manifest but missing; copy the whole export folder")
    if verify_sha256 and sha256_of(artifact.path) != artifact.sha256:
        raise RefusedExport(
            f"{artifact.path}: sha256 differs from the manifest's (changed or truncated); copy the export again"
        )


def choose(found: list[Artifact], component: str, runtime: str, precision: Optional[str],
           others: Optional[list[str]] = None) -> Artifact:
    """The artifact `component` runs from on `runtime`: the precision asked for, or else the best
    verified one (run by its runtime at export time and passed parity; highest min cosine, then
    the smallest). `others` (`other_targets`) are named in the message when nothing fits."""
    mine = [a for a in found if a.component == component and a.runtime == runtime]
    available = sorted({f"{a.runtime}/{a.precision}" for a in found if a.component == component})
    has = f"it has: {', '.join(available)}" if available else f"it has no {component} artifact edgevl-runtime runs"
    elsewhere = not_run_here([o for o in others or [] if o.endswith(f"/{component}")])
    if precision is not None:
        for artifact in mine:
            if artifact.precision == precision:
                return artifact
        raise NoArtifact(f"the export has no {component} artifact for {runtime}/{precision}; {has}{elsewhere}")
    trusted = [a for a in mine if a.trusted]
    if not trusted:
        hint = " (ask for a precision to run an unverified one)" if mine else ""
        raise NoArtifact(f"the export has no verified {component} artifact for {runtime}; {has}{hint}{elsewhere}")
    return max(trusted, key=lambda a: (a.cosine_min, -a.size))
