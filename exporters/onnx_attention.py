"""Graph passes over exported ONNX that concern attention. Each returns what it did (a count)."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
import numpy as np

MSFT_DOMAIN = "com.microsoft"
# The last two are ORT's packed-QKV ops the int8 path writes (edgevl/compress/packed_attention.py).
FUSED_OPS = {("", "Attention"), (MSFT_DOMAIN, "MultiHeadAttention"), (MSFT_DOMAIN, "Attention"), (MSFT_DOMAIN, "QAttention")}


def count_fused_attention(model: onnx.ModelProto) -> int:
    return sum((n.domain, n.op_type) in FUSED_OPS for n in model.graph.node)


def _static_shape(model: onnx.ModelProto, name: str) -> list:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return []


def lower_attention_to_ort_mha(model: onnx.ModelProto) -> int:
    """Rewrite each standard `Attention` (4-D q/k/v `[B, H, S, D]`) into ONNX Runtime's
    `com.microsoft.MultiHeadAttention`, which takes `[B, S, H*D]`; returns how many it rewrote.

    The transposes added around the op cancel against the model's own (ORT's transpose optimiser
    removes the pairs), so the fused op is what runs.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in model.graph.node:
        if (node.domain, node.op_type) != ("", "Attention"):
            new_nodes.append(node)
            continue
        q_shape = _static_shape(inferred, node.input[0])
        if len(q_shape) != 4 or q_shape[1] is None or q_shape[3] is None:
            new_nodes.append(node)  # not the 4-D form edgevl emits; leave it standard
            continue
        heads, head_dim = q_shape[1], q_shape[3]
        v_shape = _static_shape(inferred, node.input[2])
        v_dim = v_shape[3] if len(v_shape) == 4 and v_shape[3] else head_dim
        scale = next((a.f for a in node.attribute if a.name == "scale"), head_dim**-0.5)
        tag = node.name or f"attention_{rewritten}"
        flat_shape = f"{tag}/flat_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat_shape))
        flat = []
        for i, which in enumerate(("q", "k", "v")):
            t, r = f"{tag}/{which}_bshd", f"{tag}/{which}_flat"
            new_nodes.append(helper.make_node("Transpose", [node.input[i]], [t], perm=[0, 2, 1, 3], name=t))
            new_nodes.append(helper.make_node("Reshape", [t, flat_shape], [r], name=r))
            flat.append(r)
        mask = node.input[3] if len(node.input) > 3 else ""
        mha_out = f"{tag}/mha_out"
        new_nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [flat[0], flat[1], flat[2], "", "", mask],
                [mha_out],
                domain=MSFT_DOMAIN,
                num_heads=heads,
                scale=float(scale),
                name=f"{tag}/MultiHeadAttention",
            )
        )
        split_shape = f"{tag}/split_shape"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([0, 0, heads, v_dim], np.int64), split_shape)
        )
        new_nodes.append(helper.make_node("Reshape", [mha_out, split_shape], [f"{tag}/bshd_out"], name=f"{tag}/unflat"))
        new_nodes.append(
            helper.make_node("Transpose", [f"{tag}/bshd_out"], [node.output[0]], perm=[0, 2, 1, 3], name=f"{tag}/bhsd")
        )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        if not any(op.domain == MSFT_DOMAIN for op in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MSFT_DOMAIN, 1))
    return rewritten
