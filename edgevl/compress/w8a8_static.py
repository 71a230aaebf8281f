"""Static W8A8 (`W8A8Config`, and `SmoothQuantConfig` as its SmoothQuant-only form): int8
weights per output channel, uint8 activations per tensor with ranges from calibration, written
as a Q/DQ graph that ONNX Runtime and OpenVINO both run."""

from __future__ import annotations

import numpy as np

from edgevl.calibration.observers import qparams_for_range
from edgevl.compress.config import SmoothQuantConfig, W8A8Config
from edgevl.compress.gate import gate_loop
from edgevl.compress.handlers import QuantContext, register_handler
from edgevl.compress.ort_graph import matches
from edgevl.compress.qdq import apply_recipe, weight_recipe
from edgevl.compress.recipe import LayerRecipe
from edgevl.compress.speed_guard import matmul_speed
from edgevl.compress.stats import local_sqnr
from edgevl.compress.w8a8_start import start_w8a8


def _w8a8_static(ctx: QuantContext, cfg: W8A8Config) -> tuple["object", dict]:
    from onnx import numpy_helper

    start = start_w8a8(ctx, cfg, per_sample_range=False, observer=cfg.observer)
    paths, model, passes, stats, inits, recipe = start.paths, start.model, start.passes, start.stats, start.inits, start.recipe
    qmax = start.qmax
    local: dict[str, float] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for l in start.layers:
        if start.excluded(l):
            continue
        path = paths.get(l.name, "")
        override = next(((lo, hi) for p, lo, hi in cfg.activation_ranges if matches(l.name, path, (p,))), None)
        if override is not None:
            lo, hi, how = override[0], override[1], "fixed range (config)"
        else:
            lo, hi = stats.observers[l.activation].compute_range()
            how = cfg.observer
        q = qparams_for_range(lo, hi)
        w = numpy_helper.to_array(inits[l.weight]).astype(np.float32)
        wr = weight_recipe(w, qmax=qmax)
        act = {**q.to_json(), "observer": how}
        recipe.layers[l.name] = LayerRecipe(l.name, l.weight, l.activation, act, wr)
        local[l.name] = local_sqnr(stats.rows[l.activation], w, act, np.asarray(wr["scales"], np.float32), qmax)
        shapes[l.name] = (l.in_features, l.out_features)
    if cfg.speed_guard and shapes:
        timing = matmul_speed(set(shapes.values()))
        passes["speed_guard"] = {f"{k}x{n}": v for (k, n), v in timing.items()}
        slow = {
            n: f"int8 measured slower than float on ORT for a {k}x{m} weight "
            f"({timing[(k, m)]['int8_ms']} ms vs {timing[(k, m)]['float_ms']} ms)"
            for n, (k, m) in shapes.items() if timing[(k, m)]["slower"]
        }
        recipe = recipe.without(slow)
    passes["local_sqnr_db"] = {n: round(v, 2) for n, v in sorted(local.items(), key=lambda kv: kv[1])}
    # The gate: move layers back to float, worst local SQNR first, until the gate split passes.
    order = [n for n, _ in sorted(local.items(), key=lambda kv: kv[1]) if n in recipe.layers]
    qmodel, drop, (counts,), gate_report = gate_loop(
        ctx, order, local, cfg.max_drop, lambda drop: apply_recipe(model, recipe.without(drop))
    )
    candidate = recipe.without(drop)
    passes["gate"] = gate_report
    passes.update(counts)
    return qmodel, {"recipe": candidate, "passes": passes, "paths": paths}



@register_handler(SmoothQuantConfig)
def _smoothquant_handler(ctx: QuantContext, cfg: SmoothQuantConfig) -> tuple["object", dict]:
    return _w8a8_static(ctx, W8A8Config(smoothquant=cfg))


register_handler(W8A8Config)(_w8a8_static)
