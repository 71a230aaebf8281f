"""FLOPs of one inference, counted from the artifact's graph at a given batch and text length.

Counted ops and formulas (multiply and add are two operations; B = product of the broadcast
batch dimensions of the output):
  MatMul, MatMulInteger, QLinearMatMul, MatMulIntegerToFloat, DynamicQuantizeMatMul,
  MatMulNBits (ONNX) and MatMul (OpenVINO; transpose_a / transpose_b honoured):
                       2 * B * M * K * N for [.., M, K] x [.., K, N]
  Gemm:                2 * M * K * N
  Conv, ConvInteger, QLinearConv (ONNX), Convolution, GroupConvolution (OpenVINO):
                       2 * N * C_out * prod(output spatial) * (C_in / group) * prod(kernel)
  Attention (ONNX opset 23), com.microsoft MultiHeadAttention, OpenVINO ScaledDotProductAttention:
                       2 * B * H * S_q * S_kv * d_head   (Q K^T)
                     + 2 * B * H * S_q * S_kv * d_v      (softmax(.) V)
  com.microsoft Attention / QAttention (input [B, S, D_in], packed weight [D_in, 3 * D]):
                       2 * B * S * D_in * 3D (the packed projection) + 4 * B * S * S * D
Everything else (softmax, normalisation, activations, element-wise ops, pooling) is left out:
those ops are memory-bound and are a few percent of a transformer's or CNN's arithmetic. FLOPs
are those of the graph as stored: an int8 op counts the same as its float original. A node whose
shapes are unknown after shape inference is counted in `uncounted`, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MATMUL_OPS = ("MatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
CONV_OPS = ("Conv", "ConvInteger", "QLinearConv")
# Nodes that make a graph compute in low precision (counted as `int8_nodes`, not as FLOPs).
LOW_PRECISION_ONNX = ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul",
                      "QLinearConv", "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits")
LOW_PRECISION_OV_TYPES = ("i8", "u8", "i4", "u4")
# Input index of the second operand per ONNX matmul op (QLinearMatMul interleaves scales).
B_INDEX = {"QLinearMatMul": 3}
CONV_W_INDEX = {"QLinearConv": 3}


@dataclass
class FlopCount:
    total: float = 0.0
    by_op: dict[str, float] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # op types whose shapes were unknown
    source: str = ""
    int8_nodes: int = 0  # quantize / integer-matmul nodes (ONNX), FakeQuantize and 8/4-bit constants (OpenVINO)

    def add(self, op: str, flops: float) -> None:
        self.total += flops
        self.by_op[op] = self.by_op.get(op, 0.0) + flops

    def to_json(self) -> dict:
        return {"total": self.total, "by_op": self.by_op, "uncounted": sorted(set(self.uncounted)),
                "source": self.source, "int8_nodes": self.int8_nodes}


def matmul_flops(a: Sequence[int], b: Sequence[int], transpose_a: bool = False, transpose_b: bool = False) -> float:
    """2 * B * M * K * N for numpy-style matmul of shapes a and b (1-D operands promoted)."""
    a, b = list(a), list(b)
    if len(a) == 1:
        a = [1, *a] if not transpose_a else [*a, 1]
    if len(b) == 1:
        b = [*b, 1] if not transpose_b else [1, *b]
    if transpose_a:
        a[-1], a[-2] = a[-2], a[-1]
    if transpose_b:
        b[-1], b[-2] = b[-2], b[-1]
    m, k, n = a[-2], a[-1], b[-1]
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = [1] * (width - len(batch_a)) + batch_a
    batch_b = [1] * (width - len(batch_b)) + batch_b
    return 2.0 * prod(max(x, y) for x, y in zip(batch_a, batch_b)) * m * k * n


def conv_flops(weight: Sequence[int], output: Sequence[int], group: int = 1) -> float:
    """weight [C_out, C_in / group, *kernel], output [N, C_out, *spatial]; `group` is folded in
    the weight's second dimension already (ONNX and OpenVINO Convolution layouts)."""
    c_out, c_in_per_group, *kernel = weight
    return 2.0 * output[0] * c_out * prod(output[2:]) * c_in_per_group * prod(kernel)


def attention_flops(batch: int, heads: int, s_q: int, s_kv: int, d_head: int, d_v: Optional[int] = None) -> float:
    return 2.0 * batch * heads * s_q * s_kv * (d_head + (d_head if d_v is None else d_v))


def _static(shape: Optional[Sequence[Optional[int]]]) -> Optional[list[int]]:
    if shape is None or any(d is None or d < 0 for d in shape):
        return None
    return [int(d) for d in shape]


def count_onnx(path: Path, input_shapes: dict[str, list[int]], feeds: Optional[dict] = None) -> FlopCount:
    """FLOPs of an ONNX model with its inputs fixed to `input_shapes`. Shapes come from onnx's
    shape inference; where it leaves a counted op's shapes unknown (e.g. after a com.microsoft
    op) and `feeds` (of those shapes) are given, from one ONNX Runtime run that returns the
    op's input tensors."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.ClearField("dim_param")
                dim.dim_value = int(size)
    shapes = _onnx_shapes(onnx.shape_inference.infer_shapes(model, data_prop=True))
    count = FlopCount(source=f"ONNX graph {path.name}")
    for node in model.graph.node:
        _count_onnx_node(node, shapes, count)
    if count.uncounted and feeds is not None:
        shapes.update(_run_shapes(path, model, feeds))
        count = FlopCount(source=f"ONNX graph {path.name} (shapes from one ONNX Runtime run)")
        for node in model.graph.node:
            _count_onnx_node(node, shapes, count)
    count.int8_nodes = sum(1 for node in model.graph.node if node.op_type in LOW_PRECISION_ONNX)
    return count


def _onnx_shapes(inferred: "object") -> dict[str, list[Optional[int]]]:
    shapes: dict[str, list[Optional[int]]] = {}
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return shapes


COUNTED_OPS = (*MATMUL_OPS, "Gemm", "MatMulNBits", *CONV_OPS, "Attention", "MultiHeadAttention", "QAttention")


def _run_shapes(path: Path, model: "object", feeds: dict) -> dict[str, list[Optional[int]]]:
    """Shapes of the counted ops' inputs and outputs, read from one ONNX Runtime run of the model
    with those tensors added as graph outputs (weights loaded from the model's folder)."""
    import onnx
    import onnxruntime as ort

    full = onnx.load(str(path))  # with external data: the session needs the weights
    known = {o.name for o in full.graph.output} | {i.name for i in full.graph.initializer} | {i.name for i in full.graph.input}
    wanted = sorted({t for n in full.graph.node if n.op_type in COUNTED_OPS for t in [*n.input, *n.output]
                     if t and t not in known})
    full.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(full.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
    return {name: list(np.shape(value)) for name, value in zip(names, values)}


def _attr(node: "object", name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _count_onnx_node(node: "object", shapes: dict, count: FlopCount) -> None:
    op = node.op_type
    get = lambda i: _static(shapes.get(node.input[i])) if len(node.input) > i and node.input[i] else None  # noqa: E731
    if op in MATMUL_OPS or op == "Gemm":
        a, b = get(0), get(B_INDEX.get(op, 1))
        if a is None or b is None:
            count.uncounted.append(op)
            return
        if op == "Gemm":
            count.add(op, matmul_flops(a, b, bool(_attr(node, "transA", 0)), bool(_attr(node, "transB", 0))))
        else:
            count.add(op, matmul_flops(a, b))
    elif op == "MatMulNBits":
        a = get(0)
        if a is None:
            count.uncounted.append(op)
            return
        n, k = _attr(node, "N", 0), _attr(node, "K", 0)
        count.add(op, 2.0 * prod(a[:-1]) * k * n)
    elif op in CONV_OPS:
        w, y = get(CONV_W_INDEX.get(op, 1)), _static(shapes.get(node.output[0]))
        if w is None or y is None:
            count.uncounted.append(op)
            return
        count.add(op, conv_flops(w, y))
    elif op == "Attention" and node.domain in ("", "ai.onnx"):
        q, k, v = get(0), get(1), get(2)
        if q is None or k is None or v is None:
            count.uncounted.append(op)
            return
        if len(q) == 4:  # [B, H, S, d]
            count.add(op, attention_flops(q[0], q[1], q[2], k[2], q[3], v[3]))
        else:  # [B, S, H * d] with q_num_heads / kv_num_heads
            heads, kv_heads = _attr(node, "q_num_heads", 1), _attr(node, "kv_num_heads", 1)
            count.add(op, attention_flops(q[0], heads, q[1], k[1], q[2] // heads, v[2] // kv_heads))
    elif op == "MultiHeadAttention":
        q, k = get(0), get(1)
        heads = _attr(node, "num_heads", 1)
        if q is None or len(q) != 3:
            count.uncounted.append(op)
            return
        s_kv = k[1] if k is not None and len(k) == 3 else q[1]
        count.add(op, attention_flops(q[0], heads, q[1], s_kv, q[2] // heads))
    elif op in ("QAttention",) or (op == "Attention" and node.domain == "com.microsoft"):
        x, w = get(0), get(1)
        if x is None or w is None:
            count.uncounted.append(op)
            return
        batch, seq, d_in = x
        hidden = w[1] // 3
        count.add(op, 2.0 * batch * seq * d_in * w[1] + 4.0 * batch * seq * seq * hidden)


def count_openvino(path: Path, input_shapes: dict[str, list[int]]) -> FlopCount:
    """FLOPs of an OpenVINO IR reshaped to `input_shapes` (input name -> static shape)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    new_shapes = {}
    for port in model.inputs:
        for name in port.get_names():
            if name in input_shapes:
                new_shapes[port] = ov.PartialShape(input_shapes[name])
    if new_shapes:
        model.reshape(new_shapes)
    count = FlopCount(source=f"OpenVINO IR {path.name}")
    for node in model.get_ordered_ops():
        _count_openvino_node(node, count)
        op = node.get_type_name()
        if op == "FakeQuantize" or (op == "Constant" and node.get_element_type().get_type_name() in LOW_PRECISION_OV_TYPES):
            count.int8_nodes += 1
    return count


def _ov_shape(port: "object") -> Optional[list[int]]:
    shape = port.get_partial_shape()
    return [d.get_length() for d in shape] if shape.is_static else None


def _count_openvino_node(node: "object", count: FlopCount) -> None:
    op = node.get_type_name()
    if op not in ("MatMul", "Convolution", "GroupConvolution", "ScaledDotProductAttention"):
        return
    ins = [_ov_shape(node.input(i)) for i in range(node.get_input_size())]
    out = _ov_shape(node.output(0))
    if any(s is None for s in ins[:2]) or out is None:
        count.uncounted.append(op)
        return
    if op == "MatMul":
        attrs = node.get_attributes()
        count.add(op, matmul_flops(ins[0], ins[1], bool(attrs.get("transpose_a")), bool(attrs.get("transpose_b"))))
    elif op == "Convolution":
        count.add(op, conv_flops(ins[1], out))
    elif op == "GroupConvolution":  # weight [G, C_out / G, C_in / G, *kernel]
        groups, c_out_g, c_in_g, *kernel = ins[1]
        count.add(op, conv_flops([groups * c_out_g, c_in_g, *kernel], out))
    else:  # ScaledDotProductAttention: Q [.., S_q, d], K [.., S_kv, d], V [.., S_kv, d_v]
        q, k = ins[0], ins[1]
        v = _ov_shape(node.input(2)) if node.get_input_size() > 2 else k
        heads_batch = prod(q[:-2])
        count.add(op, attention_flops(heads_batch, 1, q[-2], k[-2], q[-1], (v or k)[-1]))
