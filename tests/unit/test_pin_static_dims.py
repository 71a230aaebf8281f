"""`pin_static_dims` (ONNX Runtime's `make_dim_param_fixed` underneath) on a small hand-built graph
run by ONNX Runtime: the pinned axis's symbol becomes its size in the inputs, the output and the
inner value_info; an axis not asked for stays dynamic; an axis with no symbol gets the size."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from edgevl.compress.ort_graph import IR_VERSION
from edgevl.exporters.onnx import pin_static_dims
from edgevl.models.spec import TensorSig, TowerSpec


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in value.type.tensor_type.shape.dim]


def _save(path, out_batch_dim: str) -> None:  # noqa: ANN001
    """x [batch, seq] -> sum over seq (value_info [batch]) -> Relu -> y [out_batch_dim or unknown]."""
    nodes = [helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [1])),
             helper.make_node("ReduceSum", ["x", "axes"], ["summed"], keepdims=0),
             helper.make_node("Relu", ["summed"], ["y"])]
    graph = helper.make_graph(
        nodes, "pin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_batch_dim or None])])
    graph.value_info.append(helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["batch"]))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=IR_VERSION), str(path))


def _tower() -> TowerSpec:
    return TowerSpec("text", torch.nn.Identity(), (TensorSig("x", "float32", ("batch", "seq")),),
                     TensorSig("y", "float32", ("batch",)), {})


def test_the_symbol_is_pinned_everywhere_and_other_axes_stay_dynamic(tmp_path):
    path = tmp_path / "g.onnx"
    _save(path, "batch")
    assert pin_static_dims(path, _tower(), {"batch": 2}) == {"batch": 2}
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == [2, "seq"]
    assert _dims(model.graph.output[0]) == [2]
    assert _dims(model.graph.value_info[0]) == [2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x.sum(1))
    assert sess.run(None, {"x": x[:, :3]})[0].shape == (2,)  # seq still dynamic
    try:
        sess.run(None, {"x": np.ones((3, 5), np.float32)})
    except Exception as exc:  # ONNX Runtime's own error type
        assert "x" in str(exc)
    else:
        raise AssertionError("a pinned batch of 2 ran at 3")


def test_an_axis_without_a_symbol_gets_the_size(tmp_path):
    path = tmp_path / "g.onnx"
    _save(path, "")
    assert pin_static_dims(path, _tower(), {"batch": 4, "seq": 7}) == {"batch": 4, "seq": 7}
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == [4, 7] and _dims(model.graph.output[0]) == [4]
