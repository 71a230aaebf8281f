"""SmoothQuant on an ONNX graph: which activations are smoothed, their factors (alpha per
tensor when searched), and the fold of the factors into the graph."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from edgevl.compress.config import SmoothQuantConfig
from edgevl.compress.ort_graph import initializers
from edgevl.compress.qdq import linear_nodes
from edgevl.compress.smooth_fold import value_projection
from edgevl.compress.smooth_check import checked_fold_smoothing
from edgevl.compress.smoothquant import choose_alpha, producer_kinds, smoothing_factors
from edgevl.compress.stats import ActivationStats, collect_stats


def smoothed_tensors(model: "object", tensors: list[str], cfg: SmoothQuantConfig) -> set[str]:
    """The tensors of `tensors` whose producer is one of `cfg.producers`."""
    producers = producer_kinds(model)
    return {
        t for t in tensors
        if producers.get(t) in cfg.producers or ("Attention" in cfg.producers and value_projection(model, t) is not None)
    }


def _smoothing_factors(
    model: "object", stats: ActivationStats, smoothed: set[str], cfg: SmoothQuantConfig, per_sample_range: bool,
    weight_qmax: int,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """SmoothQuant factors for each tensor of `smoothed`, and (with `cfg.alpha_search`) the alpha
    chosen for each with the simulated SQNR of every alpha tried."""
    from onnx import numpy_helper

    inits = initializers(model)
    factors: dict[str, np.ndarray] = {}
    searched: dict[str, dict] = {}
    layers = linear_nodes(model)
    for t, amax in stats.channel_absmax.items():
        if t not in smoothed:
            continue
        ws = [numpy_helper.to_array(inits[l.weight]).astype(np.float32) for l in layers if l.activation == t]
        alpha = cfg.alpha
        if cfg.alpha_search:
            choice = choose_alpha(stats.samples_of[t], ws, cfg.alpha_search, per_sample_range, weight_qmax)
            alpha = choice.alpha
            searched[t] = {"alpha": alpha, "sqnr_db": choice.sqnr_db}
        factors[t] = smoothing_factors(amax, np.max([np.abs(w).max(axis=1) for w in ws], axis=0), alpha)
    return factors, searched


def smooth_graph(
    model: "object", cfg: Optional[SmoothQuantConfig], feeds: list, per_sample_range: bool,
    weight_qmax: int = 127,
) -> tuple["object", dict[str, Any]]:
    """Fold SmoothQuant factors (from per-channel activation maxima on `feeds`) into the graph.
    `per_sample_range`: the runtime quantises activations per call (dynamic), which the alpha
    search simulates, as it does the weights' int8 grid (`weight_qmax`)."""
    if cfg is None:
        return model, {}
    acts = sorted({l.activation for l in linear_nodes(model)})
    smoothed = smoothed_tensors(model, acts, cfg)
    first = collect_stats(model, acts, feeds, "minmax", keep_rows=1, keep_samples_of=smoothed if cfg.alpha_search else ())
    factors, searched = _smoothing_factors(model, first, smoothed, cfg, per_sample_range, weight_qmax)
    model, report = checked_fold_smoothing(model, factors, feeds)
    info: dict[str, Any] = {"alpha": cfg.alpha, **report}
    if searched:
        info["alpha"] = "searched per tensor"
        info["alpha_search"] = searched
    return model, {"smoothquant": info}
