"""The float prefix of a convolutional tower's int8 candidate (`edgevl.compress.conv_int8._prefix`)
ends right before the first int8 conv: a residual Add joining two float tensors stays float, so
ONNX Runtime's quantizer leaves no int8 island inside the float part (checked on a hand-built
residual block quantized by ORT's own static quantizer)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgevl.compress.conv_int8 import _prefix, conv_nodes

RNG = np.random.default_rng(0)


def _residual_block() -> onnx.ModelProto:
    """X -> A (1x1) -> a; a -> B (1x1) -> b; S = Add(a, b) -> C (1x1) -> Y."""
    def init(name: str, shape: tuple) -> onnx.TensorProto:
        return numpy_helper.from_array(RNG.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["X", "wa"], ["a"], name="A"),
        helper.make_node("Conv", ["a", "wb"], ["b"], name="B"),
        helper.make_node("Add", ["a", "b"], ["s"], name="S"),
        helper.make_node("Conv", ["s", "wc"], ["Y"], name="C"),
    ]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [init("wa", (4, 4, 1, 1)), init("wb", (4, 4, 1, 1)), init("wc", (3, 4, 1, 1))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_prefix_ends_before_the_first_int8_conv():
    model = _residual_block()
    convs = conv_nodes(model)
    assert convs == ["A", "B", "C"]
    assert _prefix(model, convs, 0) == []
    assert _prefix(model, convs, 1) == ["A"]
    assert _prefix(model, convs, 2) == ["A", "B", "S"]  # the Add after B joins two float tensors
    assert _prefix(model, convs, 3) == ["A", "B", "S", "C"]


def test_ort_quantizer_leaves_the_float_prefix_without_qdq(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"X": RNG.normal(size=(1, 4, 6, 6)).astype(np.float32)} for _ in range(4)])

        def get_next(self):  # noqa: ANN201 (ORT's interface)
            return next(self.feeds, None)

    model = _residual_block()
    onnx.save(model, str(tmp_path / "f.onnx"))
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=_prefix(model, conv_nodes(model), 2))
    q = onnx.load(str(tmp_path / "q.onnx"))
    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    add = next(n for n in q.graph.node if n.op_type == "Add")
    conv_c = next(n for n in q.graph.node if n.name == "C")
    # The Add reads A's and B's float outputs as they are; C (int8) reads its input through Q/DQ.
    assert [made_by[i] for i in add.input] == ["Conv", "Conv"]
    assert made_by[conv_c.input[0]] == made_by[conv_c.input[1]] == "DequantizeLinear"
