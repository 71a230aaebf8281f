"""int8 token-embedding tables for ONNX graphs, in standard ops.

A small text tower's token-embedding table holds about half its weight bytes (sizes measured in
docs/compression-and-gate.md) and int8 MatMuls do not touch it. Each table read by a `Gather` is
stored as int8 codes with one float scale per row (symmetric, 127 levels: a row is read, never
multiplied by an activation in int8, so no saturation limit applies), and only the rows a query
reads are dequantized:

    Gather(codes, ids) -> Cast(float) -> Mul(Gather(row_scales, ids))

so inference does not dequantize the whole table (a `DequantizeLinear` in front of the `Gather`
would, on every call). Tables with fewer than `MIN_ROWS` rows (positions, token types) stay
float: they weigh little.
"""

from __future__ import annotations

import numpy as np

from edgevl.compress.ort_graph import drop_unread_initializers, initializers
from edgevl.compress.qdq import quantize_weight_per_channel

MIN_ROWS = 1000
LEVELS = 127


def embedding_tables(model: "object") -> list[str]:
    """Names of the Gather nodes that read a float 2-D table of at least `MIN_ROWS` rows along axis 0."""
    from onnx import TensorProto

    inits = initializers(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (axis == 0 and table.data_type == TensorProto.FLOAT and len(table.dims) == 2
                and table.dims[0] >= MIN_ROWS):
            found.append(node.name)
    return found


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales of shape [rows, 1]): each row scaled by its own max |value|
    (the per-channel weight quantizer, with the rows as channels)."""
    codes, scales = quantize_weight_per_channel(table.T, qmax=LEVELS)
    return np.ascontiguousarray(codes.T), scales[:, None]


def int8_embedding_tables(model: "object") -> tuple["object", dict]:
    """A copy of `model` with every table of `embedding_tables` stored as int8 rows; returns
    (model, {"tables": {gather: {"rows", "dim", "bytes_before", "bytes_after"}}})."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    chosen = set(embedding_tables(model))
    inits = initializers(model)
    report: dict[str, dict] = {}
    stored: dict[str, tuple[str, str]] = {}  # float table -> (codes, scales): a shared table once
    added = []
    nodes = []
    for node in model.graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        table_name, ids, out = node.input[0], node.input[1], node.output[0]
        if table_name not in stored:
            table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
            codes, scale = quantize_rows(table)
            stored[table_name] = (f"{table_name}_int8", f"{table_name}_row_scale")
            added += [numpy_helper.from_array(codes, stored[table_name][0]),
                      numpy_helper.from_array(scale, stored[table_name][1])]
            report[node.name] = {"rows": int(table.shape[0]), "dim": int(table.shape[1]),
                                 "bytes_before": int(table.nbytes), "bytes_after": int(codes.nbytes + scale.nbytes)}
        codes_name, scale_name = stored[table_name]
        nodes += [
            helper.make_node("Gather", [codes_name, ids], [f"{out}_codes"], name=f"{node.name}_int8", axis=0),
            helper.make_node("Gather", [scale_name, ids], [f"{out}_scale"], name=f"{node.name}_row_scale", axis=0),
            helper.make_node("Cast", [f"{out}_codes"], [f"{out}_float"], name=f"{node.name}_cast",
                             to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    drop_unread_initializers(model)
    return model, {"tables": report}
