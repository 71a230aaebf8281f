"""Recipe -> Q/DQ ONNX graph, and the graph helpers calibration needs.

Only MatMul (and Gemm, normalised to MatMul first) with a constant 2-D weight is quantised:
  activation --QuantizeLinear(uint8, per tensor)--DequantizeLinear--\
                                                                    MatMul -> float output
  weight (int8 initializer, per output channel) --DequantizeLinear--/
This is the pattern ONNX Runtime's CPU graph optimiser fuses into an integer MatMul
(MatMulIntegerToFloat) and OpenVINO reads as FakeQuantize, so both runtimes run the same file.
The standard `Attention` op (opset 23) is never touched: ORT's own quantizer mistakes it for
its contrib op, and attention in int8 is where accuracy goes first.

Weight-only int4 uses ORT's `MatMulNBits` (block-wise) through `matmul_nbits_quantizer`, which
also packs the token embedding table (Gather) into `GatherBlockQuantized`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from edgevl.compress.recipe import QuantRecipe
from edgevl.errors import ExportError

# onnx 1.23 writes IR 14 by default, which ORT 1.31 rejects.
IR_VERSION = 10


@dataclass(frozen=True)
class LinearNode:
    """A MatMul whose second input is a constant `[K, N]` weight."""

    name: str
    activation: str
    weight: str
    output: str
    in_features: int
    out_features: int


def _onnx():
    import onnx

    return onnx


def strip_value_info(model: "object") -> "object":
    """Drop stored intermediate shapes: the dynamo exporter's are not always what
    onnx's strict shape inference re-derives, which makes ORT's quantizer refuse the model."""
    del model.graph.value_info[:]
    return model


def _initializers(model: "object") -> dict:
    return {init.name: init for init in model.graph.initializer}


def normalize_gemm(model: "object") -> int:
    """Rewrite `Gemm(x, W[, C])` with constant W (alpha=beta=1, transA=0) as MatMul (+ Add),
    so every linear layer has one form: a `[K, N]` weight, output channels on axis 1."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    inits = _initializers(model)
    count = 0
    nodes = list(model.graph.node)
    new_nodes = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0) != 0
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
            replacement = numpy_helper.from_array(np.ascontiguousarray(weight), node.input[1])
            inits[node.input[1]].CopyFrom(replacement)
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name)
        matmul.metadata_props.extend(node.metadata_props)  # keeps the module path for reports
        new_nodes.append(matmul)
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_bias"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del onnx
    return count


def linear_nodes(model: "object") -> list[LinearNode]:
    """The quantisable layers, in graph order."""
    inits = _initializers(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[1]].dims)
        if len(dims) != 2:
            continue
        found.append(LinearNode(node.name, node.input[0], node.input[1], node.output[0], dims[0], dims[1]))
    return found


def prepare(model: "object") -> tuple["object", dict]:
    """The float graph every later step works on (copy): value_info stripped, Gemm -> MatMul,
    every node named."""
    onnx = _onnx()
    model = onnx.ModelProto.FromString(model.SerializeToString())
    strip_value_info(model)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    gemm = normalize_gemm(model)
    return model, {"gemm_to_matmul": gemm}


def quantize_weight_per_channel(
    weight: np.ndarray, bits: int = 8, qmax: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 1 of `[K, N]`) quantisation -> (int8 codes, scales).
    `qmax`: the largest |code| (default 2**(bits-1) - 1; 64 keeps int8 saturation-safe, see
    edgevl.compress.config.CPU_ISAS)."""
    qmax = qmax or 2 ** (bits - 1) - 1
    amax = np.abs(weight).max(axis=0)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(weight / scales[None, :]), -qmax, qmax).astype(np.int8)
    return codes, scales


def weight_recipe(weight: np.ndarray, bits: int = 8, qmax: Optional[int] = None) -> dict:
    qmax = qmax or 2 ** (bits - 1) - 1
    _, scales = quantize_weight_per_channel(weight, bits, qmax)
    return {"axis": 1, "bits": bits, "qmax": qmax, "symmetric": True, "scales": [float(s) for s in scales]}


def apply_recipe(model: "object", recipe: QuantRecipe) -> tuple["object", dict]:
    """A copy of the prepared float `model` with Q/DQ placed as the recipe says.

    Returns the model and what was done: `{"quantized_linear": n, "float_linear": m, ...}`.
    SmoothQuant factors in the recipe must already be folded into the float graph
    (`fold_smoothing`), because the fold changes the producer of the activation, not the layer.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = _initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    missing = [n for n in recipe.layers if n not in by_name]
    if missing:
        raise ExportError(
            f"quantisation recipe names layers the graph does not have: {', '.join(missing[:5])}; "
            "the recipe was made for another export of this tower, re-run calibration"
        )
    new_inits = []
    quant_act: dict[tuple[str, float, int], str] = {}
    pre: dict[str, list] = {}
    for name, layer in recipe.layers.items():
        node = by_name[name]
        if layer.weight not in inits:
            raise ExportError(f"layer {name!r}: weight {layer.weight!r} is not a constant in the graph")
        weight = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        bits = int(layer.weight_q.get("bits", 8))
        scales = np.asarray(layer.weight_q["scales"], np.float32)
        if scales.shape != (weight.shape[1],):
            raise ExportError(
                f"layer {name!r}: recipe has {scales.shape[0]} weight scales, weight has {weight.shape[1]} "
                "output channels; re-run calibration"
            )
        qmax = int(layer.weight_q.get("qmax", 2 ** (bits - 1) - 1))
        codes = np.clip(np.round(weight / scales[None, :]), -qmax, qmax).astype(np.int8)
        wq, ws, wz = f"{layer.weight}_q", f"{layer.weight}_scale", f"{layer.weight}_zp"
        new_inits += [
            numpy_helper.from_array(codes, wq),
            numpy_helper.from_array(scales, ws),
            numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), wz),
        ]
        nodes = [helper.make_node("DequantizeLinear", [wq, ws, wz], [f"{layer.weight}_dq"], name=f"{name}_w_dq", axis=1)]
        # One QuantizeLinear per (tensor, scale, zero point); each consumer gets its own DQ so
        # ORT's fusion (which wants a DQ with one consumer) sees a clean node unit.
        act = layer.act
        key = (layer.activation, float(act["scale"]), int(act["zero_point"]))
        a_s = f"{name}_a_scale"
        a_z = f"{name}_a_zp"
        new_inits += [
            numpy_helper.from_array(np.asarray(act["scale"], np.float32), a_s),
            numpy_helper.from_array(np.asarray(act["zero_point"], np.uint8), a_z),
        ]
        if key not in quant_act:
            q_out = f"{name}_a_q"
            nodes.append(helper.make_node("QuantizeLinear", [layer.activation, a_s, a_z], [q_out], name=f"{name}_a_quant"))
            quant_act[key] = q_out
        nodes.append(
            helper.make_node("DequantizeLinear", [quant_act[key], a_s, a_z], [f"{name}_a_dq"], name=f"{name}_a_dequant")
        )
        node.input[0] = f"{name}_a_dq"
        node.input[1] = f"{layer.weight}_dq"
        pre[name] = nodes
    _insert_before(model, pre)
    # Float weights no longer used by anything are dropped (that is where the size goes).
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + new_inits)
    _ensure_opset(model)
    del TensorProto
    return model, {
        "quantized_linear": len(recipe.layers),
        "float_linear": len(recipe.float_layers),
        "quantize_nodes": len(quant_act),
    }


def _insert_before(model: "object", before: dict[str, list]) -> None:
    """Put each list of new nodes right before the node it is keyed by (keeps topological order)."""
    if not before:
        return
    nodes = []
    for node in model.graph.node:
        nodes.extend(before.get(node.name, []))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _ensure_opset(model: "object") -> None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 13:
            raise ExportError(f"per-channel Q/DQ needs opset >= 13; the graph has opset {imp.version}")
    model.ir_version = min(model.ir_version or IR_VERSION, IR_VERSION)


_HEADS_PERM = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


def _reader_counts(model: "object") -> dict[str, int]:
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    return readers


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

    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = _reader_counts(model)

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
        self.inits = _initializers(model)
        self.readers = _reader_counts(model)
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
    onnx = _onnx()
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    owned = _Owned(model)
    inits = owned.inits
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded, folded_v, inserted, skipped = [], [], [], {}
    before: dict[str, list] = {}
    for tensor, s in smooth.items():
        s = np.asarray(s, np.float32)
        prod = producers.get(tensor)
        users = consumers.get(tensor, [])
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
    _insert_before(model, before)
    # Originals whose every reader now has its own copy are dropped.
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, {
        "smoothquant_folded": len(folded), "smoothquant_into_v": len(folded_v), "smoothquant_mul": len(inserted),
        "smoothquant_unshared_initializers": owned.copies, "smoothquant_skipped": skipped,
    }


def weight_only_nbits(
    model: "object", bits: int, block_size: int, symmetric: bool = True, include_gather: bool = True,
    exclude: Optional[Iterable[str]] = None,
) -> tuple["object", dict]:
    """Weight-only block quantisation with ORT's MatMulNBits (and GatherBlockQuantized for the
    token embedding table)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    op_types = ("MatMul", "Gather") if include_gather else ("MatMul",)
    quant_axes = (("MatMul", 0), ("Gather", 1))
    config = mnb.DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, accuracy_level=None, bits=bits,
        op_types_to_quantize=op_types, quant_axes=quant_axes,
    )
    quantizer = mnb.MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric,
        nodes_to_exclude=list(exclude or []), op_types_to_quantize=op_types, quant_axes=quant_axes,
        algo_config=config,
    )
    quantizer.process()
    out = quantizer.model.model
    counts: dict[str, int] = {}
    for n in out.graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    _ensure_opset(out)
    return out, counts
