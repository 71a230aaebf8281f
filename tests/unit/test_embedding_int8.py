"""int8 token-embedding tables (edgevl/compress/embedding_int8.py) on ONNX Runtime: the graph
reads int8 rows and one scale per row, computes what the float table computes within the per-row
rounding bound, and leaves small tables float."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgevl.compress.embedding_int8 import LEVELS, MIN_ROWS, embedding_tables, int8_embedding_tables


def _graph(rows: int, dim: int = 64, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((rows, dim)) * rng.uniform(0.01, 3.0, (rows, 1))).astype(np.float32)
    positions = rng.standard_normal((8, dim)).astype(np.float32)
    weight = rng.standard_normal((dim, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["tok"], name="word_embeddings", axis=0),
        helper.make_node("Gather", ["positions", "pos_ids"], ["pos"], name="position_embeddings", axis=0),
        helper.make_node("Add", ["tok", "pos"], ["sum"], name="add"),
        helper.make_node("MatMul", ["sum", "weight"], ["out"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("pos_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(positions, "positions"),
         numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_large_tables_become_int8_rows_and_match_within_the_rounding_bound():
    model = _graph(MIN_ROWS + 200)
    assert embedding_tables(model) == ["word_embeddings"]  # the 8-row position table stays float
    quantized, report = int8_embedding_tables(model)
    onnx.checker.check_model(quantized)
    inits = {i.name: i for i in quantized.graph.initializer}
    assert "table" not in inits and inits["table_int8"].data_type == TensorProto.INT8
    assert inits["positions"].data_type == TensorProto.FLOAT
    entry = report["tables"]["word_embeddings"]
    assert entry["rows"] == MIN_ROWS + 200 and entry["bytes_after"] < 0.3 * entry["bytes_before"]
    rng = np.random.default_rng(1)
    feeds = {"ids": rng.integers(0, MIN_ROWS + 200, (3, 8)), "pos_ids": np.tile(np.arange(8), (3, 1))}
    # Every row read back is within half a step of its own scale.
    table = numpy_helper.to_array(model.graph.initializer[0])
    rows = _run(_cut_at(quantized, "tok"), feeds)
    step = np.abs(table[feeds["ids"]]).max(axis=-1, keepdims=True) / LEVELS
    assert np.all(np.abs(rows - table[feeds["ids"]]) <= step / 2 + 1e-7)
    ref, got = _run(model, feeds), _run(quantized, feeds)
    assert got.shape == ref.shape and not np.array_equal(got, ref)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.999


def _cut_at(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    cut = onnx.ModelProto.FromString(model.SerializeToString())
    del cut.graph.output[:]
    cut.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return cut


def test_small_tables_are_left_alone():
    model = _graph(MIN_ROWS - 1)
    assert embedding_tables(model) == []
    quantized, report = int8_embedding_tables(model)
    assert report == {"tables": {}}
    assert [n.op_type for n in quantized.graph.node] == [n.op_type for n in model.graph.node]
