"""ONNX target: each tower becomes one self-contained `.onnx` file (opset 23, dynamic batch and
sequence), every attention block ONE fused op, verified by ONNX Runtime.

Attention is lowered from edgevl's single custom op (edgevl/ops/attention.py) by a translation
table given to the dynamo exporter, so fusion does not depend on pattern-matching a decomposed
graph: `Attention` (standard, opset 23) by default, `com.microsoft.MultiHeadAttention` for the
"ort" flavour (a graph pass over the standard form).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edgevl.compress.ort_graph import IR_VERSION
from edgevl.errors import ExportError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, quiet, refuse_unfused
from edgevl.models.spec import Component, ModelSpec, TowerSpec
from edgevl.registry import register_exporter

OPSET = 23


@dataclass
class AttentionReport:
    blocks: int
    fused: int
    unfused: int
    unfused_blocks: list[str] = field(default_factory=list)


def _standard_attention(q, k, v, mask, scale: float):  # noqa: ANN001 - onnxscript tracing
    from onnxscript import opset23 as op

    y, _, _, _ = op.Attention(q, k, v, mask, scale=scale)
    return y


def _dynamic_shapes(tower: TowerSpec, static: Optional[dict[str, int]]) -> dict:
    import torch

    static = static or {}
    dims: dict[str, object] = {}
    spec: dict[str, dict[int, object]] = {}
    for sig in tower.inputs:
        axes = {}
        for axis, size in enumerate(sig.shape):
            if isinstance(size, str) and size not in static:
                if size not in dims:
                    dims[size] = torch.export.Dim(size, min=1, max=4096)
                axes[axis] = dims[size]
        spec[sig.name] = axes
    return spec


# Node metadata the dynamo exporter writes with absolute source paths and line numbers: it would
# make the same export differ by where edgevl is installed (and publish the builder's paths).
_SOURCE_LOCATION_KEYS = ("pkg.torch.onnx.stack_trace",)


def strip_source_locations(model: "onnx.ModelProto") -> int:
    """Drop the exporter's source locations from every node, in place; returns how many."""
    removed = 0
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _SOURCE_LOCATION_KEYS]
        removed += len(node.metadata_props) - len(keep)
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return removed


def export_tower_onnx(
    tower: TowerSpec,
    path: Path,
    flavor: str = "standard",
    allow_unfused: bool = False,
    static_shapes: Optional[dict[str, int]] = None,
) -> AttentionReport:
    """Export one tower to a single `.onnx` file at `path` and report attention fusion."""
    import onnx
    import torch

    from edgevl.exporters.onnx_attention import count_fused_attention, lower_attention_to_ort_mha
    from edgevl.ops.attention import attention_blocks, unrouted_blocks

    module = tower.module.eval()
    inputs = tower.examples_at(static_shapes)
    blocks = attention_blocks(module)
    unrouted = unrouted_blocks(module, lambda: module(**inputs))
    try:
        # The dynamo exporter prints progress and a torchvision warning.
        with quiet("torch.onnx"), torch.no_grad():
            program = torch.onnx.export(
                module,
                (),
                kwargs=inputs,
                dynamo=True,
                opset_version=OPSET,
                input_names=tower.input_names,
                output_names=[tower.output.name],
                dynamic_shapes=_dynamic_shapes(tower, static_shapes),
                custom_translation_table={torch.ops.edgevl.attention.default: _standard_attention},
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; surface one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of the {tower.component} tower failed: {first}") from exc
    model = program.model_proto
    model.ir_version = min(model.ir_version, IR_VERSION)
    strip_source_locations(model)
    if flavor == "ort":
        lower_attention_to_ort_mha(model)
    fused = count_fused_attention(model)
    unfused = max(len(blocks) - fused, len(unrouted))
    report = AttentionReport(len(blocks), fused, unfused, unrouted)
    refuse_unfused(tower.component, unfused, unrouted, len(blocks), allow_unfused, "one op")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checked(model, path)
    return report


def pin_static_dims(path: Path, tower: TowerSpec, static: dict[str, int]) -> dict[str, int]:
    """Fix the named dynamic axes of a saved graph's inputs and output to `static` sizes with
    onnxruntime's `make_dim_param_fixed` (the tool behind `make_dynamic_shape_fixed`): the axis's
    symbol becomes the size wherever the graph names it, inner value_info included; an axis with
    no symbol gets the size directly. The graph computes its inner shapes at run time, so it runs
    unchanged. Returns the sizes pinned."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    model = onnx.load(str(path))
    sigs = {sig.name: sig for sig in (*tower.inputs, tower.output)}
    pinned: dict[str, int] = {}
    for value in (*model.graph.input, *model.graph.output):
        sig = sigs.get(value.name)
        if sig is None:
            continue
        for axis, name in enumerate(sig.shape):
            if isinstance(name, str) and name in static:
                dim = value.type.tensor_type.shape.dim[axis]
                if dim.HasField("dim_param"):
                    make_dim_param_fixed(model.graph, dim.dim_param, static[name])
                else:
                    dim.dim_value = static[name]
                pinned[name] = static[name]
    save_checked(model, path)
    return pinned


def save_checked(model: "onnx.ModelProto", path: Path) -> None:
    """Save beside `path`, run the ONNX checker on the saved file, then rename into place: a
    failed check never leaves a file at `path`."""
    import onnx

    tmp = path.with_name(path.name + ".partial")
    onnx.save_model(model, str(tmp))
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)


@register_exporter("onnx")
class OnnxExporter(Exporter):
    name = "onnx"
    requires = ("onnx", "onnxruntime", "onnxscript")
    extra = "onnx"
    precisions = ("fp32", "int8", "int8w", "int4w")
    runtime = "onnxruntime"

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        tower = spec.tower(component)
        suffix = "" if options.precision == "fp32" else f".{options.precision}"
        path = out_dir / f"{component}_encoder{suffix}.onnx"
        fp32_path = path if options.precision == "fp32" else out_dir / f".{component}_encoder.fp32.onnx"
        # int8 via MultiHeadAttention is not offered: ORT's quantizer mistakes ops it does not own.
        # A quantized artifact is calibrated and gated on the dynamic graph (its passes check
        # rewrites on batches of several lengths) and gets its static sizes pinned afterwards.
        pin_later = options.precision != "fp32" and bool(options.static_shapes)
        report = export_tower_onnx(
            tower, fp32_path, options.onnx_flavor, options.allow_unfused,
            None if pin_later else options.static_shapes,
        )
        passes: dict = {"attention_fused": report.fused, "attention_blocks": report.blocks}
        files = [path]
        if options.precision != "fp32":
            from edgevl.compress.quantize import quantize_onnx_artifact

            quant = quantize_onnx_artifact(
                fp32_path, path, spec, component, options.precision, options.calibration, options.max_drop,
                progress=options.progress, cpu_isa=options.cpu_isa, speed_guard=options.speed_guard,
                flavor=options.onnx_flavor,
            )
            fp32_path.unlink(missing_ok=True)
            passes["quantization"] = quant
            if pin_later:
                passes["static_shapes"] = pin_static_dims(path, tower, options.static_shapes or {})
            files += [Path(p) for p in quant.get("files", [])]
        return ExportedArtifact(
            target=self.name,
            precision=options.precision,
            component=component,
            path=path,
            files=files,
            fused_attention=report.fused,
            unfused_attention=report.unfused,
            unfused_blocks=report.unfused_blocks,
            runtime=self.runtime,
            passes=passes,
            notes=[f"onnx flavour: {options.onnx_flavor}"],
        )
