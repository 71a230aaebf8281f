"""PyTorch tower -> `openvino.Model`: converted straight from the module with edgevl's attention
op lowered to plain `F.scaled_dot_product_attention` (`lowered_to_sdpa()`), which OpenVINO's
TorchScript frontend turns into one `ScaledDotProductAttention` op per block; inputs and output
named, dynamic axes kept unless sized. Converting from PyTorch rather than from edgevl's fused
ONNX keeps the `onnx` extra out of the `openvino` one (the comparison of both paths is in
benchmarks/results/openvino_conversion.md)."""

from __future__ import annotations

from typing import Any, Optional

from edgevl.errors import ExportError
from edgevl.exporters.base import quiet
from edgevl.models.spec import TowerSpec

SDPA_OP = "ScaledDotProductAttention"
# NNCF and the TorchScript frontend print progress bars and tracer warnings.
OV_LOGGERS = ("nncf", "torch", "openvino")
_OV_TYPES = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "bool": "boolean"}


def count_sdpa(model: Any) -> int:
    """Number of `ScaledDotProductAttention` ops in an `openvino.Model`."""
    return sum(op.get_type_name() == SDPA_OP for op in model.get_ops())


def _input_spec(tower: TowerSpec) -> list[tuple]:
    import openvino as ov

    spec = []
    for sig in tower.inputs:
        dims = [-1 if isinstance(d, str) else int(d) for d in sig.shape]
        spec.append((sig.name, ov.PartialShape(dims), getattr(ov.Type, _OV_TYPES.get(sig.dtype, sig.dtype))))
    return spec


def static_input_shapes(tower: TowerSpec, static: dict[str, int]) -> dict[str, list[int]]:
    """Named dynamic axes -> sizes, per input; an axis `static` does not name stays dynamic (-1),
    and sizes for axes this tower lacks (`seq` for an image tower) are ignored."""
    return {
        sig.name: [int(static.get(d, -1)) if isinstance(d, str) else int(d) for d in sig.shape]
        for sig in tower.inputs
    }


def convert_tower(tower: TowerSpec, static_shapes: Optional[dict[str, int]] = None) -> Any:
    """PyTorch tower -> `openvino.Model` with named inputs/output, dynamic axes kept unless sized."""
    import openvino as ov
    import torch

    from edgevl.ops.attention import lowered_to_sdpa

    module = tower.module.eval()
    try:
        with quiet(*OV_LOGGERS), lowered_to_sdpa(), torch.no_grad():
            model = ov.convert_model(
                module, example_input=dict(tower.example_inputs), input=_input_spec(tower)
            )
    except Exception as exc:  # the frontends raise many types; surface one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"OpenVINO conversion of the {tower.component} tower failed: {first}") from exc
    if len(model.outputs) != 1:
        raise ExportError(
            f"{tower.component} tower converted to {len(model.outputs)} outputs; a tower returns one tensor"
        )
    # The TorchScript frontend leaves outputs unnamed; runtimes and apps look them up by name.
    model.outputs[0].get_tensor().set_names({tower.output.name})
    for sig, port in zip(tower.inputs, model.inputs):
        port.get_tensor().set_names({sig.name})
    if static_shapes and any(isinstance(d, str) and d in static_shapes for sig in tower.inputs for d in sig.shape):
        model.reshape({name: ov.PartialShape(dims) for name, dims in static_input_shapes(tower, static_shapes).items()})
    return model
