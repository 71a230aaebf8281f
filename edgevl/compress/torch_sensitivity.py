"""Per-layer int8 sensitivity of a PyTorch tower, measured on the gate split: each weighted layer
quantized alone, the rest float, and how far the tower's output moves from the float reference.

One layer "quantized alone" is simulated in PyTorch, not built with the target's quantizer (a
PT2E pass and a lowering per layer would cost as much as a whole gate search): its weight
rounded to symmetric per-channel int8 (qmax 127, as XNNPACK's quantizer stores weights) and its
input rounded to per-tensor affine int8 over the range that input took on the calibration feeds
(min-max, zero included). The figures rank layers for the accuracy gate (`edgevl.compress.gate`),
which then measures every candidate it considers on the target's own runtime; a ranking error
costs float layers, never a wrong verdict.

Score of a layer: 1 - min cosine over the gate rows (what the gate judges), then 1 - mean cosine
to break ties. Layers the simulation cannot hook (weights outside an `nn.Linear` / `nn.Conv*`
module) get no score and keep their place after the scored ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

WEIGHT_QMAX = 127
ACT_LEVELS = 255

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Sensitivity:
    """One layer quantized alone, measured on the gate rows."""

    layer: str
    cosine_min: float
    cosine_mean: float

    @property
    def score(self) -> tuple[float, float]:
        return (1.0 - self.cosine_min, 1.0 - self.cosine_mean)


def _tensors(feeds: Feeds) -> dict[str, Any]:
    import torch

    # Token ids as int64: the towers index with them.
    return {k: torch.from_numpy(v.astype("int64") if v.dtype.kind in "iu" else v) for k, v in feeds.items()}


def torch_run(module: Any) -> Callable[[Feeds], np.ndarray]:
    """`module` (a tower or a PT2E-converted graph) as a feeds -> output callable, run by PyTorch
    without autograd."""
    import torch

    def run(feeds: Feeds) -> np.ndarray:
        with torch.no_grad():
            return module(**_tensors(feeds)).numpy()

    return run


def _weighted(module: Any, layers: Sequence[str]) -> dict[str, Any]:
    import torch

    found = dict(module.named_modules())
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    return {name: found[name] for name in layers if isinstance(found.get(name), kinds)}


def input_ranges(module: Any, layers: Sequence[str], calib_feeds: Sequence[Feeds]) -> dict[str, tuple[float, float]]:
    """(min, max) of each hookable layer's input over the calibration feeds, zero included."""
    import torch

    ranges: dict[str, list[float]] = {}
    handles = []
    for name, layer in _weighted(module, layers).items():
        def record(_mod: Any, args: tuple, name: str = name) -> None:
            lo, hi = ranges.setdefault(name, [0.0, 0.0])
            ranges[name] = [min(lo, float(args[0].min())), max(hi, float(args[0].max()))]
        handles.append(layer.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for feeds in calib_feeds:
                module(**_tensors(feeds))
    finally:
        for h in handles:
            h.remove()
    return {name: (lo, hi) for name, (lo, hi) in ranges.items()}


def fake_int8_weight(weight: Any) -> Any:
    """Symmetric per-output-channel int8 (qmax 127), dequantized."""
    import torch

    flat = weight.reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / WEIGHT_QMAX).clamp_min(1e-12)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.clamp(torch.round(weight / scale.reshape(shape)), -WEIGHT_QMAX, WEIGHT_QMAX) * scale.reshape(shape)


def fake_int8_activation(x: Any, lo: float, hi: float) -> Any:
    """Per-tensor affine int8 over [lo, hi] (clamped outside), dequantized."""
    import torch

    scale = max(hi - lo, 1e-12) / ACT_LEVELS
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, ACT_LEVELS) - zero) * scale


def measure_sensitivity(
    module: Any, layers: Sequence[str], calib_feeds: Sequence[Feeds], gate_feeds: Feeds,
    reference: np.ndarray, module_for: Optional[Callable[[str], Any]] = None,
    run: Optional[Callable[[Any, Feeds], np.ndarray]] = None,
) -> list[Sensitivity]:
    """Each hookable layer of `layers` (module paths) quantized alone; `module_for(layer)` gives
    the module to quantize it in (default `module`: e.g. a copy with that layer's bias corrected);
    `run(module, feeds)` the tower's output (default: the module called with the feeds)."""
    import torch

    from edgevl.parity import cosine_per_row

    ranges = input_ranges(module, layers, calib_feeds)
    run = run or (lambda m, f: _batched(m, f))
    found = []
    for name in layers:
        if name not in ranges:
            continue
        target = module_for(name) if module_for is not None else module
        layer = dict(target.named_modules())[name]
        lo, hi = ranges[name]
        saved = layer.weight.data.clone()
        handle = layer.register_forward_pre_hook(
            lambda _mod, args: (fake_int8_activation(args[0], lo, hi),) + tuple(args[1:]))
        try:
            with torch.no_grad():
                layer.weight.data.copy_(fake_int8_weight(saved))
                out = run(target, gate_feeds)
        finally:
            handle.remove()
            layer.weight.data.copy_(saved)
        cos = cosine_per_row(reference, out)
        found.append(Sensitivity(name, round(float(cos.min()), 6), round(float(cos.mean()), 6)))
    return found


def _batched(module: Any, feeds: Feeds, batch: int = 32) -> np.ndarray:
    import torch

    n = next(iter(feeds.values())).shape[0]
    outs = []
    with torch.no_grad():
        for i in range(0, n, batch):
            outs.append(module(**_tensors({k: v[i:i + batch] for k, v in feeds.items()})).numpy())
    return np.concatenate(outs, axis=0)


def rank_by_sensitivity(layers: Sequence[str], found: Sequence[Sensitivity]) -> list[str]:
    """`layers` reordered most sensitive first; unscored layers keep their order after them."""
    scored = sorted(found, key=lambda s: s.score, reverse=True)
    seen = {s.layer for s in scored}
    return [s.layer for s in scored] + [name for name in layers if name not in seen]
