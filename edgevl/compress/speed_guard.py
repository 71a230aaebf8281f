"""Opt-in speed guards: int8 timed against float on ONNX Runtime on the building machine.

A timing makes the artifact depend on the machine that builds it, so the schemes call these
only when their config's `speed_guard` is on; the timings then go into the manifest.
"""

from __future__ import annotations

import time

import numpy as np

from edgevl.compress.ort_graph import session


def time_session(sess: "object", feed: dict, runs: int = 20) -> float:
    """Best of `runs` timed runs after 3 warm-up runs, in seconds."""
    for _ in range(3):
        sess.run(None, feed)
    best = np.inf
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_speed(shapes: set[tuple[int, int]], rows: int = 77, margin: float = 1.1) -> dict[tuple[int, int], dict]:
    """Time a float MatMul against its Q/DQ int8 form on ORT for each weight shape `(K, N)` with
    `rows` activation rows; a shape is `slower` when int8 takes more than `margin` x float."""
    from onnx import TensorProto, helper, numpy_helper

    from edgevl.compress.ort_graph import IR_VERSION
    from edgevl.compress.qdq import quantize_weight_per_channel

    out = {}
    rng = np.random.default_rng(0)
    for k, n in sorted(shapes):
        w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        fl = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "f", [x], [y],
                               [numpy_helper.from_array(w, "w")])
        codes, scales = quantize_weight_per_channel(w)
        q_nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
        qg = helper.make_graph(q_nodes, "q", [x], [y], [
            numpy_helper.from_array(np.asarray(0.02, np.float32), "s"),
            numpy_helper.from_array(np.asarray(128, np.uint8), "z"),
            numpy_helper.from_array(codes, "wq"), numpy_helper.from_array(scales, "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
        ])
        opset = [helper.make_opsetid("", 21)]
        feed = {"x": rng.standard_normal((1, rows, k)).astype(np.float32)}
        sf = session(helper.make_model(fl, opset_imports=opset, ir_version=IR_VERSION))
        sq = session(helper.make_model(qg, opset_imports=opset, ir_version=IR_VERSION))
        tf, tq = time_session(sf, feed), time_session(sq, feed)
        out[(k, n)] = {"float_ms": round(tf * 1e3, 4), "int8_ms": round(tq * 1e3, 4), "slower": tq > tf * margin}
    return out


def whole_graph_speed(float_model: "object", int8_model: "object", feed: dict, rounds: int = 3) -> dict:
    """Batch-1 latency of the float and int8 graphs, best of interleaved rounds (shared machines:
    interleaving keeps both under the same load)."""
    one = {k: v[:1] for k, v in feed.items()}
    sessions = {"float": session(float_model), "int8": session(int8_model)}
    best = {k: np.inf for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            best[k] = min(best[k], time_session(s, one, runs=10))
    return {
        "float_ms": round(best["float"] * 1e3, 3),
        "int8_ms": round(best["int8"] * 1e3, 3),
        "speedup": round(best["float"] / best["int8"], 3),
    }
