"""edgevl: on-device deployment compiler for vision-language models.

The Python API: `load` a model, optionally `quantize_` it (a plan the exporters apply), then
`export` it to targets with every artifact verified against the PyTorch reference. Heavy modules
(torch, SDKs) are imported when these are called, so `edgevl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from edgevl.version import __version__

if TYPE_CHECKING:
    from edgevl.compress.config import QuantConfig
    from edgevl.manifest import Manifest
    from edgevl.models.spec import ModelSpec

__all__ = ["distill", "export", "load", "quantize_", "reduce_tokens_"]


def load(model: Optional[str] = None, allow_pickle: bool = False) -> "ModelSpec":
    """A registered model name or a local Hugging Face CLIP/SigLIP checkpoint folder (None: the
    embedded default) as a ModelSpec."""
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    return resolve_model(model, LoadOptions(allow_pickle=allow_pickle))


def quantize_(spec: "ModelSpec", config: "QuantConfig", calib: Any = None,
              components: Sequence[str] = ("image", "text")) -> "ModelSpec":
    """Plan `config` (e.g. `DynamicW8A8Config(max_drop=0.02)`) for the named towers of `spec`,
    in place. `export` at the config's precision applies it on every target that implements the
    config's scheme and raises `InputError` naming the target and what it supports on the others
    (`edgevl.compress.plan`). `calib`: calibration data, used unless `export` is given its own
    (None: the bundled calibration split)."""
    from edgevl.compress.quantize import quantize_ as plan

    return plan(spec, config, calib, tuple(components))


def reduce_tokens_(spec: "ModelSpec", tokens: Any, max_drop: float = 0.01) -> dict:
    """Reduce the tokens of `spec`'s ViT image tower in place: `tokens` is a `--tokens` string
    ("tome:r=8", "evit:keep=0.7", "tome:r=auto") or an `edgevl.compress.tokens_config.TokenConfig`;
    `auto` searches r / keep under `max_drop`. Returns the record `export` writes to the manifest
    (per-layer token counts, FLOPs before and after, agreement with the unreduced tower)."""
    from edgevl.compress.tokens_config import parse_tokens
    from edgevl.compress.tokens_gate import apply_tokens

    config = parse_tokens(tokens) if isinstance(tokens, str) else tokens
    return apply_tokens(spec, config, max_drop)


def distill(teacher: Optional[str], student: Any, data: str, out: Union[str, Path], **options: Any) -> Any:
    """Distil `teacher` into a `student` (a `--student` string or `edgevl.distill.StudentConfig`)
    on `data` and write a model folder to `out` that `export` takes; see `edgevl.distill.distill`."""
    from edgevl.distill import distill as run

    return run(teacher, student, data, out, **options)


def export(model: Union[None, str, "ModelSpec"], out: Union[str, Path], targets: Sequence[str] = ("onnx",),
           precisions: Sequence[str] = ("fp32",), quiet: bool = True, **options: Any) -> "Manifest":
    """Export every tower of `model` (a name, a checkpoint folder or a loaded ModelSpec) to each
    target and precision in `out`, verify each artifact, and return the manifest. `options` are
    `ExportRequest`'s other fields (force, components, max_drop, cpu_isa, calibration, ...).
    Raises `edgevl.errors.ParityError` when an artifact fails parity, `InputError` on bad input."""
    from edgevl.models.spec import ModelSpec
    from edgevl.pipeline import ExportRequest, run_export
    from edgevl.progress import Progress

    spec = model if isinstance(model, ModelSpec) else None
    if "components" in options:
        options["components"] = tuple(options["components"])
    request = ExportRequest(model=None if spec is not None else model, targets=tuple(targets),
                            precisions=tuple(precisions), out=Path(out), **options)
    return run_export(request, Progress(enabled=not quiet), spec=spec).manifest
