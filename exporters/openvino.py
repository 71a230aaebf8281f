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
           on real images / captions, the float layers chosen by the accuracy gate, weights in
           7 bits unless `--cpu-isa vnni`; see `_quantize_int8`.
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
from typing import Any, Callable, Optional

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


def weight_matmuls(model: Any) -> list[Any]:
    """MatMuls whose second input is a constant weight (what NNCF quantizes), in graph order."""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            out.append(op)
    return out


def rank_layers(model: Any, transformer: bool) -> list[tuple[str, str]]:
    """The order in which the accuracy gate keeps layers float, with the reason for each rank;
    computed once from the float graph.

    Convolutional towers: every convolution, depthwise included, in depth order (a float prefix:
    per-layer sensitivity of a CNN falls with depth, the stem being the most sensitive).
    Transformer towers: the weighted MatMuls, FFN down-projections first (fed by Gelu, their
    inputs carry the outlier channels per-tensor int8 cannot hold), then the last projection
    (the embedding the parity check compares), then the rest in graph order.
    """
    if not transformer:
        convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
        return [(op.get_friendly_name(), f"convolution {i + 1} of {len(convs)} in depth order "
                 "(the earliest convolutions are the most sensitive)") for i, op in enumerate(convs)]
    matmuls = weight_matmuls(model)
    down = [op for op in matmuls if _producer(op.inputs()[0]).get_type_name() == "Gelu"]
    ranked = [(op.get_friendly_name(), "FFN down-projection (input after Gelu carries outlier channels)")
              for op in down]
    if matmuls and matmuls[-1] not in down:
        ranked.append((matmuls[-1].get_friendly_name(), "last projection (writes the embedding)"))
    seen = {name for name, _ in ranked}
    ranked += [(op.get_friendly_name(), "weighted MatMul, graph order") for op in matmuls
               if op.get_friendly_name() not in seen]
    return ranked


def compiled_run(model: Any, input_names: list[str]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """feeds -> the model's one output, on OpenVINO's CPU plugin in f32 (as the verifying runtime
    runs the int8 IRs' float remainder)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    dtypes = [port.get_element_type().to_dtype() for port in model.inputs]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        inputs = [np.ascontiguousarray(np.asarray(feeds[n]).astype(t, copy=False)) for n, t in zip(input_names, dtypes)]
        return np.array(request.infer(inputs)[compiled.outputs[0]], copy=True)

    return run


DOT_PRODUCT_OPS = ("MatMul", "Convolution", "GroupConvolution")


def _weight_consumer(node: Any) -> Any:
    """The op a compressed weight constant feeds, past its dequantization (Convert, Subtract,
    Multiply) and layout ops."""
    for _ in range(8):
        users = [t.get_node() for t in node.output(0).get_target_inputs()]
        if len(users) != 1:
            return None
        node = users[0]
        if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            return node
    return None


def weight_levels(model: Any) -> dict[str, int]:
    """The int8 levels the weights of each quantized dot-product layer (MatMul, convolution) use:
    layer -> max |level|. Reads the compressed int8 weight constants (Constant i8 -> Convert ->
    Multiply -> the layer) and, where weights are still behind a FakeQuantize, the levels that
    FakeQuantize maps them to. Int8 embedding tables (read by Gather, no dot product) are not
    counted."""
    levels: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant" and op.get_element_type().get_type_name() == "i8":
            consumer = _weight_consumer(op)
            if consumer is not None and consumer.get_type_name() in DOT_PRODUCT_OPS:
                values = op.get_data().astype(np.int32)
                levels[consumer.get_friendly_name()] = int(np.abs(values).max()) if values.size else 0
        elif kind == "FakeQuantize" and op.input_value(0).get_node().get_type_name() == "Constant":
            consumer = _weight_consumer(op)
            if consumer is None or consumer.get_type_name() not in DOT_PRODUCT_OPS:
                continue
            w = op.input_value(0).get_node().get_data().astype(np.float64)
            lo, hi = (op.input_value(i).get_node().get_data().astype(np.float64) for i in (1, 2))
            n = int(op.get_attributes()["levels"])
            span = np.where(hi - lo == 0, 1.0, hi - lo)
            q = np.round((np.clip(w, lo, hi) - lo) / span * (n - 1)) - (n - 1) / 2
            levels[consumer.get_friendly_name()] = int(np.ceil(np.abs(q).max()))
    return levels


def _quantize_int8(
    model: Any, spec: ModelSpec, tower: TowerSpec, samples: list[dict], options: ExportOptions
) -> tuple[Any, dict]:
    """Static int8 (activations and weights) with NNCF, calibrated on `samples`, through the
    accuracy gate (`edgevl/compress/gate.py`): the layers of `rank_layers` are kept float
    in that order, fewest first, until the IR's outputs on the gate data match the fp32 IR's
    within the tolerance table's cosine floor and `--max-drop` of zero-shot agreement.

    Towers with attention blocks use `ModelType.TRANSFORMER` (SmoothQuant on the MatMuls,
    attention and normalisation inputs kept float); convolutional towers NNCF's defaults.
    `--cpu-isa any` quantizes every weight to 7 bits (NNCF's overflow fix): CPUs without VNNI
    add u8 x s8 products in pairs into int16 with saturation, and 7-bit weights keep every pair
    sum in range, so the IR computes the same on every x86 CPU; `vnni` uses the full 8 bits.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from edgevl.compress.gate import gate_cosine_floor, gate_data, run_gate
    from edgevl.ops.attention import attention_blocks
    from edgevl.tolerances import tolerance_for

    transformer = bool(attention_blocks(tower.module))
    ranked = rank_layers(model, transformer)
    why = dict(ranked)
    names = [sig.name for sig in tower.inputs]
    overflow_fix = OverflowFix.ENABLE if options.cpu_isa == "any" else OverflowFix.DISABLE
    kwargs: dict[str, Any] = {"advanced_parameters": AdvancedQuantizationParameters(overflow_fix=overflow_fix)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER

    def build(float_layers: list[str]) -> Any:
        scope = {"ignored_scope": nncf.IgnoredScope(names=list(float_layers), validate=False)} if float_layers else {}
        with _quiet():
            return nncf.quantize(model.clone(), nncf.Dataset(samples), subset_size=len(samples), **kwargs, **scope)

    gate = gate_data(spec, tower.component, compiled_run(model, names))
    # NNCF also quantizes activations outside the ranked layers (residual adds, pooling), so
    # the unquantized IR is the last candidate.
    result = run_gate(
        [name for name, _ in ranked], build, lambda m: compiled_run(m, names), gate,
        gate_cosine_floor(tolerance_for("openvino", "int8").cosine_min), options.max_drop, tower.component,
        lambda name, rank: f"kept float by the accuracy gate (rank {rank}: {why[name]})",
        options.progress, whole_float=model.clone,
    )
    quantized = result.model
    levels = weight_levels(quantized)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return quantized, {
        "method": "nncf.quantize",
        "model_type": "transformer" if transformer else "default",
        "calibration_samples": len(samples),
        "cpu_isa": options.cpu_isa,
        "overflow_fix": str(overflow_fix.value),
        "weight_levels_max": max(levels.values(), default=0),
        "fake_quantize": fq,
        "float_layers": {name: {"why": reason} for name, reason in result.float_layers.items()},
        "float_layer_count": len(result.float_layers),
        "whole_tower_float": result.whole_tower_float,
        "gate": result.report,
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
            model, passes["quantization"] = _quantize_int8(model, spec, tower, samples, options)
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
