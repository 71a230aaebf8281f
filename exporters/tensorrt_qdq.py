"""Explicit int8 for TensorRT: QuantizeLinear / DequantizeLinear placed as NVIDIA's guidance and
nvidia-modelopt's ONNX quantizer place them for transformers and CNNs.

Placement rules (checked by tests/backends/test_tensorrt.py):
    * every MatMul (Gemm normalised to MatMul) and Conv with a constant weight gets Q/DQ on its
      activation input (int8, per tensor, symmetric: zero point 0, scale = amax / 127 from the
      shared calibration split; min-max amax for transformer towers, MSE-fitted for conv ones) and DQ on its weight (int8 codes, per output channel,
      symmetric: MatMul `[K, N]` axis 1, Conv `[O, I, kh, kw]` axis 0), unless the accuracy gate
      kept the layer float;
    * nothing on LayerNormalization, Gelu / Erf chains, Softmax, or the residual Adds (modelopt's
      default for transformers: an Add stays float and TensorRT fuses it into the preceding
      layer's epilogue), and nothing inside or in front of `Attention`: Q, K and V reach the
      fused op in float, so TensorRT keeps one IAttention (modelopt recognises only the
      decomposed MatMul-Softmax-MatMul form; a Q/DQ pair there would break the fusion).
TensorRT only takes zero-point-0 int8 Q/DQ, so activations are symmetric (the ONNX target's
uint8 asymmetric activations would not build). The accuracy gate is edgevl's (compress/gate.py):
layers move back to float until the gate split passes the int8 row, worst local SQNR first in
transformer towers, a prefix in depth order in convolutional ones (as compress/conv_int8.py).
ONNX Runtime checks such a graph with its optimisations off, so Q/DQ run as written (the float
simulation of what TensorRT's int8 kernels compute), free of the CPU's int8 kernels' own rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgevl.compress.ort_graph import drop_unread_initializers, initializers, insert_before
from edgevl.compress.qdq import ensure_opset, linear_nodes
from edgevl.compress.stats import collect_stats, local_sqnr, output_sqnr

QMAX = 127
QUANTIZED_OPS = ("MatMul", "Conv")
# The gate's cosine floor asks for this fraction of the parity floor's distance to 1: half for
# transformer towers (compress/gate.py's GATE_COSINE_MARGIN), a quarter for convolutional ones,
# whose symmetric int8 lost more between the gate split and held-out photos (docs/tensorrt.md).
CONV_GATE_MARGIN = 0.25


@dataclass(frozen=True)
class Layer:
    name: str
    op_type: str
    activation: str
    weight: str
    axis: int  # the weight's output-channel axis


def quantizable_layers(model: "object") -> list[Layer]:
    """MatMul with a constant 2-D weight and Conv with a constant weight, in graph order."""
    inits = initializers(model)
    matmuls = {l.name: l for l in linear_nodes(model)}
    found = []
    for node in model.graph.node:
        if node.name in matmuls:
            found.append(Layer(node.name, "MatMul", node.input[0], node.input[1], 1))
        elif node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            found.append(Layer(node.name, "Conv", node.input[0], node.input[1], 0))
    return found


def weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    amax = np.abs(weight).max(axis=reduce)
    return np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)


def _broadcast(scales: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scales.reshape(shape)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    scales = weight_scales(weight, axis)
    codes = np.clip(np.round(weight / _broadcast(scales, weight.ndim, axis)), -QMAX, QMAX).astype(np.int8)
    return codes, scales


@dataclass
class Calibrated:
    layers: list[Layer]
    act_scale: dict[str, float]  # activation tensor -> per-tensor scale
    local_sqnr: dict[str, float]  # layer -> local output SQNR (dB) at int8


def calibrate(model: "object", feeds: list[dict[str, np.ndarray]], observer: str = "minmax") -> Calibrated:
    """Per-tensor symmetric activation scales and each layer's local int8 SQNR (for the gate's
    order) from the calibration feeds."""
    from onnx import numpy_helper

    layers = quantizable_layers(model)
    tensors = sorted({l.activation for l in layers})
    stats = collect_stats(model, tensors, feeds, observer)
    inits = initializers(model)
    scales: dict[str, float] = {}
    local: dict[str, float] = {}
    for t in tensors:
        lo, hi = stats.observers[t].compute_range(symmetric=True)
        scales[t] = max(abs(lo), abs(hi), 1e-8) / QMAX
    for l in layers:
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        s = scales[l.activation]
        act = {"scale": s, "zero_point": 0, "qmin": -QMAX, "qmax": QMAX}
        if l.op_type == "MatMul":
            local[l.name] = local_sqnr(stats.rows[l.activation], w, act, weight_scales(w, 1), QMAX)
        else:  # a Conv: the worse of its weight's and its input rows' int8 SQNR
            codes, ws = quantize_weight(w, 0)
            x = stats.rows[l.activation]
            xq = np.clip(np.round(x / s), -QMAX, QMAX) * s
            local[l.name] = min(output_sqnr(w, codes * _broadcast(ws, w.ndim, 0)), output_sqnr(x, xq))
    return Calibrated(layers, scales, local)


def place_qdq(model: "object", calibrated: Calibrated, float_layers: set[str]) -> tuple["object", dict]:
    """A copy of the prepared float `model` with Q/DQ on every calibrated layer not in
    `float_layers` (module doc); returns it and the counts."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    new_inits = []
    quantized: dict[str, str] = {}  # activation tensor -> its QuantizeLinear output
    pre: dict[str, list] = {}
    done = 0
    for layer in calibrated.layers:
        if layer.name in float_layers:
            continue
        node = by_name[layer.name]
        codes, scales = quantize_weight(numpy_helper.to_array(inits[layer.weight]).astype(np.float32), layer.axis)
        wq, ws, wz = f"{layer.weight}_int8", f"{layer.weight}_scale", f"{layer.weight}_zp"
        new_inits += [numpy_helper.from_array(codes, wq), numpy_helper.from_array(scales, ws),
                      numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), wz)]
        nodes = [helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{layer.weight}_dq"],
                                  name=f"{layer.name}_w_dq", axis=layer.axis)]
        t = layer.activation
        a_s, a_z = f"{t}_act_scale", f"{t}_act_zp"
        if t not in quantized:
            new_inits += [numpy_helper.from_array(np.asarray(calibrated.act_scale[t], np.float32), a_s),
                          numpy_helper.from_array(np.asarray(0, np.int8), a_z)]
            quantized[t] = f"{t}_q"
            nodes.append(helper.make_node("QuantizeLinear", [t, a_s, a_z], [quantized[t]], name=f"{layer.name}_a_q"))
        # One DQ per consumer: TensorRT (and ORT) fuse a Q/DQ pair into the layer it feeds.
        nodes.append(helper.make_node("DequantizeLinear", [quantized[t], a_s, a_z], [f"{layer.name}_a_dq"],
                                      name=f"{layer.name}_a_dq"))
        node.input[0], node.input[1] = f"{layer.name}_a_dq", f"{layer.weight}_dq"
        pre[layer.name] = nodes
        done += 1
    insert_before(model, pre)
    drop_unread_initializers(model, new_inits)
    ensure_opset(model)
    return model, {"quantized_layers": done, "float_layers": len(calibrated.layers) - done,
                   "quantize_nodes": len(quantized)}


def qdq_session_runner(model: "object") -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """ONNX Runtime CPU over `model` with graph optimisations off: Q/DQ run as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)[0]


def gated_int8(
    fp32: "object", feeds: list[dict[str, np.ndarray]], gate: "object", parity_cosine_min: float,
    max_drop: float, component: str, progress: Optional[Callable[[str], None]] = None,
) -> tuple["object", dict]:
    """Calibrate, place Q/DQ, and run edgevl's accuracy gate against the floor derived from the
    parity row's `parity_cosine_min`; returns the int8 graph and the report (layers kept float
    with why, the gate's tries)."""
    from edgevl.compress.conv_int8 import is_conv_tower
    from edgevl.compress.gate import gate_cosine_floor, run_gate
    from edgevl.compress.ort_graph import layer_paths
    from edgevl.compress.qdq import prepare

    model, prep = prepare(fp32)
    conv_tower = is_conv_tower(model)
    # Min-max ranges for transformer towers (modelopt's default); MSE-fitted ranges for
    # convolutional ones, where min-max lost more on the default model's EfficientNet-Lite0 at
    # the same float prefix (docs/tensorrt.md).
    observer = "mse" if conv_tower else "minmax"
    cosine_min = (round(1.0 - CONV_GATE_MARGIN * (1.0 - parity_cosine_min), 6) if conv_tower
                  else gate_cosine_floor(parity_cosine_min))
    calibrated = calibrate(model, feeds, observer)
    if conv_tower:
        # As the ONNX target's conv scheme (compress/conv_int8.py): a float prefix in depth
        # order. A layer's own int8 error misleads there: an early depthwise conv with a high
        # local SQNR measured the largest loss of the whole tower.
        order = [l.name for l in calibrated.layers]
    else:
        order = [n for n, _ in sorted(calibrated.local_sqnr.items(), key=lambda kv: kv[1])]
    counts: dict[int, dict] = {}

    def build(float_layers: list[str]) -> "object":
        built, counts[len(float_layers)] = place_qdq(model, calibrated, set(float_layers))
        return built

    def reason(name: str, rank: int) -> str:
        if conv_tower:
            return f"kept float by the accuracy gate (conv {rank} of {len(order)} in depth order)"
        return f"kept float by the accuracy gate (local SQNR {calibrated.local_sqnr[name]:.1f} dB, rank {rank})"

    result = run_gate(order, build, qdq_session_runner, gate, cosine_min, max_drop, component, reason,
                      progress, precision="int8")
    paths = layer_paths(model)
    report = {
        "scheme": "int8 Q/DQ: weights per output channel (symmetric), activations per tensor (symmetric)",
        "observer": observer,
        "layers": len(calibrated.layers),
        **counts[len(result.float_layers)],
        **prep,
        "float_layers": {n: {"module": paths.get(n, ""), "why": why} for n, why in result.float_layers.items()},
        "local_sqnr_db": {n: round(v, 2) for n, v in sorted(calibrated.local_sqnr.items(), key=lambda kv: kv[1])},
        "gate": result.report,
    }
    return result.model, report
