"""OpenVINO target: each tower becomes one IR (`.xml` graph + `.bin` weights) with dynamic batch
and sequence (or static sizes on request, for NPUs), every attention block ONE
`ScaledDotProductAttention` op, verified by OpenVINO's CPU plugin.

Conversion path (measured here, all-MiniLM-L6-v2 text tower, real weights, 2 cores): the IR is
converted straight from the PyTorch module, with edgevl's attention op lowered to plain
`F.scaled_dot_product_attention` (`lowered_to_sdpa()`), which OpenVINO's TorchScript frontend
turns into `ScaledDotProductAttention`. The other path, edgevl's fused ONNX (`export_tower_onnx`)
read by OpenVINO's ONNX frontend, gives the same 6/6 SDPA ops and the same parity (max abs
1.6e-7 vs torch for both, cosine 0.9999999) and latencies within this shared machine's noise
(16 tokens: 16-32 ms vs 24-34 ms; 77 tokens: 52-88 ms vs 65-99 ms, interleaved runs), but
conversion takes 27-34 s instead of 7 s (the dynamo export dominates) and would make the `onnx`
extra a dependency of the `openvino` one. So: from PyTorch.

Precisions (what each one means for the IR and for the runtime that verifies it):
    fp32   IR weights fp32; inference hint f32 (this CPU's default inference precision is bf16).
    fp16   IR weights compressed to fp16; inference hint f32 on the CPU, so fp16 means storage.
    bf16   IR weights compressed to fp16 (bf16 keeps fewer mantissa bits than fp16 storage, so
           the compression costs nothing measurable); inference hint bf16.
    int8   post-training quantization of activations and weights (`nncf.quantize`), calibrated
           on real images / captions; see `_quantize_int8` for the method and its figures.
    int8w  weight-only int8 (`nncf.compress_weights`, INT8_ASYM, per output channel).
    int4w  weight-only int4 (INT4_SYM, groups of 128, smaller where a layer's width needs it),
           with NNCF's int8 backup for the embeddings, the last layer and layers no group fits.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgevl.errors import ExportError, UnfusedAttentionError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions
from edgevl.models.spec import Component, ModelSpec, TowerSpec
from edgevl.registry import register_exporter

SDPA_OP = "ScaledDotProductAttention"

# INFERENCE_PRECISION_HINT the verifying runtime applies, per precision. The quantized IRs run
# their float remainder in f32 too: with this CPU's bf16 default the int8 text tower of the
# default model fell from min cosine 0.984 to 0.978 at no measurable speed gain (19.9 vs 19.7 ms).
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
_OV_TYPES = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "bool": "boolean"}


@contextlib.contextmanager
def _quiet():
    """NNCF and the TorchScript frontend print progress bars and tracer warnings; the CLI's output
    stays ours."""
    loggers = [logging.getLogger(name) for name in ("nncf", "torch", "openvino")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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


def _static_shapes(tower: TowerSpec, static: dict[str, int]) -> dict[str, list[int]]:
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
        with _quiet(), lowered_to_sdpa(), torch.no_grad():
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
        model.reshape({name: ov.PartialShape(dims) for name, dims in _static_shapes(tower, static_shapes).items()})
    return model


# --- calibration -------------------------------------------------------------------------------


def calibration_feeds(spec: ModelSpec, component: Component, calibration: Any = None) -> list[dict[str, np.ndarray]]:
    """Batch-1 feed dicts for calibrating `component`, from the same calibration sets the ONNX
    quantizer uses (`edgevl.calibration.datasets`): None = the bundled real photos and captions,
    a folder of images, a JSON-lines file, or a `CalibrationSet`."""
    from edgevl.calibration.datasets import load_calibration

    return load_calibration(calibration).feeds(spec, component)


# --- compression -------------------------------------------------------------------------------


def _producer(port: Any) -> Any:
    node = port.get_source_output().get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Transpose"):
        node = node.input_value(0).get_node()
    return node


def float_scope(model: Any, transformer: bool, keep_float: Optional[tuple[str, ...]] = None) -> tuple[list[str], list[str]]:
    """(node names, op types) int8 keeps in float.

    Groups: "ffn_down" = MatMuls fed by Gelu (the FFN down-projections, whose inputs carry the
    outlier activations per-tensor int8 cannot hold); "last" = the last MatMul/Convolution (the
    embedding projection or head); "first" = the first Convolution (the stem, fed raw normalised
    pixels); "depthwise" = every GroupConvolution; "early" = the first `EARLY_FLOAT_CONVS`
    convolutions, depthwise or not, in graph order.
    """
    if keep_float is None:
        keep_float = INT8_KEEP_FLOAT["transformer" if transformer else "cnn"]
    ops = list(model.get_ordered_ops())
    names: list[str] = []
    types: list[str] = []
    matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    if "ffn_down" in keep_float:
        names += [op.get_friendly_name() for op in matmuls if _producer(op.inputs()[0]).get_type_name() == "Gelu"]
    if "last" in keep_float:
        weighted = matmuls if transformer else convs
        if weighted:
            names.append(weighted[-1].get_friendly_name())
    if "first" in keep_float and convs:
        names.append(convs[0].get_friendly_name())
    if "depthwise" in keep_float and any(op.get_type_name() == "GroupConvolution" for op in ops):
        types.append("GroupConvolution")
    if "early" in keep_float:
        names += [op.get_friendly_name() for op in ops
                  if op.get_type_name() in ("Convolution", "GroupConvolution")][:EARLY_FLOAT_CONVS]
    return list(dict.fromkeys(names)), types


# What int8 keeps float, by tower kind. Measured on the default model (EfficientNet-Lite0 and
# all-MiniLM-L6-v2 + projection, real weights), calibrated on the bundled calibration set (the 57
# photo views; the 19 captions plus 32 everyday captions, label prompts left out) and judged on
# the parity set; min cosine to the reference (f32 hint), tie-aware top-1 agreement:
#   text  TRANSFORMER, all MatMuls int8          0.970  0.947
#         ... FFN down-projections float         0.977  0.965
#         ... FFN down + last float (chosen)     0.9953 0.983
#         model_type=None (CNN defaults)         0.57 on MiniLM alone (quantizes attention/LN inputs)
#   image NNCF defaults, all convs int8          0.936  0.947
#         (mixed preset 0.905; full bias correction 0.964, 2.3x the calibration time)
#         ... depthwise float                    0.966  0.930
#         ... depthwise + first + last float     0.9933 0.895
#         ... first 3 / 5 / 9 / 17 convs float   0.982 / 0.9895 / 0.9926 / 0.9931,
#                                                0.930 / 0.930 / 0.947 / 0.965
#   chosen: first 9 float. The early convs are where this tower is sensitive (quantizing the stem
#   alone costs min cosine 0.57 on ORT, each of the 12th to 24th conv 0.998 or better), so a float
#   prefix buys the cosine bar at less latency than keeping every depthwise conv float (int8/fp32
#   0.69 vs 0.76 in the same run: benchmarks/results/openvino_int8.md).
# Image agreement stays below 0.98 for every variant: the reference's top-1/top-2 margins go
# down to 5e-5 on out-of-domain photos (see benchmarks/results/openvino_int8.md).
EARLY_FLOAT_CONVS = 9
INT8_KEEP_FLOAT: dict[str, tuple[str, ...]] = {
    "transformer": ("ffn_down", "last"),
    "cnn": ("early",),
}


def _quantize_int8(
    model: Any, tower: TowerSpec, samples: list[dict], keep_float: Optional[tuple[str, ...]] = None
) -> tuple[Any, dict]:
    """Static int8 (activations and weights) with NNCF, calibrated on `samples`.

    Towers with attention blocks use `ModelType.TRANSFORMER` (SmoothQuant on the MatMuls,
    attention and normalisation inputs kept float): on all-MiniLM-L6-v2 alone, NNCF's CNN defaults
    gave min cosine 0.570, TRANSFORMER 0.9965. Convolutional towers use NNCF's defaults. The
    layers in `float_scope` stay float (see INT8_KEEP_FLOAT for the figures).
    """
    import nncf

    from edgevl.ops.attention import attention_blocks

    transformer = bool(attention_blocks(tower.module))
    names, types = float_scope(model, transformer, keep_float)
    kwargs: dict[str, Any] = {}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if names or types:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, types=types, validate=False)
    with _quiet():
        quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **kwargs)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return quantized, {
        "method": "nncf.quantize",
        "model_type": "transformer" if transformer else "default",
        "calibration_samples": len(samples),
        "fake_quantize": fq,
        "float_layers": len(names),
        "float_op_types": types,
    }


def _compress_weights(model: Any, precision: str) -> tuple[Any, dict]:
    import nncf

    if precision == "int8w":
        with _quiet():
            out = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return out, {"method": "nncf.compress_weights", "mode": "int8_asym"}
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    # Groups of 128 along the input dim; a layer whose width 128 does not divide gets the largest
    # group (>= 16) that does, and one with no such group keeps NNCF's int8 backup.
    advanced = AdvancedCompressionParameters(
        group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16
    )
    with _quiet():
        out = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0,
            advanced_parameters=advanced,
        )
    return out, {"method": "nncf.compress_weights", "mode": "int4_sym", "group_size": 128,
                 "group_size_fallback": "adjust (min 16), else int8"}


# --- exporter ----------------------------------------------------------------------------------


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

        precision = options.precision
        tower = spec.tower(component)
        module = tower.module.eval()
        blocks = attention_blocks(module)
        unrouted = unrouted_blocks(module, lambda: module(**tower.example_inputs))

        model = convert_tower(tower, options.static_shapes)
        fused = count_sdpa(model)
        # OpenVINO's frontend also fuses a plain matmul-softmax-matmul block (measured: a CLIP
        # block left on transformers' eager path still became SDPA), so the IR's count decides;
        # blocks that missed edgevl's op are named when the count falls short.
        unfused = max(len(blocks) - fused, 0)
        unfused_blocks = list(unrouted) if unfused else []
        if unfused and not options.allow_unfused:
            names = ", ".join(unfused_blocks) if unfused_blocks else f"{unfused} of {len(blocks)} blocks"
            raise UnfusedAttentionError(
                f"{component} tower: attention not fused into one {SDPA_OP} op for: {names}; "
                "route it through edgevl.ops.attention or pass --allow-unfused"
            )

        passes: dict[str, Any] = {
            "attention_fused": fused,
            "attention_blocks": len(blocks),
            "conversion": "pytorch (TorchScript frontend, attention lowered to SDPA)",
        }
        if precision == "int8":
            samples = calibration_feeds(spec, component, options.calibration)
            model, passes["quantization"] = _quantize_int8(model, tower, samples)
        elif precision in ("int8w", "int4w"):
            model, passes["quantization"] = _compress_weights(model, precision)
        if count_sdpa(model) != fused:
            raise ExportError(
                f"{component} tower: {precision} compression changed the {SDPA_OP} count "
                f"({fused} -> {count_sdpa(model)})"
            )

        suffix = "" if precision == "fp32" else f".{precision}"
        xml = out_dir / f"{component}_encoder{suffix}.xml"
        with _quiet():
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
                + ", ".join(f"{n}{dims}" for n, dims in _static_shapes(tower, options.static_shapes).items())
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
