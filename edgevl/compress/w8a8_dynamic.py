"""Dynamic W8A8 (`DynamicW8A8Config`, the ONNX default for `--precision int8` on transformer
towers): int8 weights per output channel, activations quantised at run time (DynamicQuantizeLinear
+ MatMulInteger, standard ONNX ops), after SmoothQuant, with GPTQ weight rounding. For the "ort"
flavour only, Q/K/V are also packed with their attention (com.microsoft QAttention) and the BERT
embedding fused (com.microsoft EmbedLayerNormalization) where each rewrite checks out
numerically; the "standard" flavour holds ai.onnx ops only."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgevl.calibration.observers import qparams_for_range
from edgevl.compress.config import DynamicW8A8Config
from edgevl.compress.embed_layernorm import fuse_embed_layernorm
from edgevl.compress.gate import gate_loop
from edgevl.compress.gptq import gptq_int8, input_hessians
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import initializers, quiet_ort_quantizer
from edgevl.compress.packed_attention import pack_attention
from edgevl.compress.qdq import strip_value_info, weight_recipe
from edgevl.compress.recipe import LayerRecipe
from edgevl.compress.stats import local_sqnr
from edgevl.compress.w8a8_start import start_w8a8


@register_handler(DynamicW8A8Config)
def _w8a8_dynamic(ctx: QuantContext, cfg: DynamicW8A8Config) -> tuple["object", dict]:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = start_w8a8(ctx, cfg, per_sample_range=True, observer="minmax")
    paths, feeds, qmax, model, passes = start.paths, start.feeds, start.qmax, start.model, start.passes
    stats, inits, recipe = start.stats, start.inits, start.recipe
    local: dict[str, float] = {}
    for l in start.layers:
        if start.excluded(l):
            continue
        lo, hi = stats.observers[l.activation].compute_range()
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        wr = weight_recipe(w, qmax=qmax)
        # Activations are quantised at run time; the calibration range estimates that grid,
        # good enough to rank layers by their local error for the gate.
        estimate = qparams_for_range(lo, hi).to_json()
        recipe.layers[l.name] = LayerRecipe(l.name, l.weight, l.activation, {"dynamic": True, "observed_range": [lo, hi]}, wr)
        local[l.name] = local_sqnr(stats.rows[l.activation], w, estimate, np.asarray(wr["scales"], np.float32), qmax)
    passes["local_sqnr_db"] = {n: round(v, 2) for n, v in sorted(local.items(), key=lambda kv: kv[1])}
    # Q/K/V + attention -> one op ORT quantizes as QAttention; the gate then keeps a packed
    # projection trio float together (one op), ranked by its worst member. Both fusions are
    # com.microsoft ops: the standard flavour does without them.
    standard = "the standard ONNX flavour holds ai.onnx ops only (--onnx-flavor ort fuses)"
    if ctx.flavor != "ort":
        model, packs, why_not = model, [], standard
    elif not cfg.pack_attention:
        model, packs, why_not = model, [], "switched off by config"
    else:
        model, packs, why_not = pack_attention(model, feeds)
    passes["qkv_packed"] = len(packs)
    if why_not:
        passes["qkv_packed_skipped"] = why_not
    if ctx.flavor != "ort":
        why_not = standard
    elif not cfg.fuse_embedding:
        why_not = "switched off by config"
    else:
        model, why_not = fuse_embed_layernorm(model, feeds)
    passes["embedding_fused"] = why_not is None
    if why_not:
        passes["embedding_fused_skipped"] = why_not
    unit_of = {p: pack.name for pack in packs for p in pack.projections}
    members = {pack.name: pack.projections for pack in packs}
    unit_local: dict[str, float] = {}
    for name, value in local.items():
        unit = unit_of.get(name, name)
        unit_local[unit] = min(value, unit_local.get(unit, np.inf))
    for name in list(recipe.float_layers):
        for other in members.get(unit_of.get(name, ""), ()):
            if other not in recipe.float_layers:
                recipe.float_layers[other] = f"packed with {name} into one attention op, which stays float"
                recipe.layers.pop(other, None)
                unit_local.pop(unit_of[other], None)
    float_units = {unit_of.get(n, n) for n in recipe.float_layers}
    standard_attention = [n.name for n in model.graph.node if (n.domain, n.op_type) == ("", "Attention")]
    work = Path(tempfile.mkdtemp(prefix="edgevl-dynq-"))
    source = work / "smoothed.onnx"
    onnx.save(strip_value_info(model), str(source))

    gptq_cache: dict[str, Any] = {}

    def build(drop: dict[str, str]) -> tuple["object", dict]:
        target = work / "quantized.onnx"
        # ORT's quantizer takes any op named Attention for its own: the standard ones stay out.
        with quiet_ort_quantizer():
            quantize_dynamic(
                str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                # 7-bit weights (|w| <= 64) unless the target CPU has exact int8 dot products.
                reduce_range=qmax < 127,
                op_types_to_quantize=["MatMul", "Attention"] if packs else ["MatMul"],
                nodes_to_exclude=sorted(set(drop) | float_units | set(standard_attention)),
                # onnx's shape inference stops at contrib ops; every tensor here is float.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        quantized = onnx.load(str(target))
        counts = {op: sum(n.op_type == op for n in quantized.graph.node) for op in ("MatMulInteger", "QAttention")}
        if cfg.gptq:
            counts["gptq_rounded_weights"] = _round_weights_with_gptq(quantized, model, feeds, gptq_cache, qmax)
        return quantized, counts

    try:
        order = [n for n, _ in sorted(unit_local.items(), key=lambda kv: kv[1])]
        qmodel, drop, (counts,), passes["gate"] = gate_loop(ctx, order, unit_local, cfg.max_drop, build)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passes.update(counts)
    if cfg.gptq:
        passes["weight_rounding"] = f"GPTQ on {len(feeds)} calibration samples"
    dropped = {m: why for unit, why in drop.items() for m in members.get(unit, (unit,))}
    return qmodel, {"recipe": recipe.without(dropped), "passes": passes, "paths": paths}


def _round_weights_with_gptq(
    quantized: "object", source: "object", feeds: list, cache: dict[str, Any], qmax: int,
) -> int:
    """Replace the int8 weights ORT's quantizer rounded to nearest with GPTQ's rounding on the
    same per-column scales, in place; returns how many weights. `cache` keeps the input Hessians
    and the rounded weights across the accuracy gate's builds (each is computed once)."""
    from onnx import numpy_helper

    floats = initializers(source)
    ints = initializers(quantized)
    reader = {n.input[1]: n.input[0] for n in source.graph.node if len(n.input) > 1 and n.input[1] in floats}
    todo = {}
    for n in quantized.graph.node:
        if n.op_type not in ("MatMulInteger", "QAttention") or not n.input[1].endswith("_quantized"):
            continue
        base = n.input[1][: -len("_quantized")]
        zero = ints.get(f"{base}_zero_point")
        if base in reader and f"{base}_scale" in ints and zero is not None and not numpy_helper.to_array(zero).any():
            todo[n.input[1]] = base
    if "hessians" not in cache:
        cache["hessians"] = input_hessians(source, [reader[b] for b in todo.values()], feeds)
    for name, base in todo.items():
        if base not in cache:
            weight = numpy_helper.to_array(floats[base]).astype(np.float32)
            scale = numpy_helper.to_array(ints[f"{base}_scale"]).astype(np.float64)
            cache[base] = gptq_int8(weight, cache["hessians"][reader[base]], np.broadcast_to(scale, weight.shape[1:]), qmax=qmax)
        ints[name].CopyFrom(numpy_helper.from_array(cache[base], name))
    return len(todo)
