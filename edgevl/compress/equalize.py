"""Cross-layer range equalization and bias correction for convolution chains in ONNX graphs
(Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction"),
for the static int8 of convolutional towers (`edgevl.compress.conv_int8`).

Equalization. For a pair `Conv A -> [Clip(0, 6)] -> Conv B` where A's output feeds B only, channel
i of the tensor between them can be multiplied by t_i (A's output channel i and its bias times
t_i, B's weights reading channel i divided by t_i) without changing B's output, provided the
Clip does not cut at a different point: ReLU6 is not positively homogeneous above 6. So a channel
is rescaled only if its calibrated pre-activation maximum m_i stays under 6 with `margin`, and
then t_i = 6 / (m_i * margin) >= 1: every channel of the per-tensor uint8 activation then uses
the range the widest channel used, and B's weights only shrink (A's weights are quantized per
output channel, so their scaling costs nothing). Without a Clip (a linear pair, e.g. a
projection conv into the next expansion conv), t_i = max_j |x_j| / |x_i| (capped). A tensor
read by more than one node (a residual branch) is left alone. Exact on the calibration data;
on other data a ReLU6 channel is cut at m_i * margin instead of 6.

Bias correction. Quantizing a conv's weights shifts its output's expectation by
(W_q - W) E[x]; that shift, from the calibration set's per-channel input means, is taken off the
bias of every conv that will be int8 (borders of padded convolutions are not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgevl.compress.ort_graph import consumers, initializers, session_with_outputs
from edgevl.compress.qdq import quantize_weight_per_channel

RELU6 = (0.0, 6.0)
# Rescaling factors are capped: a near-dead channel would otherwise get a huge t_i.
MAX_SCALE = 100.0


@dataclass(frozen=True)
class ConvPair:
    first: str  # Conv A (node name)
    clip: Optional[str]  # the Clip(0, 6) node between them, if any
    second: str  # Conv B
    tensor: str  # the tensor whose channels are rescaled (A's output, before the Clip)


def _attr(node: "object", name: str, default: "object") -> "object":
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _const(inits: dict, name: str) -> Optional[np.ndarray]:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _is_relu6(node: "object", inits: dict) -> bool:
    if node.op_type != "Clip" or len(node.input) != 3:
        return False
    lo, hi = _const(inits, node.input[1]), _const(inits, node.input[2])
    return lo is not None and hi is not None and (float(lo), float(hi)) == RELU6


def _weighted_conv(node: "object", inits: dict) -> bool:
    return (node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))


def conv_pairs(model: "object") -> list[ConvPair]:
    """The `Conv -> [ReLU6] -> Conv` pairs whose middle tensor feeds only the next conv, in graph
    order. A ViT's patch-embedding conv (one conv, no conv after it) gives none."""
    inits = initializers(model)
    readers = consumers(model)
    outputs = {o.name for o in model.graph.output}
    pairs = []
    for node in model.graph.node:
        if not _weighted_conv(node, inits):
            continue
        tensor = node.output[0]
        nxt = readers.get(tensor, [])
        if len(nxt) != 1 or tensor in outputs:
            continue
        clip = None
        if _is_relu6(nxt[0], inits):
            clip = nxt[0]
            nxt = readers.get(clip.output[0], [])
            if len(nxt) != 1 or clip.output[0] in outputs:
                continue
        second = nxt[0]
        if not _weighted_conv(second, inits) or second.input[0] != (clip.output[0] if clip else tensor):
            continue
        pairs.append(ConvPair(node.name, clip.name if clip else None, second.name, tensor))
    return pairs


def channel_stats(
    model: "object", feeds: list[dict[str, np.ndarray]], tensors: list[str],
    ranges: Optional[dict[str, tuple[float, float]]] = None,
) -> dict[str, dict]:
    """Per-channel (axis 1) min, max and mean of `tensors` over every feed; with `ranges`
    (tensor -> its per-tensor uint8 range), also `qmean`: the mean after uint8 quantize-dequantize
    in that range, as ONNX Runtime's QuantizeLinear computes it."""
    sess, names = session_with_outputs(model, tensors, threads=2)
    acc: dict[str, dict] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            if name not in tensors:
                continue
            v = np.moveaxis(np.asarray(value, np.float64), 1, 0).reshape(value.shape[1], -1)
            s = acc.setdefault(name, {"min": np.full(v.shape[0], np.inf), "max": np.full(v.shape[0], -np.inf),
                                      "sum": np.zeros(v.shape[0]), "qsum": np.zeros(v.shape[0]), "count": 0})
            s["min"] = np.minimum(s["min"], v.min(1))
            s["max"] = np.maximum(s["max"], v.max(1))
            s["sum"] += v.sum(1)
            if ranges is not None and name in ranges:
                s["qsum"] += fake_quant_uint8(value, *ranges[name]).astype(np.float64).swapaxes(0, 1).reshape(
                    v.shape[0], -1).sum(1)
            s["count"] += v.shape[1]
    n = {k: max(s["count"], 1) for k, s in acc.items()}
    return {k: {"min": s["min"], "max": s["max"], "mean": s["sum"] / n[k], "qmean": s["qsum"] / n[k]}
            for k, s in acc.items()}


def fake_quant_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 asymmetric quantize-dequantize in [lo, hi] (widened to hold 0), as ONNX Runtime's
    static quantizer derives scale and zero point from a min-max range."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def _input_index(weight_shape: tuple, group: int) -> np.ndarray:
    """[Cout, Cin/group]: the input channel each weight column of a grouped conv reads."""
    cout, cg = weight_shape[0], weight_shape[1]
    return (np.arange(cout) // (cout // group))[:, None] * cg + np.arange(cg)[None, :]


def _set(inits: dict, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _bias(model: "object", node: "object", inits: dict, channels: int) -> str:
    """The conv's bias initializer, created (zeros) when it has none."""
    from onnx import numpy_helper

    if len(node.input) > 2 and node.input[2]:
        return node.input[2]
    name = f"{node.name}_bias"
    tensor = numpy_helper.from_array(np.zeros(channels, np.float32), name)
    model.graph.initializer.append(tensor)
    inits[name] = model.graph.initializer[-1]
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return name


def equalize(model: "object", feeds: list[dict[str, np.ndarray]], margin: float = 1.0, relu6: bool = True) -> tuple["object", dict]:
    """A copy of `model` with every `conv_pairs` pair range-equalized on `feeds`; returns it and
    a report (`pairs`, `rescaled_channels`, and `skipped` with the reason when nothing applies)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    pairs = [p for p in conv_pairs(model) if relu6 or p.clip is None]
    if not pairs:
        return model, {"pairs": 0, "rescaled_channels": 0, "skipped": "no conv -> [ReLU6] -> conv chain"}
    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    stats = channel_stats(model, feeds, [p.tensor for p in pairs])
    rescaled = 0
    for pair in pairs:
        a, b = by_name[pair.first], by_name[pair.second]
        s = stats[pair.tensor]
        if pair.clip is not None:
            top = s["max"] * margin
            t = np.where((top > 0) & (top < RELU6[1]), RELU6[1] / np.maximum(top, 1e-30), 1.0)
        else:
            amax = np.maximum(np.abs(s["min"]), np.abs(s["max"]))
            t = np.where(amax > 0, amax.max() / np.maximum(amax, 1e-30), 1.0)
        t = np.clip(t, 1.0, MAX_SCALE)
        wa, wb = _const(inits, a.input[1]), _const(inits, b.input[1])
        group = int(_attr(b, "group", 1))
        if wa.shape[0] != t.shape[0] or wb.shape[1] * group != t.shape[0]:
            continue
        bias = _bias(model, a, inits, wa.shape[0])
        _set(inits, a.input[1], wa * t.reshape(-1, *[1] * (wa.ndim - 1)))
        _set(inits, bias, _const(inits, bias) * t)
        col = t[_input_index(wb.shape, group)]
        _set(inits, b.input[1], wb / col.reshape(*col.shape, *[1] * (wb.ndim - 2)))
        rescaled += int(np.sum(t > 1.0))
    return model, {"pairs": len(pairs), "rescaled_channels": rescaled, "margin": margin}


def fake_quant_weight(w: np.ndarray, qmax: int) -> np.ndarray:
    """Symmetric per-output-channel quantize-dequantize as ONNX Runtime's static quantizer does
    it (scale = max |w| / qmax, codes in [-qmax, qmax])."""
    codes, scales = quantize_weight_per_channel(w.reshape(w.shape[0], -1).T, qmax=qmax)
    return (codes.T.astype(w.dtype) * scales[:, None]).reshape(w.shape)


def input_means(model: "object", feeds: list[dict[str, np.ndarray]], convs: list[str]) -> dict[str, tuple]:
    """Conv -> per-channel mean of its input on `feeds`, in float and after the uint8
    quantize-dequantize a min-max calibration over the same feeds gives it."""
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in convs}
    tensors = sorted(set(inputs.values()))
    first = channel_stats(model, feeds, tensors)
    ranges = {t: (float(s["min"].min()), float(s["max"].max())) for t, s in first.items()}
    stats = channel_stats(model, feeds, tensors, ranges)
    return {c: (stats[t]["mean"], stats[t]["qmean"]) for c, t in inputs.items() if t in stats}


def correct_bias(model: "object", means: dict[str, tuple], convs: list[str], qmax: int) -> "object":
    """A copy of `model` whose convs in `convs` have the expected output shift of int8, taken
    off their bias: W_q E[Q(x)] - W E[x], with W_q the weights quantized per output channel and
    Q(x) the uint8 input (`input_means`)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = initializers(model)
    for node in model.graph.node:
        if node.name not in convs or node.name not in means:
            continue
        w = _const(inits, node.input[1]).astype(np.float64)
        wq = fake_quant_weight(w, qmax).astype(np.float64)
        index = _input_index(w.shape, int(_attr(node, "group", 1)))
        mean, qmean = (m[index] for m in means[node.name])
        shift = (wq.reshape(*index.shape, -1).sum(-1) * qmean - w.reshape(*index.shape, -1).sum(-1) * mean).sum(1)
        bias = _bias(model, node, inits, w.shape[0])
        _set(inits, bias, _const(inits, bias).astype(np.float64) - shift)
    return model


__all__ = ["ConvPair", "channel_stats", "conv_pairs", "correct_bias", "equalize", "fake_quant_uint8", "fake_quant_weight",
           "input_means"]
