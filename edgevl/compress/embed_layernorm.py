"""Fuse a BERT-style embedding (word + position + token-type lookups, summed, LayerNorm) into
ONNX Runtime's `com.microsoft.EmbedLayerNormalization`.

In the exported MiniLM text tower that subgraph is 12 nodes (three Gathers, two Adds, the
LayerNorm, and the Shape/Slice/Concat/Expand/GatherElements that build position and token-type
ids from buffers); fused it is one Cast and one kernel. At batch 1 the tower is bound by
per-node overhead as much as by its GEMMs, which is why the ORT int8 path takes it.

Which lookup is which is measured, not guessed from names: on real feeds (and on the same feeds
cut to half their length) the position lookup must read 0..S-1 on every row and the token-type
lookup one constant id, whose row is folded into the position table (the fused op then needs no
token-type input). The fused graph must then reproduce the original on those feeds, or the
graph is left as it was and the reason is reported. The op is ORT's own: only ORT artifacts
get it.
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
class _Match:
    layernorm: "object"
    word: "object"  # Gather reading the ids graph input
    others: tuple  # the two other Gathers (position and token type, in some order)


def fuse_embed_layernorm(
    model: "object", feeds: list[dict[str, np.ndarray]], ids_input: str = "input_ids", rtol: float = 1e-4,
) -> tuple["object", Optional[str]]:
    """(fused copy, None) or (model unchanged, why not)."""
    import onnx

    if ids_input not in {i.name for i in model.graph.input}:
        return model, f"no {ids_input!r} input"
    match = _find(model, ids_input)
    if match is None:
        return model, "no LayerNormalization over the sum of three constant-table Gathers, one reading the ids"
    if not feeds:
        return model, "no calibration feeds to check the fused graph on"
    feeds = check_feeds(feeds) + [_halved(f, ids_input) for f in feeds[:2]]
    reference, names = session_with_outputs(model, [g.input[1] for g in match.others])
    roles = _roles(reference, names, match, feeds)
    if isinstance(roles, str):
        return model, roles
    position, token_type, type_id = roles
    fused = onnx.ModelProto.FromString(model.SerializeToString())
    _rewrite(fused, match, position, token_type, type_id, ids_input)
    prune_dead_nodes(fused)
    worst = max_relative_error(reference, fused, feeds)
    if worst > rtol:
        return model, f"fused embedding differs from the original (max relative error {worst:.2e})"
    return fused, None


def _halved(feed: dict[str, np.ndarray], ids_input: str) -> dict[str, np.ndarray]:
    """The feed cut to half its sequence length (every input shaped like the ids)."""
    length = feed[ids_input].shape[1]
    keep = max(1, length // 2)
    return {k: v[:, :keep] if v.ndim == 2 and v.shape[1] == length else v for k, v in feed.items()}


def _find(model: "object", ids_input: str) -> Optional[_Match]:
    inits = {i.name for i in model.graph.initializer}
    producer = producers(model)
    readers = consumers(model)

    def leaves(tensor: str, depth: int = 0) -> list:
        node = producer.get(tensor)
        if node is not None and node.op_type == "Add" and depth < 2 and len(readers.get(tensor, [])) == 1:
            return leaves(node.input[0], depth + 1) + leaves(node.input[1], depth + 1)
        return [node]

    for ln in model.graph.node:
        if ln.op_type != "LayerNormalization" or len(ln.input) < 3 or not {ln.input[1], ln.input[2]} <= inits:
            continue
        if any(a.name == "axis" and a.i != -1 for a in ln.attribute):
            continue
        gathers = leaves(ln.input[0])
        if len(gathers) != 3 or any(
            g is None or g.op_type != "Gather" or g.input[0] not in inits or any(a.i != 0 for a in g.attribute if a.name == "axis")
            for g in gathers
        ):
            continue
        word = [g for g in gathers if g.input[1] == ids_input]
        if len(word) == 1:
            return _Match(ln, word[0], tuple(g for g in gathers if g is not word[0]))
    return None


def _roles(
    reference: "object", names: list[str], match: _Match, feeds: list[dict[str, np.ndarray]],
) -> "tuple[object, object, int] | str":
    """(position Gather, token-type Gather, the constant token-type id) as observed on `feeds`,
    or why the two lookups are not that."""
    looks_like_positions = {g.name: True for g in match.others}
    constant: dict[str, set] = {g.name: set() for g in match.others}
    for feed in feeds:
        values = dict(zip(names, reference.run(None, feed)))
        length = feed[match.word.input[1]].shape[-1]
        for g in match.others:
            idx = np.asarray(values[g.input[1]])
            rows = idx.reshape(-1, idx.shape[-1]) if idx.ndim else idx.reshape(1, 1)
            looks_like_positions[g.name] &= bool(rows.shape[-1] == length and np.all(rows == np.arange(length)))
            constant[g.name].update(np.unique(idx).tolist())
    position = [g for g in match.others if looks_like_positions[g.name]]
    token_type = [g for g in match.others if len(constant[g.name]) == 1 and not looks_like_positions[g.name]]
    if len(position) != 1 or len(token_type) != 1:
        return "the two non-word lookups are not positions 0..S-1 and one constant token type"
    return position[0], token_type[0], int(next(iter(constant[token_type[0].name])))


def _rewrite(model: "object", match: _Match, position: "object", token_type: "object", type_id: int, ids_input: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    inits = initializers(model)
    ln = match.layernorm
    name = f"{ln.name}/embed_layernorm"
    table = numpy_helper.to_array(inits[position.input[0]]).astype(np.float32)
    table = table + numpy_helper.to_array(inits[token_type.input[0]]).astype(np.float32)[type_id][None, :]
    model.graph.initializer.append(numpy_helper.from_array(table, f"{name}/position_plus_token_type"))
    epsilon = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
    ids32 = f"{ids_input}_int32"
    fused = [
        helper.make_node("Cast", [ids_input], [ids32], to=TensorProto.INT32, name=ids32),
        helper.make_node(
            "EmbedLayerNormalization",
            [ids32, "", match.word.input[0], f"{name}/position_plus_token_type", "", ln.input[1], ln.input[2]],
            [ln.output[0], f"{name}/mask_index"], name=name, domain=MSFT_DOMAIN, epsilon=epsilon,
        ),
    ]
    # The fused nodes take the LayerNorm's place (their inputs are graph inputs and initializers,
    # so any earlier position is valid); the old lookups fall to pruning.
    nodes = []
    for n in model.graph.node:
        nodes.extend(fused if n.name == ln.name else [n])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    use_msft_opset(model)
