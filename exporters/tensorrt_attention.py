"""TensorRT's view of edgevl's attention blocks: the IAttention import rules, checked on every
standard `Attention` node (a rule broken fails the export, naming the block), and the rewrite of
each node into a plugin node for TensorRT older than 10.14.

IAttention import rules (TensorRT 10.14+ ONNX parser, `Attention` opset 23; from NVIDIA's docs
and parser sources, not run here):
    1. Q, K, V are 3-D `[B, S, H*D]` (then `q_num_heads` and `kv_num_heads` attributes are set)
       or 4-D `[B, H, S, D]`.
    2. Q, K, V share one float type: float32, float16 or bfloat16.
    3. No `past_key` / `past_value` inputs (no KV cache), no `nonpad_kv_seqlen`.
    4. Exactly one output is used (no present_key / present_value / qk_matmul_output).
    5. `softcap` is 0 and `qk_matmul_output_mode` is 0 (IAttention has neither).
    6. `attn_mask`, when given, is bool or the same float type as Q, of rank 2 to 4 (the parser
       unsqueezes it to rank 4).
`is_causal` and `scale` pass through (the parser multiplies Q and K each by sqrt(scale)).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgevl.compress.ort_graph import layer_paths
from edgevl.errors import ExportError

FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16"}
BOOL = 9
PLUGIN_DOMAIN = "trt.plugins"


@dataclass(frozen=True)
class PluginId:
    """How TensorRT's ONNX parser finds a plugin: the node's op_type is the plugin's name, its
    attributes `plugin_namespace` and `plugin_version` the rest of the registry key."""

    name: str
    namespace: str
    version: str


def _types(model: "object") -> dict[str, tuple[int, int]]:
    """Tensor name -> (elem_type, rank) after ONNX shape inference (rank -1 when unknown)."""
    import onnx

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(probe)
    found: dict[str, tuple[int, int]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        found[vi.name] = (t.elem_type, len(t.shape.dim) if t.HasField("shape") else -1)
    for init in inferred.graph.initializer:
        found[init.name] = (init.data_type, len(init.dims))
    return found


def _attrs(node: "object") -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def attention_rule_breaks(model: "object") -> dict[str, list[str]]:
    """Block name -> the IAttention rules its `Attention` node breaks (empty: none broken)."""
    types = _types(model)
    paths = layer_paths(model)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    broken: dict[str, list[str]] = {}
    for node in model.graph.node:
        if (node.domain, node.op_type) not in (("", "Attention"), ("ai.onnx", "Attention")):
            continue
        block = paths.get(node.name) or node.name
        why: list[str] = []
        qkv = [types.get(node.input[i], (0, -1)) if i < len(node.input) else (0, -1) for i in range(3)]
        ranks = {r for _, r in qkv}
        attrs = _attrs(node)
        if not ranks <= {3, 4}:
            why.append(f"Q/K/V ranks {sorted(ranks)}: IAttention takes 3-D or 4-D Q/K/V")
        if 3 in ranks and not ("q_num_heads" in attrs and "kv_num_heads" in attrs):
            why.append("3-D Q/K/V without q_num_heads / kv_num_heads attributes")
        dtypes = {t for t, _ in qkv}
        if len(dtypes) != 1 or not dtypes <= set(FLOAT_TYPES):
            why.append(f"Q/K/V element types {sorted(dtypes)}: must be one of float32, float16, bfloat16")
        if any(i < len(node.input) and node.input[i] for i in (4, 5, 6)):
            why.append("past_key / past_value / nonpad_kv_seqlen given: IAttention has no KV cache")
        extra_out = [o for o in node.output[1:] if o and o in used]
        if extra_out:
            why.append(f"{1 + len(extra_out)} outputs used: IAttention has one")
        if float(attrs.get("softcap", 0.0)) != 0.0 or int(attrs.get("qk_matmul_output_mode", 0)) != 0:
            why.append("softcap or qk_matmul_output_mode set: IAttention has neither")
        if len(node.input) > 3 and node.input[3]:
            mtype, mrank = types.get(node.input[3], (0, -1))
            if mtype != BOOL and mtype not in dtypes:
                why.append(f"attn_mask type {mtype} differs from Q's (use bool or Q's float type)")
            if mrank != -1 and not 2 <= mrank <= 4:
                why.append(f"attn_mask rank {mrank}: must be 2 to 4")
        broken[block] = why
    return broken


def check_iattention(model: "object", component: str) -> dict:
    """Raise ExportError naming every block whose `Attention` node TensorRT would not import as
    IAttention; otherwise return the pass's counts."""
    breaks = attention_rule_breaks(model)
    bad = {b: w for b, w in breaks.items() if w}
    if bad:
        detail = "; ".join(f"{b}: {', '.join(w)}" for b, w in bad.items())
        raise ExportError(
            f"{component} tower: attention not importable as TensorRT IAttention: {detail}; "
            "route the block through edgevl.ops.attention unchanged, or use --trt-attention plugin"
        )
    return {"attention_nodes": len(breaks), "iattention_ready": len(breaks)}


def to_plugin_nodes(model: "object", unmasked: PluginId, masked: PluginId) -> int:
    """Rewrite each standard `Attention` node, in place, into a plugin node (q, k, v[, mask]) ->
    out with the `scale` attribute and the parser's plugin attributes; returns how many."""
    from onnx import helper

    count = 0
    nodes = []
    for node in model.graph.node:
        if (node.domain, node.op_type) not in (("", "Attention"), ("ai.onnx", "Attention")):
            nodes.append(node)
            continue
        attrs = _attrs(node)
        has_mask = len(node.input) > 3 and bool(node.input[3])
        plugin = masked if has_mask else unmasked
        inputs = list(node.input[:4] if has_mask else node.input[:3])
        rewritten = helper.make_node(
            plugin.name, inputs, [node.output[0]], name=node.name, domain=PLUGIN_DOMAIN,
            scale=float(attrs.get("scale", 0.0)), is_causal=int(attrs.get("is_causal", 0)),
            plugin_namespace=plugin.namespace, plugin_version=plugin.version,
        )
        rewritten.metadata_props.extend(node.metadata_props)
        nodes.append(rewritten)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if count and not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    return count


def count_plugin_nodes(model: "object", plugins: tuple[PluginId, ...]) -> int:
    names = {p.name for p in plugins}
    return sum(n.domain == PLUGIN_DOMAIN and n.op_type in names for n in model.graph.node)
