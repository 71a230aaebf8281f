"""manifest.json: the contract users' pipelines read (schema in docs/manifest.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MANIFEST_NAME = "manifest.json"
# MAJOR.MINOR of the manifest's layout: readers (apps/runtime, apps/web) refuse a newer major
# version; a minor bump only adds fields that readers may ignore.
MANIFEST_VERSION = "1.0"
# How an artifact was checked: the manifest's `verified` value -> the words every progress line
# and summary line says for it (the one table; the runtimes set the value when they load).
VERIFIED_LABELS = {
    "runtime": "verified by the target's runtime",
    "reference-interpreter": "verified by edgevl's reference interpreter, not the target's runtime",
    "onnxruntime": "verified by ONNX Runtime standing in for TensorRT (no TensorRT here)",
    "not-run": "not verified: no runtime for this target here",
}
VERIFIED_VALUES = tuple(VERIFIED_LABELS)


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


@dataclass(frozen=True)
class Compression:
    """How much of a tower a compressed precision (int8, int8w, int4w, palettize4) compressed, as
    its exporter counts it: `compressed` of the `compressible` layers (those the precision's
    scheme could compress in this tower) are stored compressed; the rest stayed float. `best`
    says in words what the accuracy gate's best candidate with any layer compressed reached
    ("" when nothing was measured)."""

    compressed: int
    compressible: int
    best: str = ""
    # Whether a looser --max-drop could have let a candidate through: True when a candidate with
    # layers compressed met the gate's cosine floor and missed only on agreement (--max-drop
    # loosens agreement, never the cosine floor); None when the exporter's report does not say.
    max_drop_helps: Optional[bool] = None

    @classmethod
    def from_gate(cls, compressed: int, compressible: int, gate: Optional[dict], precision: str) -> "Compression":
        """The share, with what the gate's report (`edgevl.compress.gate.run_gate`) says about its
        candidates."""
        return cls(compressed, compressible, best_gate_try(gate, precision), _agreement_limited(gate))

    @property
    def nothing_compressed(self) -> bool:
        return self.compressed == 0

    def share(self) -> str:
        """`41/49 layers`: what every summary line of a compressed artifact shows."""
        return f"{self.compressed}/{self.compressible} layers"

    def to_json(self, float_fallback: bool) -> dict:
        return {"compressed_layers": self.compressed, "compressible_layers": self.compressible,
                "float_fallback": float_fallback}


@dataclass
class ArtifactFacts:
    """What the pipeline records beside an artifact without knowing its target, as the
    exporter tells it (`Exporter.describe`): its compression (None for a float precision) and
    notes that hold for the whole export (manifest key -> one line the summary prints once)."""

    compression: Optional[Compression] = None
    export_notes: dict[str, str] = field(default_factory=dict)


def _compressed_tries(gate: Optional[dict]) -> list[dict]:
    """The gate's tries that kept fewer than every ranked layer float and were measured."""
    ranked = (gate or {}).get("ranked_layers")
    return [t for t in (gate or {}).get("tried", []) if isinstance(t.get("float_layers"), int)
            and ranked is not None and t["float_layers"] < ranked and t.get("cosine_min") is not None]


def _agreement_limited(gate: Optional[dict]) -> Optional[bool]:
    tries = _compressed_tries(gate)
    if not tries or (gate or {}).get("cosine_min") is None:
        return None
    return any(t["cosine_min"] >= gate["cosine_min"] and not t.get("passed") for t in tries)


def best_gate_try(gate: Optional[dict], precision: str) -> str:
    """What the accuracy gate's best candidate with any layer compressed reached (the highest min
    cosine among its tries that kept fewer than every ranked layer float), in words; "" when the
    gate report holds no such try. `gate`: the report of `edgevl.compress.gate.run_gate`."""
    ranked = (gate or {}).get("ranked_layers")
    tries = _compressed_tries(gate)
    if not tries:
        return ""
    best = max(tries, key=lambda t: t["cosine_min"])
    agreement = best.get("top1_agreement")
    asks = f"the gate asks min cosine >= {gate.get('cosine_min')}"
    if agreement is not None and gate.get("max_drop") is not None:
        asks += f" and top-1 agreement >= {1.0 - gate['max_drop']:.3f}"
    return (f"best {precision} candidate {best['float_layers']} of {ranked} ranked layers float: min cosine "
            f"{best['cosine_min']:.4f}" + (f", top-1 agreement {agreement:.4f}" if agreement is not None else "")
            + f"; {asks}")


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


def format_agreement(tie_aware: Optional[float], strict: Optional[float] = None) -> str:
    """Top-1 agreement for people, both figures: the tie-aware one (gated) then the strict one
    (reported), e.g. "0.982 (strict 0.964)". None (no zero-shot task on this tower) reads n/a."""
    if tie_aware is None:
        return "n/a"
    return f"{tie_aware:.3f}" if strict is None else f"{tie_aware:.3f} (strict {strict:.3f})"


def format_parity(parity: dict, long: bool = False) -> str:
    """An artifact's parity figures for people; a figure is None when the output's shape differs
    from the reference or the output holds NaN/Inf (parity["failures"] says which)."""
    if parity.get("cosine_min") is None:
        return "no figures: " + "; ".join(parity.get("failures") or ["output differs from the reference"])
    top1 = format_agreement(parity["top1_agreement"], parity.get("top1_agreement_strict"))
    if not long:
        return f"cos {parity['cosine_min']:.6f} top1 {top1}"
    capped = parity.get("parity_images")
    return (f"min cosine {parity['cosine_min']:.6f}, max abs {parity['max_abs']:.2e}, "
            f"SQNR {parity['sqnr_db']:.1f} dB, top-1 agreement {top1}"
            + (f" on the first {capped['judged']} of {capped['of']} parity images" if capped else ""))


def format_attention(fused: int, unfused: int) -> str:
    """`attention fused 6/6`, or `no attention` for a tower without attention blocks (a CNN)."""
    return f"attention fused {fused}/{fused + unfused}" if fused + unfused else "no attention"


def summary_line(entry: ArtifactEntry) -> str:
    """One artifact for people, as `edgevl export` prints it: path, tower, target, precision, the
    share of layers a compressed precision compressed, attention, the parity figures and how
    they were obtained, e.g. `onnx/int8/image_encoder.int8.onnx  image onnx int8 41/49 layers
    no attention  cos 0.998 top1 1.000  verified by the target's runtime`."""
    compression = entry.extra.get("compression")
    share = ""
    if compression is not None:
        share = f" {compression['compressed_layers']}/{compression['compressible_layers']} layers"
        if compression["float_fallback"]:
            share += " (float fallback: no layer compressed, --allow-float-fallback)"
    figures = f"{format_parity(entry.parity)}  " if entry.verified != "not-run" else ""
    return (f"{entry.path}  {entry.component} {entry.target} {entry.precision}{share}  "
            f"{format_attention(entry.fused_attention, entry.unfused_attention)}  {figures}{VERIFIED_LABELS[entry.verified]}")
