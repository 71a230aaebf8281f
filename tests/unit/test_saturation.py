"""The two x86 int8 dot products (exact int32; int16-saturating pairs without VNNI), simulated in
numpy and checked against ONNX Runtime's own integer kernel, whichever of the two this CPU has."""

from __future__ import annotations

import numpy as np
import pytest

from edgevl.compress.config import weight_qmax
from edgevl.compress.saturation import check_saturation, int8_dot, worst_pair_sum


def _operands(weight_limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (16, 384), dtype=np.uint8)
    b = rng.integers(-weight_limit, weight_limit + 1, (384, 384)).astype(np.int8)
    return a, b


def _matmul_integer(b: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, b.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _ort(model, a: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a})[0]


def test_full_range_weights_saturate_without_vnni():
    a, b = _operands(127)
    exact, paired = int8_dot(a, b, "exact"), int8_dot(a, b, "int16_pairs")
    assert np.array_equal(exact, a.astype(np.int64) @ b.astype(np.int64))
    assert np.count_nonzero(exact != paired) > exact.size // 2
    assert worst_pair_sum(b) > 32767


def test_seven_bit_weights_are_exact_under_both_semantics():
    a, b = _operands(weight_qmax("any"))
    assert weight_qmax("any") == 64 and weight_qmax("vnni") == 127
    assert worst_pair_sum(b) <= 32767
    assert np.array_equal(int8_dot(a, b, "exact"), int8_dot(a, b, "int16_pairs"))


def test_onnx_runtime_computes_one_of_the_two_semantics():
    """On any x86 CPU ORT's MatMulInteger equals the exact product (VNNI, AMX) or the saturating
    one (AVX2): the simulation describes the real kernel. With 7-bit weights both agree."""
    a, b = _operands(127)
    out = _ort(_matmul_integer(b), a)
    assert np.array_equal(out, int8_dot(a, b, "exact")) or np.array_equal(out, int8_dot(a, b, "int16_pairs"))
    a7, b7 = _operands(64, seed=1)
    assert np.array_equal(_ort(_matmul_integer(b7), a7), int8_dot(a7, b7, "exact"))


def test_odd_inner_dimension_and_unknown_semantics():
    a = np.full((2, 3), 255, np.uint8)
    b = np.full((3, 2), 127, np.int8)
    assert int8_dot(a, b, "exact")[0, 0] == 3 * 255 * 127
    assert int8_dot(a, b, "int16_pairs")[0, 0] == 32767 + 255 * 127
    with pytest.raises(ValueError, match="int16_pairs"):
        int8_dot(a, b, "avx")


@pytest.mark.parametrize("limit, safe", [(127, False), (64, True)])
def test_graph_check_proves_from_weights_and_counts_on_activations(limit, safe):
    """`check_saturation` reads the int8 weights of a graph (proof) and, where they prove nothing,
    compares both semantics on the activations a `DynamicQuantizeLinear` really feeds its
    `MatMulInteger`."""
    from onnx import TensorProto, helper, numpy_helper

    _, b = _operands(limit)
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         helper.make_node("MatMulInteger", ["xq", "b", "xz"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 384])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((8, 384)).astype(np.float32)} for _ in range(2)]
    report = check_saturation(model, feeds)
    assert report.int8_gemms == 1 and report.safe_by_weights is safe
    # Only a layer the weights do not prove safe is simulated on the activations.
    assert report.outputs_checked == (0 if safe else 2 * 8 * 384)
    assert (report.outputs_differing == 0) is safe
    assert report.unsafe_layers == ([] if safe else ["mm"])
