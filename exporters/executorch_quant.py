"""What the ExecuTorch int8 gate searches over: the tower's weighted layers ranked for keeping
float, and, for a convolutional tower, the conditioned module each candidate quantizes.

Ranking (the order the gate keeps layers float, fewest first; `edgevl/compress/gate.py`): by
measured sensitivity (`Int8Plan.rank_by_sensitivity`, `edgevl.compress.torch_sensitivity`): each
layer int8 alone, the rest float, its output's cosine to the float tower on the gate split, the
most harmful first. Layers the measurement cannot hook keep their structural rank after them:
- a convolutional tower: every convolution in depth order (the stem is the most sensitive), as
  the ONNX and OpenVINO targets rank them;
- a transformer tower: the linears outside the numbered encoder blocks (projection, heads: they
  write the embedding), then the FFN down-projections (their input, after GELU, carries the
  outlier channels per-tensor int8 cannot hold), then the rest in graph order.

A convolutional tower is conditioned first (`edgevl.compress.torch_conv`): BatchNorm folded,
linear conv -> conv pairs range-equalized (exact in float), and the convs a candidate quantizes
bias-corrected for their int8 error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from edgevl.compress.torch_conv import module_path as node_module


def _weighted_nodes(module: Any, examples: dict) -> list[Any]:
    import torch

    with torch.no_grad():
        graph = torch.export.export(module, (), kwargs=examples).graph
    return [n for n in graph.nodes if n.op == "call_function"
            and str(n.target).startswith(("aten.linear", "aten.conv"))]


def _in_numbered_block(path: str) -> bool:
    return any(part.isdigit() for part in path.split("."))


def rank_layers(module: Any, examples: dict) -> list[tuple[str, str]]:
    """(module path, why) of each weighted layer, in the order the gate keeps them float."""
    nodes = _weighted_nodes(module, examples)
    convs = [n for n in nodes if str(n.target).startswith("aten.conv")]
    if convs and len(convs) == len(nodes):
        ranked = [(node_module(n), f"convolution {i + 1} of {len(convs)} in depth order "
                   "(the earliest convolutions are the most sensitive)") for i, n in enumerate(convs)]
    else:
        ranked = [(node_module(n), "head or projection after the encoder blocks (writes the embedding)")
                  for n in nodes if not _in_numbered_block(node_module(n))]
        ranked += [(node_module(n), "FFN down-projection (input after GELU carries outlier channels)")
                   for n in nodes if "gelu" in str(getattr(n.args[0], "target", ""))]
        ranked += [(node_module(n), "weighted layer, graph order") for n in nodes]
    first: dict[str, str] = {}
    for name, why in ranked:  # a layer keeps its first (highest) rank
        if name:
            first.setdefault(name, why)
    return list(first.items())


@dataclass
class Int8Plan:
    """The ranked layers and how to build the module a candidate quantizes."""

    ranked: list[tuple[str, str]]
    module: Any
    conditioner: Optional[Any] = None
    report: dict = field(default_factory=dict)

    @classmethod
    def of(cls, module: Any, examples: dict, dynamic: Any, input_names: list[str], output_name: str,
           feeds: list[dict[str, np.ndarray]]) -> "Int8Plan":
        """A conv tower is BN-folded and conditioned; other towers are quantized as they are."""
        from edgevl.compress.torch_conv import ConvConditioner, fold_batchnorm

        ranked = rank_layers(module, examples)
        convs_only = bool(ranked) and all(why.startswith("convolution") for _, why in ranked)
        if not convs_only:
            return cls(ranked, module, None, {"equalization": {"skipped": "not a convolutional tower"}})
        folded, fused = fold_batchnorm(module, examples)
        conditioner = ConvConditioner(folded, examples, dynamic, input_names, output_name, feeds)
        return cls(ranked, folded, conditioner,
                   {"batchnorm_folded": len(fused), "equalization": conditioner.report})

    def rank_by_sensitivity(self, calib_feeds: list[dict[str, np.ndarray]], gate_feeds: dict[str, np.ndarray],
                            reference: np.ndarray) -> None:
        """Reorder `ranked` by each layer's measured int8 sensitivity on the gate split (the
        most harmful first); the report lists the figures in that order. A convolutional tower
        keeps its depth order, so its float convolutions are a prefix: XNNPACK refused to lower a
        non-prefix float set on the default image tower ("Weight and Input should both be
        quantized"), float prefixes lower (docs/executorch.md)."""
        from edgevl.compress.torch_sensitivity import measure_sensitivity, rank_by_sensitivity

        if self.conditioner is not None:
            self.report["sensitivity"] = {
                "measured": 0, "of": len(self.ranked),
                "skipped": "convolutional tower: the gate keeps a float prefix in depth order (XNNPACK did not "
                           "lower a non-prefix float set of the default image tower)"}
            return
        names = [name for name, _ in self.ranked]
        # The equalized weights, without bias correction (one copy, not one per layer).
        module = self.conditioner.apply([]) if self.conditioner is not None else self.module
        found = measure_sensitivity(module, names, calib_feeds, gate_feeds, reference)
        by_name = {s.layer: s for s in found}
        why = dict(self.ranked)
        self.ranked = [
            (name, f"int8 alone moves the gate split to min cosine {by_name[name].cosine_min:.6f}"
                   f" (mean {by_name[name].cosine_mean:.6f})" if name in by_name else why[name])
            for name in rank_by_sensitivity(names, found)]
        self.report["sensitivity"] = {
            "measured": len(found), "of": len(names),
            "how": "each layer int8 alone (per-channel weights, per-tensor input over its calibration range), "
                   "simulated in PyTorch, cosine to the float tower on the gate split",
            "order": [{"layer": s.layer, "cosine_min": s.cosine_min, "cosine_mean": s.cosine_mean}
                      for s in sorted(found, key=lambda s: s.score, reverse=True)],
        }

    def module_for(self, float_layers: list[str]) -> Any:
        """The module the candidate keeping `float_layers` float quantizes (bias-corrected on the
        convs it quantizes); the report counts them."""
        if self.conditioner is None:
            return self.module
        int8 = [name for name, _ in self.ranked if name not in set(float_layers)]
        self.report["bias_corrected_convs"] = len(int8)
        return self.conditioner.apply(int8)
