"""OpenVINO int8 for convolutional towers: the ONNX target's `ConvW8A8Config` scheme read into an
IR by OpenVINO's ONNX frontend, gated on OpenVINO's CPU plugin (`quantize_conv_int8`)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from edgevl.compress.config import ConvW8A8Config
from edgevl.compress.plan import Plan
from edgevl.errors import InputError
from edgevl.exporters.base import ExportOptions, quiet
from edgevl.exporters.openvino_ir import OV_LOGGERS
from edgevl.exporters.openvino_quant import compiled_run, weight_levels
from edgevl.models.spec import ModelSpec, TowerSpec


def ir_from_onnx(model: "object") -> Any:
    """An in-memory ONNX graph as an OpenVINO model (OpenVINO's ONNX frontend; a Q/DQ pair
    becomes a FakeQuantize the CPU plugin runs as int8)."""
    import io

    import openvino as ov

    with quiet(*OV_LOGGERS):
        return ov.convert_model(io.BytesIO(model.SerializeToString()))


def is_conv_module(module: Any) -> bool:
    """A tower whose weighted layers are all convolutions (no Linear, no attention)."""
    import torch

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return bool(layers) and all(isinstance(m, torch.nn.Conv2d) for m in layers)


def conv_int8_config(tower: TowerSpec, plan: Optional[Plan], options: ExportOptions) -> Optional[ConvW8A8Config]:
    """The ConvW8A8Config `quantize_conv_int8` applies to a convolutional tower (the plan's, or
    the command line's max_drop and cpu_isa), or None: the tower goes to NNCF."""
    if not is_conv_module(tower.module):
        return None
    if plan is None:
        return ConvW8A8Config(max_drop=options.max_drop, cpu_isa=options.cpu_isa)
    if not isinstance(plan.config, ConvW8A8Config):
        return None
    if plan.config.speed_guard:
        raise InputError(
            f"target openvino cannot apply speed_guard of quantize_(ConvW8A8Config) to the {tower.component} "
            "tower: it times ONNX Runtime, not OpenVINO; drop speed_guard or export the tower to onnx"
        )
    return plan.config


def quantize_conv_int8(
    model: Any, spec: ModelSpec, tower: TowerSpec, calib: Any, config: ConvW8A8Config,
    progress: Optional[Callable[[str], None]] = None,
) -> tuple[Any, dict]:
    """Static int8 for a convolutional tower: the ONNX target's `ConvW8A8Config` scheme
    (cross-layer equalization, bias correction, ONNX Runtime's quantizer placing Q/DQ around
    every conv and residual add, a float prefix chosen by the accuracy gate), read into an IR by
    OpenVINO's ONNX frontend. The gate runs every candidate on OpenVINO's CPU plugin against the
    fp32 IR `model`, so it judges what the artifact executes.

    NNCF's own static quantization of such a graph also quantizes activations no conv reads
    (the pooled features, the residual adds' outputs), which on EfficientNet-Lite0 left almost
    every conv float (measured: benchmarks/RESULTS.md).
    """
    import shutil
    import tempfile
    from pathlib import Path

    import onnx

    from edgevl.compress.gate import gate_cosine_floor, gate_data
    from edgevl.compress.quantize import quantize_model
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.tolerances import tolerance_for

    names = [sig.name for sig in tower.inputs]
    work = Path(tempfile.mkdtemp(prefix="edgevl-ovconv-"))
    try:
        export_tower_onnx(tower, work / "float.onnx")
        fp32 = onnx.load(str(work / "float.onnx"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    feeds = calib.feeds(spec, tower.component, limit=config.calib_limit)
    parity_floor = tolerance_for("openvino", "int8").cosine_min
    gate = gate_data(spec, tower.component, compiled_run(model, names), parity_floor)
    qmodel, recipe, info = quantize_model(
        fp32, config, feeds, tower.component, gate, gate_cosine_floor(parity_floor), calib.describe(), progress,
        runner=lambda candidate: compiled_run(ir_from_onnx(candidate), names),
    )
    quantized = ir_from_onnx(qmodel)
    levels = weight_levels(quantized)
    passes = dict(info["passes"])
    report = passes.pop("gate")
    return quantized, {
        "method": "onnxruntime.quantization.quantize_static (QDQ), read by OpenVINO's ONNX frontend",
        "config": config.to_json(),
        "model_type": "convolutional",
        "calibration": calib.describe(),
        "calibration_samples": len(feeds),
        "cpu_isa": config.cpu_isa,
        "weight_levels_max": max(levels.values(), default=0),
        "int8_layers": len(levels),
        "float_layers": {name: {"why": why} for name, why in recipe.float_layers.items()},
        "float_layer_count": len(recipe.float_layers),
        "excluded_layers": {},
        "whole_tower_float": not recipe.layers,
        "passes": passes,
        "gate": report,
    }
