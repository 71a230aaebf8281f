"""Cross-layer equalization and bias correction (`edgevl.compress.equalize`) on small hand-built
ONNX conv chains, run by ONNX Runtime: equalization leaves the float outputs unchanged and evens
the channel ranges; bias correction cancels the mean output shift int8 weights and inputs cause."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevl.compress.equalize import (
    MAX_SCALE,
    fake_quant_uint8,
    channel_stats,
    conv_pairs,
    correct_bias,
    equalize,
    fake_quant_weight,
    input_means,
)

RNG = np.random.default_rng(0)


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value.astype(np.float32), name)


def _chain() -> onnx.ModelProto:
    """X -> A (1x1) -> B (3x3, pad 1) -> Clip(0, 6) -> C (1x1) -> Y: a linear pair (A, B) whose
    middle channels span four decades, and a ReLU6 pair (B, C)."""
    wa = RNG.normal(size=(6, 4, 1, 1)) * (10.0 ** np.arange(-2, 4, 1.0)).reshape(6, 1, 1, 1) / 100
    nodes = [
        helper.make_node("Conv", ["X", "wa", "ba"], ["a"], name="A"),
        helper.make_node("Conv", ["a", "wb", "bb"], ["b"], name="B", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["b", "lo", "hi"], ["c"], name="R"),
        helper.make_node("Conv", ["c", "wc"], ["Y"], name="C"),
    ]
    inits = [_init("wa", wa), _init("ba", RNG.normal(size=6)), _init("wb", RNG.normal(size=(6, 6, 3, 3)) * 0.3),
             _init("bb", RNG.normal(size=6)), _init("lo", np.array(0.0)), _init("hi", np.array(6.0)),
             _init("wc", RNG.normal(size=(5, 6, 1, 1)))]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    return [{"X": RNG.normal(size=(1, 4, 8, 8)).astype(np.float32) + 0.5} for _ in range(n)]


def test_finds_the_linear_and_the_relu6_pair():
    pairs = conv_pairs(_chain())
    assert [(p.first, p.clip, p.second) for p in pairs] == [("A", None, "B"), ("B", "R", "C")]


def test_linear_equalization_is_exact_and_evens_the_channel_ranges():
    model, feeds = _chain(), _feeds(8)
    equalized, report = equalize(model, feeds, relu6=False)
    assert report["pairs"] == 1 and report["rescaled_channels"] == 5  # every channel but the widest
    for feed in _feeds(4):  # data the ranges were not measured on: still exact
        ref, out = _run(model, feed["X"]), _run(equalized, feed["X"])
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))

    def spread(m: onnx.ModelProto) -> float:
        s = channel_stats(m, feeds, ["a"])["a"]
        amax = np.maximum(np.abs(s["min"]), np.abs(s["max"]))
        return float(amax.max() / amax.min())

    # Every channel is scaled up to the widest one's range, by at most MAX_SCALE (a near-dead
    # channel would otherwise get a huge factor): the narrowest one here needs more than that.
    before, after = spread(model), spread(equalized)
    assert before > MAX_SCALE and after == pytest.approx(before / MAX_SCALE, rel=1e-3)


def test_no_pairs_is_reported_not_an_error():
    one = _chain()
    del one.graph.node[1:]
    one.graph.output[0].name = "a"
    model, report = equalize(one, _feeds(2))
    assert report["pairs"] == 0 and "no conv" in report["skipped"]
    assert model.SerializeToString() == one.SerializeToString()


def test_bias_correction_cancels_the_mean_shift_of_int8_weights_and_inputs():
    """A 1x1 conv is linear in its input's mean, so with the input quantized as the calibration
    range quantizes it and the weights quantized per channel (here coarsely, |q| <= 7, so the
    shift is large), the corrected conv's mean output equals the float conv's."""
    chain = _chain()
    single = helper.make_model(
        helper.make_graph([chain.graph.node[0]], "one", list(chain.graph.input),
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 6, 8, 8])],
                          [i for i in chain.graph.initializer if i.name in ("wa", "ba")]),
        opset_imports=[helper.make_opsetid("", 17)])
    feeds, qmax = _feeds(16), 7
    means = input_means(single, feeds, ["A"])
    corrected = correct_bias(single, means, ["A"], qmax)
    lo = min(float(f["X"].min()) for f in feeds)
    hi = max(float(f["X"].max()) for f in feeds)

    def with_int8_weights(m: onnx.ModelProto) -> onnx.ModelProto:
        m = onnx.ModelProto.FromString(m.SerializeToString())
        w = next(i for i in m.graph.initializer if i.name == "wa")
        w.CopyFrom(_init("wa", fake_quant_weight(numpy_helper.to_array(w), qmax)))
        return m

    def mean_out(m: onnx.ModelProto, quantize_input: bool) -> np.ndarray:
        outs = [_run(m, fake_quant_uint8(f["X"], lo, hi).astype(np.float32) if quantize_input else f["X"])
                for f in feeds]
        return np.mean(outs, axis=(0, 2, 3, 4))

    reference = mean_out(single, False)
    uncorrected = np.abs(mean_out(with_int8_weights(single), True) - reference)
    residual = np.abs(mean_out(with_int8_weights(corrected), True) - reference)
    assert uncorrected.max() > 1e-2
    np.testing.assert_allclose(residual, 0, atol=1e-4 * max(1.0, float(np.abs(reference).max())))
