"""Pack each standard `Attention` (opset 23) and its Q/K/V projections into ONNX Runtime's
`com.microsoft.Attention`: one `[K, 3N]` GEMM instead of three MatMuls, three bias Adds and
eight Reshape/Transpose nodes. ORT's dynamic quantizer turns that op into `QAttention` (the
int8 QKV GEMM and the attention in one kernel), which is why the ORT int8 path uses it: at
batch 1 a MiniLM layer is bound by per-node overhead as much as by its GEMMs.

The op is ORT's own, so only ORT artifacts get it. The rewrite is checked, not assumed: the
packed float graph must reproduce the unpacked one on the calibration feeds (padded rows
included), or the graph is left as it was and the reason is reported. That check is what
keeps it off towers whose attention mask is more than the padding mask (CLIP's causal text
mask, for one): the packed op is given the padding mask only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgevl.compress.ort_graph import (
    MSFT_DOMAIN, check_feeds, consumers, initializers, max_relative_error, producers, prune_dead_nodes,
    session_with_outputs, use_msft_opset,
)


@dataclass(frozen=True)
class PackedAttention:
    """One packed op: its node name and the Q, K, V MatMul nodes it replaced."""

    name: str
    projections: tuple[str, str, str]


@dataclass(frozen=True)
class _Match:
    attention: "object"
    projections: tuple  # ((transpose, reshape, bias_add, matmul) for q, k, v)
    out_transpose: "object"
    out_reshape: "object"


def pack_attention(
    model: "object", feeds: list[dict[str, np.ndarray]], mask_input: str = "attention_mask", rtol: float = 1e-4,
) -> tuple["object", list[PackedAttention], Optional[str]]:
    """(packed copy, what was packed, None) or (model unchanged, [], why not)."""
    import onnx

    if mask_input not in {i.name for i in model.graph.input}:
        return model, [], f"no {mask_input!r} input to give the packed op its padding mask"
    matches = _find(model)
    if not matches:
        return model, [], "no standard Attention fed by constant-weight Q/K/V projections"
    if not feeds:
        return model, [], "no calibration feeds to check the packed graph on"
    # One session over the standard graph serves both the heads and the reference outputs.
    reference = session_with_outputs(model, [m.attention.input[0] for m in matches])
    heads = _heads(reference, matches, feeds[0])
    packed = onnx.ModelProto.FromString(model.SerializeToString())
    done = _rewrite(packed, matches, heads, mask_input)
    # The 4-D mask the standard op took and the projections' own weights are read no more.
    prune_dead_nodes(packed)
    worst = max_relative_error(reference[0], packed, check_feeds(feeds))
    if worst > rtol:
        return model, [], f"packed graph differs from the standard one (max relative error {worst:.2e})"
    return packed, done, None


def _find(model: "object") -> list[_Match]:
    """Standard Attention nodes whose q, k, v are Transpose(Reshape(Add(MatMul(x, W), b))) of one
    x, whose output only goes through Transpose -> Reshape back to `[B, S, H*D]`, and whose
    attributes other than `scale` are at their defaults (not causal, no softcap)."""
    inits = {i.name for i in model.graph.initializer}
    producer = producers(model)
    readers = consumers(model)

    def chain(tensor: str) -> Optional[tuple]:
        tr = producer.get(tensor)
        rs = producer.get(tr.input[0]) if tr is not None and tr.op_type == "Transpose" else None
        add = producer.get(rs.input[0]) if rs is not None and rs.op_type == "Reshape" else None
        if add is None or add.op_type != "Add" or add.input[1] not in inits:
            return None
        mm = producer.get(add.input[0])
        if mm is None or mm.op_type != "MatMul" or mm.input[1] not in inits:
            return None
        private = all(len(readers.get(n.output[0], [])) == 1 for n in (mm, add, rs))
        return (tr, rs, add, mm) if private else None

    found = []
    for node in model.graph.node:
        if (node.domain, node.op_type) != ("", "Attention") or len(node.input) < 3:
            continue
        extra_attrs = {a.name for a in node.attribute if a.name != "scale" and _attr_value(a) not in (0, 0.0)}
        chains = [chain(t) for t in node.input[:3]]
        if extra_attrs or any(c is None for c in chains) or len({c[3].input[0] for c in chains}) != 1:
            continue
        users = readers.get(node.output[0], [])
        out_tr = users[0] if len(users) == 1 and users[0].op_type == "Transpose" else None
        after = readers.get(out_tr.output[0], []) if out_tr is not None else []
        if len(after) != 1 or after[0].op_type != "Reshape" or any(node.output[1:]):
            continue
        found.append(_Match(node, tuple(chains), out_tr, after[0]))
    return found


def _attr_value(attr: "object") -> object:
    from onnx import helper

    return helper.get_attribute_value(attr)


def _heads(reference: tuple["object", list[str]], matches: list[_Match], feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Heads per Attention node, read off the `[B, H, S, D]` query it is fed on a real input
    (the dynamo export's reshape targets are computed, not constants)."""
    queries = {m.attention.name: m.attention.input[0] for m in matches}
    sess, names = reference
    values = dict(zip(names, sess.run(None, feed)))
    return {name: int(values[q].shape[1]) for name, q in queries.items()}


def _rewrite(model: "object", matches: list[_Match], heads: dict[str, int], mask_input: str) -> list[PackedAttention]:
    from onnx import TensorProto, helper, numpy_helper

    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    mask_index = f"{mask_input}_int32"
    replaced: dict[str, "object"] = {}
    removed: set[str] = set()
    done = []
    for m in matches:
        att = by_name[m.attention.name]
        mms = [c[3] for c in m.projections]
        weight = np.concatenate([numpy_helper.to_array(inits[mm.input[1]]) for mm in mms], axis=1)
        bias = np.concatenate([numpy_helper.to_array(inits[c[2].input[1]]).reshape(-1) for c in m.projections])
        name = f"{att.name}/packed_qkv"
        model.graph.initializer.extend([
            numpy_helper.from_array(weight.astype(np.float32), f"{name}/weight"),
            numpy_helper.from_array(bias.astype(np.float32), f"{name}/bias"),
        ])
        attrs = {"num_heads": heads[att.name]}
        scale = next((a.f for a in att.attribute if a.name == "scale"), None)
        if scale is not None:
            attrs["scale"] = scale
        replaced[att.name] = helper.make_node(
            "Attention", [mms[0].input[0], f"{name}/weight", f"{name}/bias", mask_index],
            [m.out_reshape.output[0]], name=name, domain=MSFT_DOMAIN, **attrs,
        )
        removed.update(n.name for c in m.projections for n in c)
        removed.update({m.out_transpose.name, m.out_reshape.name})
        done.append(PackedAttention(name, tuple(mm.name for mm in mms)))
    nodes = [helper.make_node("Cast", [mask_input], [mask_index], to=TensorProto.INT32, name=mask_index)]
    for n in model.graph.node:
        if n.name in replaced:
            nodes.append(replaced[n.name])
        elif n.name not in removed:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    use_msft_opset(model)
    return done
