"""manifest.json: the contract users' pipelines read (schema in README.md, "Manifest")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
# MAJOR.MINOR of the manifest's layout: readers (apps/runtime, apps/web) refuse a newer major
# version; a minor bump only adds fields that readers may ignore.
MANIFEST_VERSION = "1.0"
# "onnxruntime": a TensorRT target's engine-ready ONNX run by ONNX Runtime where TensorRT is absent.
VERIFIED_VALUES = ("runtime", "reference-interpreter", "onnxruntime", "not-run")


def sha256_of(path: Path) -> str:
    """A file's sha256; for a folder artifact (a Core ML `.mlpackage`), the sha256 of the lines
    "<sha256 of file>  <path relative to the folder>\n" over its files in sorted path order
    (`sha256sum` of every file, sorted, as `cd PKG && find . -type f | sort | xargs sha256sum`
    prints without the "./")."""
    if Path(path).is_dir():
        lines = "".join(
            f"{sha256_of(f)}  {f.relative_to(path).as_posix()}\n"
            for f in sorted(Path(path).rglob("*"), key=lambda p: p.relative_to(path).as_posix()) if f.is_file()
        )
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ArtifactEntry:
    target: str
    precision: str
    component: str
    path: str  # relative to the manifest's folder
    sha256: str
    bytes: int
    fused_attention: int
    unfused_attention: int
    verified: str
    parity: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verified not in VERIFIED_VALUES:
            raise ValueError(f"verified must be one of {VERIFIED_VALUES}, got {self.verified!r}")

    def to_json(self) -> dict:
        data = {
            "target": self.target,
            "precision": self.precision,
            "component": self.component,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "fused_attention": self.fused_attention,
            "unfused_attention": self.unfused_attention,
            "verified": self.verified,
            "parity": self.parity,
        }
        data.update(self.extra)
        return data


@dataclass
class Manifest:
    edgevl_version: str
    model: dict[str, Any]
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {
            "manifest_version": MANIFEST_VERSION,
            "edgevl_version": self.edgevl_version,
            "model": self.model,
            "artifacts": [a.to_json() for a in self.artifacts],
        }
        data.update(self.extra)
        return data

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        return path

    @property
    def passed(self) -> bool:
        return all(a.parity.get("passed", False) for a in self.artifacts if a.verified != "not-run")
