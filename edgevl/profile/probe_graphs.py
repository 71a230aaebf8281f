"""One-node ONNX graphs run by ONNX Runtime for the GEMM peak probe (imports onnx and
onnxruntime, so a machine without them gets the numpy probe only)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def matmul_session(op: str, size: int) -> Callable[[], object]:
    """A callable that runs `op` ("MatMul" fp32, or "MatMulInteger" u8 x s8) on size x size
    operands, B a constant initializer as in an exported graph."""
    rng = np.random.default_rng(1)
    if op == "MatMul":
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        a_type, out_type = TensorProto.FLOAT, TensorProto.FLOAT
    elif op == "MatMulInteger":
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        b = rng.integers(-127, 127, (size, size), dtype=np.int8)
        a_type, out_type = TensorProto.UINT8, TensorProto.INT32
    else:
        raise ValueError(f"op {op!r} is not probed; use MatMul or MatMulInteger")
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], f"probe_{op}",
        [helper.make_tensor_value_info("A", a_type, [size, size])],
        [helper.make_tensor_value_info("Y", out_type, [size, size])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": a})
