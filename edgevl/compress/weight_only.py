"""Weight-only quantisation (`WeightOnlyConfig`): int8w = ORT `MatMulNBits` 8-bit; int4w =
4-bit blocks (`MatMulNBits`, token embeddings as `GatherBlockQuantized`), with the layers whose
4-bit blocks hurt most raised to 8 bits by the shared accuracy gate until it passes."""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np

from edgevl.compress.config import WeightOnlyConfig
from edgevl.compress.gate import gate_loop
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import initializers, layer_paths
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
    stats = collect_stats(model, sorted({l.activation for l in layers}), ctx.feeds[:16], "minmax")
    err = block4_sqnr(model, layers, stats.rows, cfg.group_size)
    # int8w has nothing to raise: one candidate, judged by the gate. int4w raises MatMuls worst
    # first, then keeps the 4-bit embedding tables float (their error is not measured per layer).
    weights = initializers(model)
    tables = [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in weights]
    order = [n for n, _ in sorted(err.items(), key=lambda kv: kv[1])] if cfg.bits == 4 else []
    if cfg.bits == 4 and cfg.embeddings:
        order += tables

    def build(raise_to_8: dict[str, str]) -> tuple["object", dict[str, int]]:
        m = onnx.ModelProto.FromString(model.SerializeToString())
        if cfg.bits == 8:
            out, _ = weight_only_nbits(m, 8, cfg.group_size, include_gather=False)
            return out, nbits_counts(out)
        out, _ = weight_only_nbits(m, 4, cfg.group_size, include_gather=cfg.embeddings, exclude=list(raise_to_8))
        if set(raise_to_8) - set(tables):
            out, _ = weight_only_nbits(out, 8, 128, include_gather=False, exclude=[
                l.name for l in layers if l.name not in raise_to_8])
        return out, nbits_counts(out)

    def reason(name: str, rank: int) -> str:
        if name in tables:
            return "embedding table kept float by the accuracy gate"
        return f"raised to 8-bit by the accuracy gate (4-bit local SQNR {err[name]:.1f} dB)"

    fix = "export this tower fp32, or raise --max-drop"
    qmodel, raised, (counts,), gate_report = gate_loop(
        ctx, order, err, cfg.max_drop, build, reason, precision=precision, all_float_fix=fix,
    )
    recipe = QuantRecipe(ctx.component, precision, cfg.to_json(), calibration=dict(ctx.calibration))
    recipe.float_layers = dict(raised)
    passes = {"gate": gate_report,
              "local_sqnr_db_4bit": {n: round(v, 2) for n, v in sorted(err.items(), key=lambda kv: kv[1])},
              **counts}
    return qmodel, {"recipe": recipe, "passes": passes, "paths": paths}
