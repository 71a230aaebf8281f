"""OpenVINO target: each tower becomes one IR (`.xml` graph + `.bin` weights) with dynamic batch
and sequence (or static sizes on request, for NPUs), every attention block ONE
`ScaledDotProductAttention` op, verified by OpenVINO's CPU plugin.

Conversion is `openvino_ir`'s job, compression `openvino_quant`'s; this module is the exporter.

Precisions (what each one means for the IR and for the runtime that verifies it):
    fp32   IR weights fp32; inference hint f32 (a CPU may default to bf16 inference).
    fp16   IR weights compressed to fp16; inference hint f32 on the CPU, so fp16 means storage.
    bf16   IR weights compressed to fp16 (bf16 keeps fewer mantissa bits than fp16 storage, so
           fp16 storage loses nothing bf16 inference keeps); inference hint bf16.
    int8   post-training quantization of activations and weights, calibrated on real images /
           captions, the float layers chosen by the accuracy gate, weights in 7 bits unless
           `--cpu-isa vnni`. Towers with MatMuls: `nncf.quantize` (`openvino_quant.quantize_int8`;
           a W8A8Config plan's calibration data, sample count, max_drop, cpu_isa, exclude,
           observer "minmax" and SmoothQuant alpha are applied). Convolutional towers: the
           ONNX target's ConvW8A8Config scheme read by OpenVINO's ONNX frontend, gated on
           OpenVINO (`openvino_quant.quantize_conv_int8`; a ConvW8A8Config plan applies there).
           DynamicW8A8Config and other fields are refused (InputError).
    int8w  weight-only int8 (`nncf.compress_weights`, INT8_ASYM, per output channel).
    int4w  weight-only int4 (INT4_SYM, groups of 128, smaller where a layer's width needs it),
           with NNCF's int8 backup for the embeddings, the last layer and layers no group fits.
           A `quantize_` WeightOnlyConfig plan is refused (InputError): the settings are fixed.
With `--static-shapes` the IR is converted and compressed with dynamic axes (the int8 gate runs
batches of 16) and its input sizes are fixed afterwards.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

from edgevl.errors import ExportError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, quiet, refuse_unfused
from edgevl.exporters.openvino_ir import OV_LOGGERS, SDPA_OP, convert_tower, count_sdpa, static_input_shapes
from edgevl.exporters.openvino_conv import conv_int8_config, quantize_conv_int8
from edgevl.exporters.openvino_quant import (
    INT8_INSTEAD, INT8_PLANS, WEIGHT_ONLY_INSTEAD, Int8Settings, compress_weights, quantize_int8, weight_levels,
)
from edgevl.manifest import ArtifactFacts, Compression
from edgevl.models.spec import Component, ModelSpec, TowerSpec
from edgevl.registry import register_exporter

__all__ = ["INFERENCE_PRECISION", "SDPA_OP", "OpenVinoExporter", "benchmark_command", "count_sdpa", "weight_levels"]

# INFERENCE_PRECISION_HINT the verifying runtime applies, per precision. The quantized IRs run
# their float remainder in f32 too: a bf16 remainder costs int8 accuracy without a speed gain
# (benchmarks/results/openvino_conversion.md).
INFERENCE_PRECISION = {
    "fp32": "f32",
    "fp16": "f32",
    "bf16": "bf16",
    "int8": "f32",
    "int8w": "f32",
    "int4w": "f32",
}
# Precisions whose IR stores float weights as fp16.
_FP16_STORAGE = ("fp16", "bf16")


# What a weight passes through between its constant and the op that reads it (weight-only
# compression adds Convert, Subtract and Multiply: the decompression).
_WEIGHT_PATH = ("Convert", "Reshape", "Transpose", "Subtract", "Multiply")
# Ops with a weight constant, and which of their inputs holds it.
_WEIGHT_INPUT = {"MatMul": 1, "Convolution": 1, "GroupConvolution": 1, "Gather": 0}


def _integer_weight_counts(xml: Path) -> tuple[int, int]:
    """(ops whose weight constant is stored as integers, ops with a weight constant) in an IR."""
    import openvino as ov

    compressed = weighted = 0
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() not in _WEIGHT_INPUT:
            continue
        node, path = op.input_value(_WEIGHT_INPUT[op.get_type_name()]).get_node(), set()
        while node.get_type_name() in _WEIGHT_PATH:
            path.add(node.get_type_name())
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Constant":
            continue
        # An integer table read as it is (a Gather of token positions) holds indices, not weights.
        integer = not node.get_element_type().is_real()
        if integer and "Convert" not in path:
            continue
        weighted += 1
        compressed += integer
    return compressed, weighted


def benchmark_command(xml_name: str, shapes: dict[str, list[int]], precision: str) -> str:
    shape_arg = ",".join(f"{name}[{','.join(str(d) for d in dims)}]" for name, dims in shapes.items())
    parts = ["benchmark_app", "-m", xml_name, "-d", "CPU", "-shape", shape_arg, "-hint", "latency"]
    hint = INFERENCE_PRECISION.get(precision)
    if hint:
        parts += ["-infer_precision", hint]
    return " ".join(shlex.quote(p) for p in parts)


@register_exporter("openvino")
class OpenVinoExporter(Exporter):
    name = "openvino"
    requires = ("openvino",)
    extra = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8", "int8w", "int4w")
    runtime = "openvino"
    precision_requires = {p: ("nncf",) for p in ("int8", "int8w", "int4w")}

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        import openvino as ov

        from edgevl.ops.attention import attention_blocks, unrouted_blocks

        from edgevl.compress.plan import resolve_calibration, tower_plan

        precision = options.precision
        tower = spec.tower(component)
        # A quantize_ plan at this precision: applied (int8) or refused before any work.
        plan = tower_plan(tower, self.name, precision, INT8_PLANS if precision == "int8" else (),
                          INT8_INSTEAD if precision == "int8" else WEIGHT_ONLY_INSTEAD)
        settings = Int8Settings.of(plan, options) if precision == "int8" else None
        module = tower.module.eval()
        blocks = attention_blocks(module)
        unrouted = unrouted_blocks(module, lambda: module(**tower.example_inputs))

        # Compression runs on the dynamic IR (the gate runs batches of 16), sizes are fixed after.
        model = convert_tower(tower)
        fused = count_sdpa(model)
        # OpenVINO's frontend also fuses a plain matmul-softmax-matmul block (a block left on
        # transformers' eager path can still become SDPA), so the IR's count decides; blocks
        # that missed edgevl's op are named when the count falls short.
        unfused = max(len(blocks) - fused, 0)
        unfused_blocks = list(unrouted) if unfused else []
        refuse_unfused(component, unfused, unfused_blocks, len(blocks), options.allow_unfused, f"one {SDPA_OP} op")

        passes: dict[str, Any] = {
            "attention_fused": fused,
            "attention_blocks": len(blocks),
            "conversion": "pytorch (TorchScript frontend, attention lowered to SDPA)",
        }
        if precision == "int8":
            calib = resolve_calibration(options.calibration, plan)
            conv_config = conv_int8_config(tower, plan, options)
            if conv_config is not None:
                model, passes["quantization"] = quantize_conv_int8(model, spec, tower, calib, conv_config,
                                                                   options.progress)
            else:
                model, passes["quantization"] = quantize_int8(model, spec, tower, calib, settings, options.progress)
        elif precision in ("int8w", "int4w"):
            model, passes["quantization"] = compress_weights(model, precision)
        if count_sdpa(model) != fused:
            raise ExportError(
                f"{component} tower: {precision} compression changed the {SDPA_OP} count "
                f"({fused} -> {count_sdpa(model)})"
            )
        if options.static_shapes and any(isinstance(d, str) and d in options.static_shapes
                                         for sig in tower.inputs for d in sig.shape):
            model.reshape({name: ov.PartialShape(dims)
                           for name, dims in static_input_shapes(tower, options.static_shapes).items()})

        suffix = "" if precision == "fp32" else f".{precision}"
        xml = out_dir / f"{component}_encoder{suffix}.xml"
        with quiet(*OV_LOGGERS):
            ov.save_model(model, str(xml), compress_to_fp16=precision in _FP16_STORAGE)

        shapes = self._benchmark_shapes(spec, tower, options.static_shapes)
        bench = out_dir / f"{xml.stem}.benchmark_app.txt"
        bench.write_text(benchmark_command(xml.name, shapes, precision) + "\n")

        hint = INFERENCE_PRECISION[precision]
        notes = [f"benchmark on your device: see {bench.name}"]
        if unrouted and not unfused:
            notes.append(
                "fused by OpenVINO's own pattern matching, not via edgevl's attention op: " + ", ".join(unrouted)
            )
        if options.static_shapes:
            notes.append(
                "static input shapes: "
                + ", ".join(f"{n}{dims}" for n, dims in static_input_shapes(tower, options.static_shapes).items())
            )
        return ExportedArtifact(
            target=self.name,
            precision=precision,
            component=component,
            path=xml,
            files=[xml, xml.with_suffix(".bin"), bench],
            fused_attention=fused,
            unfused_attention=unfused,
            unfused_blocks=unfused_blocks,
            runtime=self.runtime,
            runtime_options={"INFERENCE_PRECISION_HINT": hint} if hint else {},
            passes=passes,
            notes=notes,
        )

    def describe(self, artifact: ExportedArtifact) -> ArtifactFacts:
        """int8: the gate's ranked layers less those it kept float (none when the whole tower
        stayed float); int8w / int4w: the weighted ops of the saved IR whose weights are stored
        as integers, of every weighted op."""
        quant = artifact.passes.get("quantization")
        if not quant:
            return ArtifactFacts()
        if "gate" in quant:
            ranked = int(quant["gate"]["ranked_layers"])
            done = 0 if quant["whole_tower_float"] else ranked - int(quant["float_layer_count"])
            return ArtifactFacts(Compression.from_gate(done, ranked, quant["gate"], artifact.precision))
        return ArtifactFacts(Compression(*_integer_weight_counts(artifact.path)))

    @staticmethod
    def _benchmark_shapes(
        spec: ModelSpec, tower: TowerSpec, static: Optional[dict[str, int]]
    ) -> dict[str, list[int]]:
        sizes = {"batch": 1, "seq": spec.preprocess.context_length}
        sizes.update(static or {})
        return {
            sig.name: [int(sizes.get(d, 1)) if isinstance(d, str) else int(d) for d in sig.shape]
            for sig in tower.inputs
        }
