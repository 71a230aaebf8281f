"""Exporter contract: public `export()` validates and checks the SDK, private `_export()` works.

An exporter turns ONE tower of a ModelSpec into ONE artifact in `out_dir` (a staging folder the
pipeline moves into place only when everything succeeded) and reports how attention was lowered.

Who imports whom (tests/unit/test_layout.py checks it over every import, function-level ones
included): the pipeline calls exporters; an exporter may import compress (quantization and its
accuracy gate), runtimes (to run a candidate, e.g. Core ML's MIL interpreter for the fp16 guard)
and core modules (models, ops, calibration, the gate split from `edgevl.paritydata`, the tolerance
table), never the pipeline or the CLI. Runtimes never import an exporter: a runtime gets a path and
options. The parity check of a finished artifact is the pipeline's, and no exporter imports
`edgevl.distill`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from edgevl.compress.config import DEFAULT_PALETTE_TUNE_STEPS, check_cpu_isa
from edgevl.compress.ort_graph import ONNX_FLAVORS
from edgevl.errors import InputError, MissingBackendError, UnfusedAttentionError
from edgevl.models.spec import Component, ModelSpec
from edgevl.models.quiet import quiet_transformers

COREML_INPUTS = ("image", "tensor")
# TensorRT attention: the IAttention-ready standard op, or a plugin node for TensorRT < 10.14.
TRT_ATTENTION = ("native", "plugin")
# The dynamic axes edgevl's towers declare (TensorSig shapes); --static-shapes may fix these only.
STATIC_AXES = ("batch", "seq")


@dataclass(frozen=True)
class ExportOptions:
    """Options every exporter receives.

    Attributes:
        precision: one of the exporter's `precisions`.
        onnx_flavor: "standard" lowers attention to ONNX `Attention` (opset 23); "ort" to
            `com.microsoft.MultiHeadAttention` (ONNX Runtime's contrib op).
        allow_unfused: export even if some attention blocks did not fuse (they are still counted).
        static_shapes: fixed sizes for dynamic axes, e.g. {"batch": 1, "seq": 77} (NPUs).
        calibration: a calibration set for precisions that need one (int8); None = the bundled
            calibration split.
        max_drop: for quantized precisions, the largest drop of zero-shot top-1 agreement against
            the fp32 reference the user accepts: on the gate split for the accuracy gate, and as
            the parity split's agreement floor where it is looser than the tolerance table's.
        cpu_isa: the int8 dot-product semantics the artifact may rely on (see
            edgevl.compress.config.CPU_ISAS); recorded in the manifest.
        speed_guard: let int8 exporters time int8 against float on the building machine and
            keep float what is not faster. Off by default: a timing makes the artifact depend
            on the machine that builds it. When on, the timings are recorded in the manifest.
        coreml_input: the Core ML image tower's input: "image" (a Core ML image, RGB pixels
            0-255, the preprocessing's normalisation folded into the model) or "tensor" (the
            normalised float tensor the other targets take).
        palette_tune_steps: Core ML palettize4 only: fine-tuning steps around the palettes when
            the tower with every layer palettized misses its tolerance row (0: no tuning; the
            gate then keeps the most damaging layers float). See `edgevl.compress.palette_tune`.
        trt_attention: TensorRT target only: "native" (standard `Attention`, imported as
            IAttention by TensorRT >= 10.14) or "plugin" (also a plugin-node graph for older TensorRT).
        progress: called with one line per step of long work inside an export (the int8
            accuracy gate's tries); None = silent.
    """

    precision: str = "fp32"
    onnx_flavor: str = "standard"
    allow_unfused: bool = False
    static_shapes: Optional[dict[str, int]] = None
    calibration: Any = None
    max_drop: float = 0.01
    cpu_isa: str = "any"
    speed_guard: bool = False
    coreml_input: str = "image"
    palette_tune_steps: int = DEFAULT_PALETTE_TUNE_STEPS
    trt_attention: str = "native"
    progress: Optional[Callable[[str], None]] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop < 1.0:
            raise InputError(f"--max-drop {self.max_drop} must be in [0, 1)")
        check_cpu_isa(self.cpu_isa)
        if self.coreml_input not in COREML_INPUTS:
            raise InputError(
                f"unknown Core ML input {self.coreml_input!r}; use one of: {', '.join(COREML_INPUTS)}"
            )
        if self.palette_tune_steps < 0:
            raise InputError(f"--palette-tune-steps {self.palette_tune_steps} must be 0 (no tuning) or more")
        if self.trt_attention not in TRT_ATTENTION:
            raise InputError(
                f"unknown --trt-attention {self.trt_attention!r}; use one of: {', '.join(TRT_ATTENTION)}"
            )
        if self.onnx_flavor not in ONNX_FLAVORS:
            raise InputError(
                f"unknown ONNX flavour {self.onnx_flavor!r}; use one of: {', '.join(ONNX_FLAVORS)}"
            )


@dataclass
class ExportedArtifact:
    """One file (plus sidecars) for one tower at one precision, and what the export did."""

    target: str
    precision: str
    component: Component
    path: Path  # the main file, inside the staging folder
    files: list[Path]  # every file that belongs to the artifact (main file first)
    fused_attention: int
    unfused_attention: int
    unfused_blocks: list[str] = field(default_factory=list)
    runtime: str = ""  # the registered runtime that verifies it ("" = none can run here)
    runtime_options: dict[str, Any] = field(default_factory=dict)
    passes: dict[str, Any] = field(default_factory=dict)  # what each graph pass did (counts)
    notes: list[str] = field(default_factory=list)


def check_static_shapes(towers: list, static_shapes: Optional[dict[str, int]]) -> None:
    """Every name in --static-shapes must be a dynamic axis of at least one exported tower (an
    axis a tower lacks, e.g. `seq` for the image tower, simply does not apply to it)."""
    if not static_shapes:
        return
    axes = {d for tower in towers for sig in tower.inputs for d in sig.shape if isinstance(d, str)}
    unknown = sorted(set(static_shapes) - axes)
    if unknown:
        raise InputError(
            f"--static-shapes names unknown axis {', '.join(unknown)}; "
            f"the model's dynamic axes are: {', '.join(sorted(axes))}"
        )


def check_static_sizes(spec: ModelSpec, static_shapes: Optional[dict[str, int]]) -> None:
    """A fixed `seq` must fit the text tower's position table (its context length)."""
    seq = (static_shapes or {}).get("seq")
    context = spec.preprocess.context_length
    if seq is not None and seq > context:
        raise InputError(
            f"--static-shapes seq={seq} is longer than the text tower's context length {context}; "
            f"use seq={context} or less"
        )


class Exporter(ABC):
    """Base of every target. Subclasses set the class attributes and implement `_export`."""

    name: str = ""
    requires: tuple[str, ...] = ()  # importable modules the SDK provides
    extra: str = ""  # the pip extra that installs them: pip install 'edgevl[<extra>]'
    precisions: tuple[str, ...] = ("fp32",)
    runtime: str = ""  # the runtime that verifies this target's artifacts after export

    # Extra modules a precision needs beyond `requires` (e.g. a quantization toolkit).
    precision_requires: dict[str, tuple[str, ...]] = {}
    # Precisions the target knows but cannot build here, with the reason (said when asked for).
    refused: dict[str, str] = {}

    def check_not_refused(self, precision: str) -> None:
        if precision in self.refused:
            raise InputError(f"target {self.name!r} cannot build precision {precision!r}: {self.refused[precision]}")

    def missing_modules(self, precision: Optional[str] = None) -> list[str]:
        modules = self.requires + self.precision_requires.get(precision or "", ())
        return [m for m in modules if importlib.util.find_spec(m) is None]

    def check_available(self, precision: Optional[str] = None) -> None:
        missing = self.missing_modules(precision)
        if missing:
            at = f" at precision {precision!r}" if precision and precision in self.precision_requires else ""
            raise MissingBackendError(
                f"target {self.name!r}{at} needs {', '.join(missing)}, which is not installed; "
                f"install it with: pip install 'edgevl[{self.extra}]'"
            )

    def export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        self.check_not_refused(options.precision)
        if options.precision not in self.precisions:
            raise InputError(
                f"target {self.name!r} does not support precision {options.precision!r}; "
                f"choose one of: {', '.join(self.precisions)}"
            )
        self.check_available(options.precision)
        out_dir.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():  # converters that walk the model trip transformers' warnings
            return self._export(spec, component, out_dir, options)

    def describe(self, artifact: ExportedArtifact) -> "ArtifactFacts":
        """What the pipeline records beside `artifact` without knowing the target: its compressed
        layers and export-wide notes (`edgevl.manifest.ArtifactFacts`). This default reads the
        `passes["quantization"]` report of the ONNX and TensorRT exporters (quantized_layers,
        float_layers, the gate's tries); a target that reports otherwise overrides it."""
        from edgevl.manifest import ArtifactFacts, Compression

        quant = artifact.passes.get("quantization")
        if not quant or "quantized_layers" not in quant:
            return ArtifactFacts()
        done, kept = int(quant["quantized_layers"]), len(quant.get("float_layers") or {})
        return ArtifactFacts(Compression.from_gate(done, done + kept, quant.get("gate"), artifact.precision))

    @abstractmethod
    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact: ...


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Converters and quantizers print progress bars and warnings; the CLI's output stays
    edgevl's. The named loggers go to ERROR, warnings are ignored and stdout is dropped."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [lg.level for lg in found]
    for lg in found:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(found, levels):
            lg.setLevel(level)


def refuse_unfused(
    component: str, unfused: int, unrouted: list[str], blocks: int, allow_unfused: bool, fused_into: str,
) -> None:
    """UnfusedAttentionError naming the blocks that missed edgevl's attention op (or how many),
    unless the user allowed unfused blocks. `fused_into` says what a fused block becomes."""
    if unfused and not allow_unfused:
        names = ", ".join(unrouted) if unrouted else f"{unfused} of {blocks} blocks"
        raise UnfusedAttentionError(
            f"{component} tower: attention not fused into {fused_into} for: {names}; "
            "route it through edgevl.ops.attention or pass --allow-unfused"
        )
