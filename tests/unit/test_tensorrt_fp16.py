"""The TensorRT fp16 pass on a small hand-built graph run by ONNX Runtime: an additive mask filled
with float32's minimum feeding opset-23 `Attention`, then a MatMul whose output overflows fp16 and
a Mul that scales it back. The measured overflow picks the nodes ONNX Runtime's converter keeps
fp32; edgevl's fixes after it (no fp32 -> fp16 -> fp32 between kept nodes, a saturating cast into
fp16, a sorted graph) are what make the result finite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgevl.compress.ort_graph import IR_VERSION
from edgevl.exporters.fp16_guard import FP16_MAX
from edgevl.exporters.tensorrt_fp16 import FLOAT, FLOAT16, convert_fp16, node_peaks, tensor_peaks


def _graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest"),
        numpy_helper.from_array((rng.standard_normal((8, 8)) * 1e5).astype(np.float32), "w_big"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Where", ["keep", "zero", "lowest"], ["mask"], name="mask"),
        helper.make_node("Attention", ["q", "q", "q", "mask"], ["attn"], name="attention"),
        helper.make_node("MatMul", ["attn", "w_big"], ["big"], name="big"),
        helper.make_node("Mul", ["big", "scale"], ["small"], name="small"),
        helper.make_node("Add", ["small", "bias"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "fp16_pass", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 2, 4, 8]),
                             helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=IR_VERSION)


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    keep = rng.random((2, 1, 4, 4)) > 0.5
    keep[..., 0] = True
    return {"q": rng.standard_normal((2, 2, 4, 8)).astype(np.float32), "keep": keep}


def _run(model: onnx.ModelProto) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds())[0]


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def test_measured_overflow_stays_fp32_and_the_result_is_finite():
    fp32 = _graph()
    peaks = tensor_peaks(fp32, _feeds())
    by_node = node_peaks(fp32, peaks)
    kept = {n for n, p in by_node.items() if p > FP16_MAX}
    assert kept == {"mask", "big", "small"}  # the Attention node's mask input is left out

    model, counts = convert_fp16(fp32, kept, peaks)
    onnx.checker.check_model(model)  # topologically sorted
    assert counts == {"casts": 5, "saturating_casts": 1, "fp16_nodes": 2, "fp32_nodes": 3,
                      "kept_fp32_by_op_type": []}
    produced = {o: n for n in model.graph.node for o in n.output}
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    # big -> small reads fp32 directly, never through an fp16 round trip.
    assert not [n for n in casts if _cast_to(n) == FLOAT and getattr(produced.get(n.input[0]), "op_type", "") == "Cast"
                and _cast_to(produced[n.input[0]]) == FLOAT16]
    attention = next(n for n in model.graph.node if n.op_type == "Attention")
    assert produced[produced[attention.input[3]].input[0]].op_type == "Clip"
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == [FLOAT, TensorProto.BOOL, FLOAT]

    want, got = _run(fp32), _run(model)
    assert np.all(np.isfinite(got))
    cos = float(np.dot(want.ravel(), got.ravel()) / np.linalg.norm(want) / np.linalg.norm(got))
    assert cos > 0.999, cos


def test_the_converter_alone_turns_the_kept_overflow_into_inf():
    """Negative: ONNX Runtime's converter with the same node_block_list writes fp32 -> fp16 -> fp32
    between the kept MatMul and Mul (explicit Casts, which ONNX Runtime keeps), so the overflowing
    value becomes inf; edgevl's pass exists for this. (With nothing kept fp32, ONNX Runtime's CPU
    provider computes this graph's MatMul, Mul and Add in fp32 and hides the overflow, so that case
    is judged on the real tower in tests/backends/test_tensorrt.py.)"""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    raw = convert_float_to_float16(_graph(), keep_io_types=True, node_block_list=["mask", "big", "small"])
    assert not np.all(np.isfinite(_run(raw)))
