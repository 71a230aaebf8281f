"""Weight-only quantisation (`WeightOnlyConfig`): int8w = 8-bit blocks; int4w = 4-bit blocks
(token embeddings too), with the layers whose 4-bit blocks hurt most raised to 8 bits by the
shared accuracy gate until it passes.

Two forms of the same blocks: the "standard" ONNX flavour writes ai.onnx ops only (a blocked
`DequantizeLinear` of the int8/int4 weight feeding the `MatMul` or `Gather`, opset 21+); the
"ort" flavour writes ONNX Runtime's `com.microsoft.MatMulNBits` / `GatherBlockQuantized`."""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np

from edgevl.compress.config import WeightOnlyConfig, weight_qmax
from edgevl.compress.gate import gate_loop
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import drop_unread_initializers, initializers, insert_before, layer_paths
from edgevl.compress.qdq import ensure_opset, linear_nodes
from edgevl.compress.recipe import QuantRecipe
from edgevl.compress.stats import collect_stats, output_sqnr

NBITS_OPS = ("MatMulNBits", "GatherBlockQuantized")


def nbits_counts(model: "object") -> dict[str, int]:
    """How many `MatMulNBits` / `GatherBlockQuantized` nodes the graph has (absent: none)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in NBITS_OPS:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


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
    ensure_opset(out)
    return out, nbits_counts(out)


def weight_only_qdq(
    model: "object", bits: int, block_size: int, include_gather: bool = True,
    exclude: Optional[Iterable[str]] = None,
) -> tuple["object", dict]:
    """The standard-ONNX form of `weight_only_nbits`, in place: each constant 2-D MatMul weight
    `[K, N]` becomes symmetric int`bits` blocks (8 bits: 7-bit codes) of `block_size` along K (token embedding tables
    `[V, H]`, if `include_gather`, along H) read through a blocked `DequantizeLinear`.
    Returns (model, {"weight_only_matmuls": n, "weight_only_gathers": n})."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    skip = set(exclude or [])
    inits = initializers(model)
    # 8-bit codes stay within +-64: ONNX Runtime runs DequantizeLinear + MatMul as MatMulNBits
    # with int8 activations by default, and x86 CPUs without VNNI may add u8 x s8 pairs into int16
    # with saturation (see edgevl/compress/config.py, CPU_ISAS); 7-bit codes cannot overflow.
    qmax, dtype = (7, ml_dtypes.int4) if bits == 4 else (weight_qmax("any"), np.int8)
    done: dict[str, str] = {}  # weight initializer -> its dequantized tensor
    before: dict[str, list] = {}
    added = []
    counts = {"weight_only_matmuls": 0, "weight_only_gathers": 0}
    for node in model.graph.node:
        if node.name in skip:
            continue
        if node.op_type == "MatMul" and node.input[1] in inits:
            slot, axis, key = 1, 0, "weight_only_matmuls"
        elif (include_gather and node.op_type == "Gather" and node.input[0] in inits
              and all(a.i == 0 for a in node.attribute if a.name == "axis")):
            slot, axis, key = 0, 1, "weight_only_gathers"
        else:
            continue
        name = node.input[slot]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        if w.ndim != 2:
            continue
        if name not in done:
            q, scale = _symmetric_blocks(w, axis, block_size, qmax)
            q_name, s_name, done[name] = f"{name}_q{bits}", f"{name}_q{bits}_scale", f"{name}_dq{bits}"
            added += [numpy_helper.from_array(q.astype(dtype), q_name), numpy_helper.from_array(scale, s_name)]
            dq = helper.make_node("DequantizeLinear", [q_name, s_name], [done[name]], name=f"{name}_dq{bits}",
                                  axis=axis, block_size=block_size)
            before.setdefault(node.name, []).append(dq)
        node.input[slot] = done[name]
        counts[key] += 1
    insert_before(model, before)
    drop_unread_initializers(model, added)
    ensure_opset(model)
    return model, counts


def _symmetric_blocks(w: np.ndarray, axis: int, block: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes in [-qmax, qmax], float32 scales with ceil(size / block) rows along `axis`); the
    last block may be partial, as ONNX's blocked quantization allows."""
    moved = np.moveaxis(w, axis, 0)
    n = moved.shape[0]
    pad = -n % block
    padded = np.concatenate([moved, np.zeros((pad, *moved.shape[1:]), moved.dtype)]) if pad else moved
    blocks = padded.reshape(-1, block, *moved.shape[1:])
    scale = np.abs(blocks).max(axis=1) / qmax
    scale[scale == 0] = 1.0
    codes = np.clip(np.round(blocks / scale[:, None]), -qmax, qmax).reshape(padded.shape)[:n]
    return np.moveaxis(codes, 0, axis), np.moveaxis(scale.astype(np.float32), 0, axis)


def block4_sqnr(model: "object", layers: list, rows: dict[str, np.ndarray], group_size: int) -> dict[str, float]:
    """Layer -> output SQNR (dB) on calibration rows with its weight in symmetric 4-bit blocks of
    `group_size` input channels (a trailing partial block stays float)."""
    from onnx import numpy_helper

    inits = initializers(model)
    err = {}
    for l in layers:
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        k = w.shape[0] - w.shape[0] % group_size
        if k == 0:  # fewer input channels than one block: nothing of this layer goes to 4 bits
            err[l.name] = float("inf")
            continue
        blocks = w[:k].reshape(-1, group_size, w.shape[1])
        sc = np.abs(blocks).max(1, keepdims=True) / 7
        sc[sc == 0] = 1
        wq = w.copy()
        wq[:k] = (np.clip(np.round(blocks / sc), -8, 7) * sc).reshape(k, -1)
        x = rows[l.activation]
        err[l.name] = output_sqnr(x @ w, x @ wq)
    return err


@register_handler(WeightOnlyConfig)
def _weight_only(ctx: QuantContext, cfg: WeightOnlyConfig) -> tuple["object", dict]:
    import onnx

    model = ctx.model
    paths = layer_paths(model)
    layers = linear_nodes(model)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    precision = f"int{cfg.bits}w"

    # Rank layers by how much 4-bit blocks hurt their output on calibration activations.
    err: dict[str, float] = {}
    if cfg.bits == 4:
        stats = collect_stats(model, sorted({l.activation for l in layers}), ctx.feeds[:16], "minmax")
        err = block4_sqnr(model, layers, stats.rows, cfg.group_size)
    # int8w has nothing to raise: one candidate, judged by the gate. int4w raises MatMuls worst
    # first, then keeps the 4-bit embedding tables float (their error is not measured per layer).
    weights = initializers(model)
    tables = [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    order = [n for n, _ in sorted(err.items(), key=lambda kv: kv[1])] if cfg.bits == 4 else []
    # ONNX's Gather takes no int4 table, and a blocked DequantizeLinear of a whole table runs on
    # every inference (with the tables so, the default text tower's standard int4w measured
    # 2.3-5.7x the ort form's latency, benchmarks/onnx_flavors.py): the standard flavour keeps
    # the tables float.
    standard_float = {t: "embedding table kept float: standard ONNX has no int4 Gather (--onnx-flavor ort "
                         "packs it as GatherBlockQuantized)" for t in tables} if ctx.flavor != "ort" and cfg.bits == 4 else {}
    if cfg.bits == 4 and cfg.embeddings and not standard_float:
        order += tables

    def build(raise_to_8: dict[str, str]) -> tuple["object", dict[str, int]]:
        m = onnx.ModelProto.FromString(model.SerializeToString())
        if ctx.flavor != "ort":
            return _build_standard(m, cfg, list(raise_to_8), [l.name for l in layers])
        if cfg.bits == 8:
            out, _ = weight_only_nbits(m, 8, cfg.group_size, include_gather=False)
            counts = nbits_counts(out)
            return out, {**counts, "weight_only_matmuls": counts.get("MatMulNBits", 0)}
        out, _ = weight_only_nbits(m, 4, cfg.group_size, include_gather=cfg.embeddings, exclude=list(raise_to_8))
        if set(raise_to_8) - set(tables):
            out, _ = weight_only_nbits(out, 8, 128, include_gather=False, exclude=[
                l.name for l in layers if l.name not in raise_to_8])
        counts = nbits_counts(out)
        return out, {**counts, "weight_only_matmuls": counts.get("MatMulNBits", 0)}

    def reason(name: str, rank: int) -> str:
        if name in tables:
            return "embedding table kept float by the accuracy gate"
        return f"raised to 8-bit by the accuracy gate (4-bit local SQNR {err[name]:.1f} dB)"

    fix = "export this tower fp32, or raise --max-drop"
    qmodel, raised, (counts,), gate_report = gate_loop(
        ctx, order, err, cfg.max_drop, build, reason, precision=precision, all_float_fix=fix,
    )
    recipe = QuantRecipe(ctx.component, precision, cfg.to_json(), calibration=dict(ctx.calibration))
    recipe.float_layers = {**(standard_float if cfg.embeddings else {}), **raised}
    passes = {"gate": gate_report,
              # None: no 4-bit block to measure (fewer input channels than one block), valid JSON
              "local_sqnr_db_4bit": {n: round(v, 2) if np.isfinite(v) else None
                                     for n, v in sorted(err.items(), key=lambda kv: kv[1])},
              **counts}
    return qmodel, {"recipe": recipe, "passes": passes, "paths": paths}


def _build_standard(m: "object", cfg: WeightOnlyConfig, raised: list[str], linears: list[str]) -> tuple["object", dict]:
    """The standard-flavour candidate: `cfg.bits` blocks everywhere but `raised` (int4w: those
    at 8 bits in blocks of 128), as in the ORT form; embedding tables stay float."""
    if cfg.bits == 8:
        return weight_only_qdq(m, 8, cfg.group_size, include_gather=False)
    m, counts = weight_only_qdq(m, 4, cfg.group_size, include_gather=False, exclude=raised)
    if set(raised) & set(linears):
        m, more = weight_only_qdq(m, 8, 128, include_gather=False, exclude=[n for n in linears if n not in raised])
        counts = {k: counts[k] + more[k] for k in counts}
    return m, counts
