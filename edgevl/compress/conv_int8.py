"""Static int8 for convolutional towers on ONNX Runtime (`ConvW8A8Config`), gated on accuracy.
The float graph is the one `edgevl.compress.qdq.prepare` gives; ONNX Runtime's own static
quantizer places the Q/DQ pairs (it knows which ops its int8 kernels fuse: Conv, the ReLU6 Clip
folded into the output range, residual Add), calibrated on the user's images with min-max
ranges. Before that the graph is conditioned for int8 (`edgevl.compress.equalize`, measured in
docs/compression-and-gate.md): linear conv -> conv pairs are range-equalized, which is exact in
float, and each candidate's int8 convs get bias correction for the mean shift their quantized
weights and inputs cause. The scales it chose are read back into edgevl's recipe, so the same file describes this
graph as it does the MatMul towers'. The whole-tower speed guard is opt-in.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgevl.compress.config import ConvW8A8Config, weight_qmax
from edgevl.compress.equalize import correct_bias, equalize, input_means
from edgevl.compress.gate import gate_loop
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import layer_paths, producers, quiet_ort_quantizer
from edgevl.compress.recipe import LayerRecipe, QuantRecipe
from edgevl.compress.speed_guard import whole_graph_speed


def conv_nodes(model: "object") -> list[str]:
    """Names of the Conv nodes with constant weights, in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits]


def is_conv_tower(model: "object") -> bool:
    """A tower whose weighted layers are convolutions (no constant-weight MatMul/Gemm)."""
    inits = {i.name for i in model.graph.initializer}
    linear = any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits for n in model.graph.node)
    return bool(conv_nodes(model)) and not linear


def _prefix(model: "object", convs: list[str], k: int) -> list[str]:
    """Every node before the (k+1)-th conv: the float part when k convs stay float. The Clips
    and Adds between them stay float too, so no int8 island is left inside the float prefix: a
    residual Add after the k-th conv joins two float tensors, and quantizing it there re-rounds
    both inputs to uint8 for nothing (measured on the default model: docs/compression-and-gate.md)."""
    if k == 0:
        return []
    names = [n.name for n in model.graph.node]
    return names[: names.index(convs[k])] if k < len(convs) else names


def _recipe_layers(qmodel: "object", convs: list[str]) -> dict[str, LayerRecipe]:
    """Read the scales ORT's quantizer chose back out of the Q/DQ graph, per quantized conv."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    made_by = producers(qmodel)
    layers = {}
    for node in qmodel.graph.node:
        if node.name not in convs or node.op_type != "Conv":
            continue
        x_dq, w_dq = made_by.get(node.input[0]), made_by.get(node.input[1])
        if x_dq is None or w_dq is None or {x_dq.op_type, w_dq.op_type} != {"DequantizeLinear"}:
            continue  # not fed by Q/DQ on both inputs: this conv stayed float
        x_q = made_by.get(x_dq.input[0])
        act_src = x_q.input[0] if x_q is not None and x_q.op_type == "QuantizeLinear" else x_dq.input[0]
        scale, zp = inits[x_dq.input[1]], inits[x_dq.input[2]]
        lo, hi = 0, 255
        act = {"scale": float(scale), "zero_point": int(zp), "qmin": lo, "qmax": hi,
               "range": [float((lo - int(zp)) * scale), float((hi - int(zp)) * scale)], "observer": "minmax"}
        w_scales = np.atleast_1d(inits[w_dq.input[1]])
        weight = w_dq.input[0]
        layers[node.name] = LayerRecipe(
            node.name, weight, act_src, act,
            {"axis": 0, "bits": 8, "symmetric": True, "scales": [float(s) for s in w_scales]},
        )
    return layers


@register_handler(ConvW8A8Config)
def _conv_w8a8(ctx: QuantContext, cfg: ConvW8A8Config) -> tuple["object", dict]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgevl.calibration.readers import ort_reader

    paths = layer_paths(ctx.model)
    feeds = ctx.feeds[: cfg.calib_limit]
    work = Path(tempfile.mkdtemp(prefix="edgevl-convq-"))
    try:
        onnx.save(ctx.model, str(work / "float.onnx"))  # prepared: value_info already stripped
        # ORT's recommended pre-processing (shape inference, constant folding) before its quantizer.
        quant_pre_process(str(work / "float.onnx"), str(work / "pre.onnx"), skip_symbolic_shape=True)
        pre = onnx.load(str(work / "pre.onnx"))
        convs = conv_nodes(pre)
        qmax = weight_qmax(cfg.cpu_isa)
        # Linear conv -> conv pairs range-equalized (exact); the ReLU6 pairs are not (ReLU6 is
        # cut at 6, and unseen photos exceed the calibration maxima: edgevl.compress.equalize).
        pre, equalized = equalize(pre, feeds, relu6=False)
        onnx.save(pre, str(work / "equalized.onnx"))
        means = input_means(pre, feeds, convs)
        reader = ort_reader(feeds)
        # The activation ranges are calibrated once, on the float graph, and every gate try
        # reuses them from this cache: they do not depend on which convs stay float.
        ranges = work / "calibration.json"

        def quantize(source: Path, exclude: list[str]) -> "object":
            target = work / "quantized.onnx"
            with quiet_ort_quantizer():
                quantize_static(
                    str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    # 7-bit weights (|w| <= 64) unless the target CPU has exact int8 dot products.
                    reduce_range=qmax < 127, nodes_to_exclude=exclude, calibration_cache_path=str(ranges),
                )
            return onnx.load(str(target))

        quantize(work / "equalized.onnx", [])

        def build(drop: dict[str, str]) -> tuple["object", dict]:
            int8 = convs[len(drop):]
            # Bias correction on the convs this candidate quantizes (the float ones keep theirs).
            onnx.save(correct_bias(pre, means, int8, qmax), str(work / "candidate.onnx"))
            quantized = quantize(work / "candidate.onnx", _prefix(pre, convs, len(drop)))
            return quantized, {"quantized_convs": len(int8)}

        def reason(name: str, rank: int) -> str:
            return (f"kept float by the accuracy gate (conv {rank} of {len(convs)} in depth order; "
                    "early convs measured the most sensitive)")

        qmodel, drop, (counts,), gate_report = gate_loop(ctx, convs, {}, cfg.max_drop, build, reason)
        passes: dict = {"gate": gate_report, **counts, "equalization": equalized,
                        "bias_corrected_convs": counts["quantized_convs"]}
        recipe = QuantRecipe(ctx.component, "int8", cfg.to_json(), calibration=dict(ctx.calibration))
        recipe.layers = _recipe_layers(qmodel, [c for c in convs if c not in drop])
        recipe.float_layers = dict(drop)
        if cfg.speed_guard and recipe.layers:
            timing = whole_graph_speed(pre, qmodel, feeds[0])
            passes["speed_guard"] = timing
            if timing["speedup"] < cfg.min_speedup:
                why = (f"int8 tower measured {timing['int8_ms']} ms vs {timing['float_ms']} ms float "
                       f"on ORT (speedup {timing['speedup']} < {cfg.min_speedup}): kept float")
                recipe = recipe.without({n: why for n in recipe.layers})
                qmodel = pre
                passes["quantized_convs"] = 0
        return qmodel, {"recipe": recipe, "passes": passes, "paths": paths}
    finally:
        shutil.rmtree(work, ignore_errors=True)
