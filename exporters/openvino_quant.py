"""OpenVINO IR compression with NNCF: static int8 through the shared accuracy gate
(`quantize_int8`, towers with MatMuls; convolutional towers: `openvino_conv`), weight-only int8 /
int4 (`compress_weights`), and what they need: calibration feeds, the gate's layer ranking, a
compiled-model runner and the int8 weight levels of an IR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgevl.compress.config import ConvW8A8Config, SmoothQuantConfig, W8A8Config
from edgevl.compress.plan import Plan, unsupported_fields
from edgevl.errors import InputError
from edgevl.exporters.base import ExportOptions, quiet
from edgevl.exporters.openvino_ir import OV_LOGGERS
from edgevl.models.spec import ModelSpec, TowerSpec

# The `quantize_` configs OpenVINO int8 applies (NNCF static quantization: int8 weights per
# output channel, symmetric; uint8 activations per tensor, calibrated) and the fields of each
# it honours; any other field off its default is refused.
INT8_PLANS = (W8A8Config, ConvW8A8Config)
_APPLIED_FIELDS = ("max_drop", "cpu_isa", "calib_limit", "exclude", "smoothquant")  # observer: minmax only
INT8_INSTEAD = ("OpenVINO int8 is NNCF's static quantization (activations calibrated ahead, never "
                "quantized at run time); plan one of those, or export the tower to onnx")
WEIGHT_ONLY_INSTEAD = ("its int8w and int4w are NNCF's compress_weights at fixed settings (int8w INT8_ASYM "
                       "per output channel, int4w INT4_SYM in groups of 128); export without quantize_, or to onnx")


# SmoothQuant alpha on the MatMuls of a transformer tower when no plan sets one. NNCF's own
# default (0.95) moves nearly all of an activation's range onto the weights; 0.8 kept the default
# text tower closest to float with every layer int8 on the gate and calibration splits (figures in
# docs/compression-and-gate.md and benchmarks/results/smoothquant_alpha.md).
TRANSFORMER_SMOOTH_ALPHA = 0.8


@dataclass(frozen=True)
class Int8Settings:
    """What OpenVINO int8 does for one tower: from the command line's options, or from a
    `quantize_` plan (W8A8Config / ConvW8A8Config), whose fields then win as on the ONNX target."""

    max_drop: float
    cpu_isa: str
    calib_limit: Optional[int] = None  # None: every calibration sample
    exclude: tuple[str, ...] = ()  # layer-name substrings kept float
    mixed_preset: bool = False  # uint8 asymmetric activations everywhere (NNCF's MIXED preset)
    minmax_ranges: bool = False  # activation ranges from the calibration set's min and max
    smooth_alpha: Optional[float] = None  # SmoothQuant alpha on MatMuls (-1: off; None: NNCF's)
    config: Optional[dict] = None  # the plan's config, for the manifest

    @classmethod
    def of(cls, plan: Optional[Plan], options: ExportOptions) -> "Int8Settings":
        if plan is None:
            return cls(options.max_drop, options.cpu_isa, smooth_alpha=TRANSFORMER_SMOOTH_ALPHA)
        config = plan.config
        bad = unsupported_fields(config, _APPLIED_FIELDS)
        sq = getattr(config, "smoothquant", None)
        if sq is not None and (sq.alpha_search or sq.producers != SmoothQuantConfig().producers):
            bad.append("smoothquant.alpha_search/producers (NNCF applies one alpha to the MatMuls it chooses)")
        if bad:
            raise InputError(
                f"target openvino cannot apply {', '.join(bad)} of quantize_({type(config).__name__}): "
                f"NNCF takes {', '.join(f for f in _APPLIED_FIELDS if hasattr(config, f))} of it"
                f"{' (observer: minmax only)' if hasattr(config, 'observer') else ''}; "
                "drop the others or export the tower to onnx"
            )
        alpha = None
        if isinstance(config, W8A8Config):
            alpha = -1.0 if sq is None else float(sq.alpha)
        return cls(config.max_drop, config.cpu_isa, config.calib_limit, tuple(getattr(config, "exclude", ())),
                   mixed_preset=True, minmax_ranges=isinstance(config, W8A8Config), smooth_alpha=alpha,
                   config=config.to_json())


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


def _in_numbered_block(friendly_name: str) -> bool:
    """Whether an op converted from PyTorch sits in a repeated encoder block: its module path
    (OpenVINO keeps it in the friendly name, `__module.encoder.layers.3.mlp...`) has a numeric
    part, as every ModuleList entry does."""
    path = friendly_name.split("/", 1)[0]
    return any(part.isdigit() for part in path.split("."))


def rank_layers(model: Any, transformer: bool) -> list[tuple[str, str]]:
    """The order in which the accuracy gate keeps layers float, with the reason for each rank;
    computed once from the float graph.

    Convolutional towers: every convolution, depthwise included, in depth order (a float prefix:
    per-layer sensitivity of a CNN falls with depth, the stem being the most sensitive).
    Transformer towers: a ViT's patch-embedding convolution first (it reads raw pixels and its
    error reaches every token), then the FFN down-projections (fed by Gelu, their inputs carry
    the outlier channels per-tensor int8 cannot hold; measured the largest share of the error
    on the default text tower, docs/compression-and-gate.md), then the tail outside the
    numbered encoder blocks (projection, attention-pooling head, text head: they write the
    embedding the parity check compares), then the attention ops (NNCF quantizes their Q and K
    inputs), then the rest in graph order.
    """
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    if not transformer:
        return [(op.get_friendly_name(), f"convolution {i + 1} of {len(convs)} in depth order "
                 "(the earliest convolutions are the most sensitive)") for i, op in enumerate(convs)]
    matmuls = weight_matmuls(model)
    ranked = [(op.get_friendly_name(), "patch-embedding convolution (reads raw pixels)") for op in convs]
    attention = [op for op in model.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    rankable = {op.get_friendly_name() for op in (*matmuls, *attention)}
    ranked += [(op.get_friendly_name(), "FFN down-projection (input after Gelu carries outlier channels)")
               for op in matmuls if _producer(op.inputs()[0]).get_type_name() == "Gelu"]
    ranked += [(op.get_friendly_name(), "head or projection after the encoder blocks (writes the embedding)")
               for op in model.get_ordered_ops() if op.get_friendly_name() in rankable
               and not _in_numbered_block(op.get_friendly_name())]
    ranked += [(op.get_friendly_name(), "attention (int8 Q and K inputs: per-tensor scales over every head)")
               for op in attention]
    ranked += [(op.get_friendly_name(), "weighted MatMul, graph order") for op in matmuls]
    first_reason: dict[str, str] = {}
    for name, why in ranked:  # a layer keeps its first (highest) rank
        first_reason.setdefault(name, why)
    return list(first_reason.items())


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


def quantize_int8(
    model: Any, spec: ModelSpec, tower: TowerSpec, calib: Any, settings: Int8Settings,
    progress: Optional[Callable[[str], None]] = None,
) -> tuple[Any, dict]:
    """Static int8 (activations and weights) with NNCF, calibrated on the calibration set
    `calib` (`compress.plan.resolve_calibration`), through the accuracy gate
    (`edgevl/compress/gate.py`): the layers of `rank_layers` are kept float in that order,
    fewest first, until the IR's outputs on the gate data match the fp32 IR's within the
    tolerance table's cosine floor and `max_drop` of zero-shot agreement.

    Towers with attention blocks use `ModelType.TRANSFORMER` (SmoothQuant on the MatMuls,
    attention and normalisation inputs kept float); convolutional towers NNCF's defaults.
    `cpu_isa` "any" quantizes every weight to 7 bits (NNCF's overflow fix): CPUs without VNNI
    add u8 x s8 products in pairs into int16 with saturation, and 7-bit weights keep every pair
    sum in range, so the IR computes the same on every x86 CPU; "vnni" uses the full 8 bits.
    A `quantize_` plan (`Int8Settings.of`) also sets the calibration sample count, the layers
    kept float (`exclude`), uint8 activations (NNCF's MIXED preset) and, for W8A8Config,
    min-max activation ranges and the SmoothQuant alpha (None: SmoothQuant off).
    """
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from edgevl.compress.gate import gate_cosine_floor, gate_data, run_gate
    from edgevl.ops.attention import attention_blocks
    from edgevl.tolerances import tolerance_for

    samples = calib.feeds(spec, tower.component, limit=settings.calib_limit)
    transformer = bool(attention_blocks(tower.module))
    ranked = rank_layers(model, transformer)
    excluded = {name: "excluded by the quantize_ config (exclude)" for name, _ in ranked
                if any(part in name for part in settings.exclude)}
    ranked = [(name, why) for name, why in ranked if name not in excluded]
    why = dict(ranked)
    names = [sig.name for sig in tower.inputs]
    overflow_fix = OverflowFix.ENABLE if settings.cpu_isa == "any" else OverflowFix.DISABLE
    advanced: dict[str, Any] = {"overflow_fix": overflow_fix}
    if transformer or settings.minmax_ranges:
        # Activation ranges from the calibration set's extremes: NNCF's default averages
        # per-sample ranges, which clips the held-out photos' outlier tokens in ViT and text towers.
        advanced["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    if settings.smooth_alpha is not None:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=settings.smooth_alpha)
    kwargs: dict[str, Any] = {"advanced_parameters": AdvancedQuantizationParameters(**advanced)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if settings.mixed_preset:
        kwargs["preset"] = nncf.QuantizationPreset.MIXED

    def build(float_layers: list[str]) -> Any:
        ignored = [*excluded, *float_layers]
        scope = {"ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)} if ignored else {}
        with quiet(*OV_LOGGERS):
            return nncf.quantize(model.clone(), nncf.Dataset(samples), subset_size=len(samples), **kwargs, **scope)

    parity_floor = tolerance_for("openvino", "int8").cosine_min
    gate = gate_data(spec, tower.component, compiled_run(model, names), parity_floor)
    # NNCF also quantizes activations outside the ranked layers (residual adds, pooling), so
    # the unquantized IR is the last candidate.
    result = run_gate(
        [name for name, _ in ranked], build, lambda m: compiled_run(m, names), gate,
        gate_cosine_floor(parity_floor), settings.max_drop, tower.component,
        lambda name, rank: f"kept float by the accuracy gate (rank {rank}: {why[name]})",
        progress, whole_float=model.clone,
    )
    quantized = result.model
    levels = weight_levels(quantized)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return quantized, {
        "method": "nncf.quantize",
        "config": settings.config,
        "model_type": "transformer" if transformer else "default",
        "calibration": calib.describe(),
        "calibration_samples": len(samples),
        "cpu_isa": settings.cpu_isa,
        "overflow_fix": str(overflow_fix.value),
        "preset": "mixed" if settings.mixed_preset else "NNCF default",
        "activation_ranges": ("min-max over the calibration set" if transformer or settings.minmax_ranges
                              else "NNCF default"),
        "smooth_quant_alpha": settings.smooth_alpha,
        "weight_levels_max": max(levels.values(), default=0),
        "fake_quantize": fq,
        "float_layers": {name: {"why": reason} for name, reason in result.float_layers.items()},
        "float_layer_count": len(result.float_layers),
        "excluded_layers": {name: {"why": reason} for name, reason in excluded.items()},
        "whole_tower_float": result.whole_tower_float,
        "gate": result.report,
    }


def compress_weights(model: Any, precision: str) -> tuple[Any, dict]:
    import nncf

    if precision == "int8w":
        with quiet(*OV_LOGGERS):
            out = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return out, {"method": "nncf.compress_weights", "mode": "int8_asym"}
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    # Groups of 128 along the input dim; a layer whose width 128 does not divide gets the largest
    # group (>= 16) that does, and one with no such group keeps NNCF's int8 backup.
    advanced = AdvancedCompressionParameters(
        group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=16
    )
    with quiet(*OV_LOGGERS):
        out = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0,
            advanced_parameters=advanced,
        )
    return out, {"method": "nncf.compress_weights", "mode": "int4_sym", "group_size": 128,
                 "group_size_fallback": "adjust (min 16), else int8"}
