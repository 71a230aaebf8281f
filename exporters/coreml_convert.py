"""PyTorch tower -> Core ML ML Program (`coremltools.models.MLModel`), iOS 18 target.

The tower is traced with `torch.jit.trace` (coremltools' TorchScript frontend: its `torch.export`
frontend is not tested on x86_64) with edgevl's attention op kept as one node, which
`coreml_ops` converts to ONE `scaled_dot_product_attention` per block. Inputs: the image as a
float tensor `[batch, 3, H, W]`, the text as int32 token ids (and mask) at the context length;
the batch is flexible (`ct.RangeDim`). Shapes other than the batch are fixed by the trace.
With `ImageInput` the image tower takes a Core ML image instead (RGB pixels 0-255), the
preprocessing's normalisation folded into the model.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from edgevl.errors import ExportError
from edgevl.exporters.base import quiet
from edgevl.models.spec import TowerSpec

# coremltools logs per-pass progress and warns about the torch version it was tested with.
CT_LOGGERS = ("coremltools", "torch")
MAX_BATCH = 1024
# coremltools' fp16 pipeline narrows int32 token ids to int16, which wraps ids above 32767
# (CLIP's vocabulary has 49408); edgevl keeps them int32.
_DROPPED_PASSES = ("common::add_int16_cast",)


@contextlib.contextmanager
def silent() -> Iterator[None]:
    """coremltools' loggers and warnings off, and its tqdm progress bars (stderr) dropped: the
    CLI prints edgevl's own progress."""
    with quiet(*CT_LOGGERS), contextlib.redirect_stderr(io.StringIO()):
        yield


@dataclass(frozen=True)
class ImageInput:
    """A Core ML image input that reproduces `(pixel / 255 - mean_c) / std_c`.

    Core ML applies `scale * pixel + bias_c` with ONE scale for the three channels, so the
    per-channel std is split: the image type takes `scale = 1 / (255 * s)` and
    `bias_c = -mean_c / s` with `s` the mean of the stds, and the model multiplies channel c by
    `channel_factor_c = s / std_c` (left out where every factor is 1)."""

    scale: float
    bias: tuple[float, float, float]
    channel_factor: tuple[float, float, float]

    @classmethod
    def from_normalisation(cls, mean: tuple, std: tuple) -> "ImageInput":
        s = float(np.mean(std))
        return cls(scale=1.0 / (255.0 * s), bias=tuple(-float(m) / s for m in mean),
                   channel_factor=tuple(s / float(d) for d in std))

    def to_json(self) -> dict:
        return {"color_layout": "RGB", "pixel_range": [0, 255], "scale": self.scale,
                "bias": list(self.bias), "channel_factor": list(self.channel_factor)}


def _wrapped(tower: TowerSpec, image_input: Optional[ImageInput] = None) -> Any:
    """The tower with positional inputs, token ids taken as int32 (the tower wants int64); with
    `image_input`, the image first multiplied by its per-channel factors."""
    import torch

    names = tower.input_names
    factor = None
    if image_input is not None and any(abs(f - 1.0) > 1e-12 for f in image_input.channel_factor):
        factor = torch.tensor(image_input.channel_factor, dtype=torch.float32).reshape(1, 3, 1, 1)

    class Positional(torch.nn.Module):
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            feeds = {n: (x.long() if x.dtype == torch.int32 else x) for n, x in zip(names, args)}
            if factor is not None:
                feeds[names[0]] = feeds[names[0]] * factor
            return self.module(**feeds)

    return Positional(tower.module.eval()).eval()


def _example(tower: TowerSpec) -> tuple:
    import torch

    return tuple(
        tower.example_inputs[n].to(torch.int32) if tower.example_inputs[n].dtype == torch.int64
        else tower.example_inputs[n].float()
        for n in tower.input_names
    )


def input_types(
    tower: TowerSpec, example: tuple, static_batch: Optional[int] = None, image_input: Optional[ImageInput] = None,
) -> list:
    import coremltools as ct

    types = []
    for sig, x in zip(tower.inputs, example):
        batch: Any = static_batch or ct.RangeDim(lower_bound=1, upper_bound=MAX_BATCH, default=1)
        shape = ct.Shape(shape=(batch,) + tuple(int(d) for d in x.shape[1:]))
        if image_input is not None and tower.component == "image":
            types.append(ct.ImageType(name=sig.name, shape=shape, scale=image_input.scale,
                                      bias=list(image_input.bias), color_layout=ct.colorlayout.RGB))
            continue
        dtype = np.int32 if "int" in str(x.dtype) else np.float32
        types.append(ct.TensorType(name=sig.name, shape=shape, dtype=dtype))
    return types


FP16_PASS = "common::add_fp16_cast"


def pass_pipeline(probe: bool = False) -> Any:
    """coremltools' default pipeline less `_DROPPED_PASSES`. `probe`: only the passes before the
    fp16 pass, so the program's var names are the ones the fp16 pass's op selector sees."""
    import coremltools as ct

    names = ct.PassPipeline.DEFAULT.passes
    if probe:
        names = names[: names.index(FP16_PASS)]
    return ct.PassPipeline(pass_names=[n for n in names if n not in _DROPPED_PASSES], pipeline_name="edgevl")


def convert_tower(
    tower: TowerSpec,
    fp16: bool,
    keep_fp32: Optional[Callable[[Any], bool]] = None,
    static_batch: Optional[int] = None,
    probe: bool = False,
    image_input: Optional[ImageInput] = None,
) -> Any:
    """Trace and convert one tower to an `MLModel`. `fp16`: compute in fp16 (Core ML's default)
    except the ops `keep_fp32(op)` selects; otherwise fp32 throughout. `probe`: return the fp32
    MIL program as it stands when the fp16 pass would run (see `pass_pipeline`), in memory.
    `image_input`: the image tower takes a Core ML image (see `ImageInput`)."""
    import torch

    with silent():  # its import warns about untested torch / scikit-learn versions
        import coremltools as ct

    from edgevl.exporters.coreml_ops import register_attention_converter

    register_attention_converter()
    example = _example(tower)
    if fp16:
        selector = (lambda op: not keep_fp32(op)) if keep_fp32 else (lambda op: True)
        precision = ct.transform.FP16ComputePrecision(op_selector=selector)
    else:
        precision = ct.precision.FLOAT32
    try:
        with silent(), torch.no_grad():
            traced = torch.jit.trace(_wrapped(tower, image_input), example, check_trace=False)
            model = ct.convert(
                traced,
                inputs=input_types(tower, example, static_batch, image_input),
                outputs=[ct.TensorType(name=tower.output.name)],
                convert_to="milinternal" if probe else "mlprogram",
                minimum_deployment_target=ct.target.iOS18,
                compute_precision=precision,
                pass_pipeline=pass_pipeline(probe),
                **({} if probe else {"skip_model_load": True}),
            )
    except Exception as exc:  # the frontend raises many types; surface one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"Core ML conversion of the {tower.component} tower failed: {first}") from exc
    return model


def op_types(model: Any) -> list[str]:
    """Op types of the model's main function, in program order (nested blocks included)."""
    found: list[str] = []

    def walk(block: Any) -> None:
        for op in block.operations:
            found.append(op.op_type)
            for inner in getattr(op, "blocks", []):
                walk(inner)

    walk(model._mil_program.functions["main"])
    return found
