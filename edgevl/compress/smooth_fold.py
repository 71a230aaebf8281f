"""SmoothQuant's fold: per-channel factors moved from an activation into the weights that read
it, with the 1/s folded into what produces the activation where that costs nothing at run time."""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgevl.compress.ort_graph import consumers, drop_unread_initializers, initializers, insert_before, producers


_HEADS_PERM = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


def value_projection_nodes(model: "object", tensor: str) -> Optional[tuple["object", "object"]]:
    """(V MatMul node, V bias Add node) whose output column j is channel j of `tensor`, where
    `tensor` is an attention output merged back to `[B, S, H*D]` (Reshape(Transpose(Attention)))
    and the standard Attention's V is Transpose(Reshape(Add(MatMul(x, W_v), b_v))) with constant
    W_v and b_v; None if the graph is not that, or if an intermediate tensor has another reader.
    Attention output channels are linear in V's (softmax(QK^T) mixes tokens, never channels), so
    a per-channel factor on `tensor` is a per-column factor on W_v and b_v. W_v and b_v may be
    read elsewhere too (the exporter shares initializers of equal value): whoever scales them
    must give this MatMul and Add their own copies (`fold_smoothing` does)."""
    from onnx import helper

    inits = initializers(model)
    producer = producers(model)
    readers = {t: len(r) for t, r in consumers(model).items()}

    def made_by(t: str, op: str, perm: Optional[list[int]] = None) -> Optional[object]:
        node = producer.get(t)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx") or readers.get(t, 0) != 1:
            return None
        if perm is not None:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if list(attrs.get("perm", [])) != perm:
                return None
        return node

    merge = made_by(tensor, "Reshape")
    out_t = made_by(merge.input[0], "Transpose", _HEADS_PERM) if merge is not None else None
    attention = made_by(out_t.input[0], "Attention") if out_t is not None else None
    if attention is None or len(attention.input) < 3 or any(attention.output[1:]):
        return None
    v_t = made_by(attention.input[2], "Transpose", _HEADS_PERM)
    split = made_by(v_t.input[0], "Reshape") if v_t is not None else None
    add = made_by(split.input[0], "Add") if split is not None else None
    matmul = made_by(add.input[0], "MatMul") if add is not None else None
    if matmul is None or matmul.input[1] not in inits or add.input[1] not in inits:
        return None
    return matmul, add


def value_projection(model: "object", tensor: str) -> Optional[tuple[str, str]]:
    """(V weight, V bias) initializer names of `value_projection_nodes`, or None."""
    nodes = value_projection_nodes(model, tensor)
    return None if nodes is None else (nodes[0].input[1], nodes[1].input[1])


class _Owned:
    """Initializers a rewrite may change in place: an initializer read by more than one input
    slot (the dynamo exporter stores equal constants once, e.g. every LayerNorm gamma of a
    freshly initialised model, or every zero bias) is copied for the slot being changed, so the
    change cannot leak into the other readers."""

    def __init__(self, model: "object") -> None:
        self.model = model
        self.inits = initializers(model)
        self.readers = {t: len(r) for t, r in consumers(model).items()}
        self.copies = 0

    def array(self, node: "object", idx: int) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[node.input[idx]]).astype(np.float32)

    def set(self, node: "object", idx: int, value: np.ndarray) -> None:
        from onnx import numpy_helper

        name = node.input[idx]
        if self.readers.get(name, 0) > 1:
            self.readers[name] -= 1
            new = f"{name}__{node.name}_{idx}"
            node.input[idx] = new
            self.readers[new] = 1
            self.model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new))
            self.inits[new] = self.model.graph.initializer[-1]
            self.copies += 1
            return
        self.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def fold_smoothing(model: "object", smooth: dict[str, np.ndarray]) -> tuple["object", dict]:
    """SmoothQuant: for each activation tensor t with per-input-channel factors s, the consuming
    MatMuls see t / s and their weight rows are multiplied by s (the product is unchanged, the
    outlier channels of t shrink, the weights take them on per output channel).

    Where the 1/s can be folded into what produces t, it costs nothing at run time:
    - a LayerNormalization whose every consumer is a constant-weight MatMul (pre-LN
      transformers): into its gamma and beta;
    - an attention output (the out-projection's input): into the V projection's weight columns
      and bias (see `value_projection`).
    Otherwise (post-LN BERT, where a LayerNorm output also feeds the residual Add; GELU outputs)
    one `Mul(t, 1/s)` is inserted on the MatMul branch only.

    An initializer this changes that other nodes also read (the exporter stores equal constants
    once) is copied for the node being changed first (`_Owned`).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    owned = _Owned(model)
    inits = owned.inits
    made_by = producers(model)
    readers = consumers(model)
    folded, folded_v, inserted, skipped = [], [], [], {}
    before: dict[str, list] = {}
    for tensor, s in smooth.items():
        s = np.asarray(s, np.float32)
        prod = made_by.get(tensor)
        users = readers.get(tensor, [])
        linear = [u for u in users if u.op_type == "MatMul" and u.input[0] == tensor and u.input[1] in inits]
        if not linear:
            skipped[tensor] = "no constant-weight MatMul consumes it"
            continue
        for u in linear:
            owned.set(u, 1, owned.array(u, 1) * s[:, None])
        foldable = (
            prod is not None
            and prod.op_type == "LayerNormalization"
            and len(prod.input) >= 3
            and prod.input[1] in inits
            and prod.input[2] in inits
            and len(linear) == len(users)
        )
        if foldable:
            for idx in (1, 2):
                owned.set(prod, idx, owned.array(prod, idx) / s)
            folded.append(tensor)
            continue
        into_v = value_projection_nodes(model, tensor) if len(linear) == len(users) else None
        if into_v is not None:
            v_matmul, v_add = into_v
            owned.set(v_matmul, 1, owned.array(v_matmul, 1) / s[None, :])
            b_v = owned.array(v_add, 1)
            owned.set(v_add, 1, b_v / s.reshape(b_v.shape))
            folded_v.append(tensor)
            continue
        inv, out = f"{tensor}_smooth_inv", f"{tensor}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        before.setdefault(linear[0].name, []).append(helper.make_node("Mul", [tensor, inv], [out], name=f"{tensor}_smooth"))
        for u in linear:
            u.input[0] = out
        inserted.append(tensor)
    insert_before(model, before)
    # Originals whose every reader now has its own copy are dropped.
    drop_unread_initializers(model)
    return model, {
        "smoothquant_folded": len(folded), "smoothquant_into_v": len(folded_v), "smoothquant_mul": len(inserted),
        "smoothquant_unshared_initializers": owned.copies, "smoothquant_skipped": skipped,
    }
