"""What both W8A8 schemes start from: the calibration feeds, the SmoothQuant-smoothed float graph,
its linear layers with their activation statistics, and a recipe with the layers the config
excludes already kept float."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgevl.compress.config import weight_qmax
from edgevl.compress.handlers import QuantContext
from edgevl.compress.ort_graph import initializers, layer_paths, matches
from edgevl.compress.qdq import LinearNode, linear_nodes
from edgevl.compress.recipe import QuantRecipe
from edgevl.compress.smooth_graph import smooth_graph
from edgevl.compress.stats import ActivationStats, collect_stats


@dataclass
class W8A8Start:
    paths: dict[str, str]  # ONNX node -> PyTorch module path (of the unsmoothed graph)
    feeds: list
    qmax: int  # the largest |weight code| cfg.cpu_isa allows
    model: Any  # the smoothed float graph
    passes: dict  # what smoothing did
    layers: list[LinearNode]
    stats: ActivationStats
    inits: dict
    recipe: QuantRecipe
    exclude: tuple[str, ...]

    def excluded(self, layer: LinearNode) -> bool:
        """Whether the config excludes `layer`; if so it is recorded float in the recipe."""
        pattern = matches(layer.name, self.paths.get(layer.name, ""), self.exclude)
        if pattern:
            self.recipe.float_layers[layer.name] = f"excluded by config ({pattern!r})"
        return bool(pattern)


def start_w8a8(ctx: QuantContext, cfg: Any, per_sample_range: bool, observer: str) -> W8A8Start:
    """Smooth `ctx.model` as `cfg.smoothquant` says on the first `cfg.calib_limit` feeds and
    observe every linear layer's input with `observer`."""
    paths = layer_paths(ctx.model)
    feeds = ctx.feeds[: cfg.calib_limit]
    qmax = weight_qmax(cfg.cpu_isa)
    model, passes = smooth_graph(ctx.model, cfg.smoothquant, feeds, per_sample_range=per_sample_range, weight_qmax=qmax)
    layers = linear_nodes(model)
    stats = collect_stats(model, sorted({l.activation for l in layers}), feeds, observer)
    recipe = QuantRecipe(ctx.component, "int8", cfg.to_json(), calibration=dict(ctx.calibration))
    return W8A8Start(paths, feeds, qmax, model, passes, layers, stats, initializers(model), recipe, cfg.exclude)
