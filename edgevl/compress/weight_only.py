"""Weight-only quantisation (`WeightOnlyConfig`): int8w = ORT `MatMulNBits` 8-bit; int4w =
4-bit blocks (`MatMulNBits`, token embeddings as `GatherBlockQuantized`), with the layers whose
4-bit blocks hurt most raised to 8 bits until the accuracy gate passes."""

from __future__ import annotations

import logging

import numpy as np

from edgevl.compress.config import WeightOnlyConfig
from edgevl.compress.gate import gate_passes, measure
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import layer_paths
from edgevl.compress.qdq import linear_nodes, weight_only_nbits
from edgevl.compress.recipe import QuantRecipe
from edgevl.compress.stats import collect_stats
from edgevl.errors import ParityError


@register_handler(WeightOnlyConfig)
def _weight_only(ctx: QuantContext, cfg: WeightOnlyConfig) -> tuple["object", dict]:
    import onnx
    from onnx import numpy_helper

    model = ctx.model
    paths = layer_paths(model)
    layers = linear_nodes(model)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    def build(raise_to_8: list[str]) -> "object":
        m = onnx.ModelProto.FromString(model.SerializeToString())
        if cfg.bits == 8:
            out, _ = weight_only_nbits(m, 8, cfg.group_size, include_gather=False)
            return out
        out, _ = weight_only_nbits(m, 4, cfg.group_size, include_gather=cfg.embeddings, exclude=raise_to_8)
        if raise_to_8:
            out, _ = weight_only_nbits(out, 8, 128, include_gather=False, exclude=[
                l.name for l in layers if l.name not in raise_to_8])
        return out

    # Rank layers by how much 4-bit blocks hurt their output on calibration activations.
    stats = collect_stats(model, sorted({l.activation for l in layers}), ctx.feeds[:16], "minmax")
    inits = {i.name: i for i in model.graph.initializer}
    err = {}
    for l in layers:
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        k = w.shape[0] - w.shape[0] % cfg.group_size
        blocks = w[:k].reshape(-1, cfg.group_size, w.shape[1])
        sc = np.abs(blocks).max(1, keepdims=True) / 7
        sc[sc == 0] = 1
        wq = w.copy()
        wq[:k] = (np.clip(np.round(blocks / sc), -8, 7) * sc).reshape(k, -1)
        x = stats.rows[l.activation]
        y, yq = x @ w, x @ wq
        err[l.name] = 10 * np.log10(max(float(np.sum(y**2)), 1e-30) / max(float(np.sum((y - yq) ** 2)), 1e-30))
    order = [n for n, _ in sorted(err.items(), key=lambda kv: kv[1])]
    tried, k, step = [], 0, 2
    precision = f"int{cfg.bits}w"
    while True:
        raised = order[:k] if cfg.bits == 4 else []
        qmodel = build(raised)
        figures = measure(ctx.gate, qmodel) if ctx.gate is not None else None
        ok = figures is None or gate_passes(figures, ctx.cosine_min, cfg.max_drop)
        tried.append({"int8_layers": len(raised), **(figures or {})})
        if ok or cfg.bits == 8:
            break
        if k >= len(order):
            raise ParityError(
                f"{precision} {ctx.component} tower fails the accuracy gate even with every MatMul at 8 bits "
                f"({figures}); the 4-bit embedding tables are at fault: set embeddings=False"
            )
        k = min(len(order), k + step)
        step *= 2
    if not ok:
        raise ParityError(f"{precision} {ctx.component} tower fails the accuracy gate: {figures}")
    recipe = QuantRecipe(ctx.component, precision, cfg.to_json(), calibration=dict(ctx.calibration))
    for n in order[:k] if cfg.bits == 4 else []:
        recipe.float_layers[n] = f"raised to 8-bit by the accuracy gate (4-bit local SQNR {err[n]:.1f} dB)"
    counts: dict[str, int] = {}
    for node in qmodel.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    passes = {"gate": {"passed": True, "figures": figures, "tried": tried, "cosine_min": ctx.cosine_min,
                       "max_drop": cfg.max_drop},
              "local_sqnr_db_4bit": {n: round(v, 2) for n, v in sorted(err.items(), key=lambda kv: kv[1])},
              **counts}
    return qmodel, {"recipe": recipe, "passes": passes, "paths": paths}
