"""Per-layer token counts of a token-reduction config on a ViT of a given depth and token count,
and the FLOPs they imply. Pure Python ints: the counts are fixed before any graph is traced.

FLOPs (multiply and add are two) of one pre-LN encoder layer at n tokens, width d, MLP width m:
  2 * n * d * 4d (q, k, v, out projections) + 2 * 2 * n^2 * d (scores and weighted sum)
  + 2 * 2 * n * d * m (MLP); plus what a reduction step adds: ToMe's matching scores
  2 * ta * tb * d and the merge 2 * r * tb * (d + 1); EViT's class-attention row 2 * n * d.
Patch embedding, norms, the pooling head and element-wise ops are left out (the same before and after).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgevl.compress.tokens_config import TokenConfig


@dataclass(frozen=True)
class LayerPlan:
    """What one encoder layer does: `tokens` in, and r tokens merged (ToMe) or `keep` patch
    tokens kept (EViT, with the rest fused into one) after its attention."""

    tokens: int
    r: int = 0
    keep: int = -1  # EViT: patch tokens kept; -1: no EViT step in this layer

    @property
    def tokens_out(self) -> int:
        if self.keep >= 0:
            return 1 + self.keep + 1
        return self.tokens - self.r


@dataclass(frozen=True)
class TokenPlan:
    config: TokenConfig
    protect: int  # leading tokens never merged (1: the class token; 0: SigLIP, pooled by its head)
    layers: tuple[LayerPlan, ...] = field(default_factory=tuple)

    @property
    def per_layer_tokens(self) -> list[int]:
        """Tokens each layer's attention sees, then the count after the last layer."""
        return [p.tokens for p in self.layers] + [self.layers[-1].tokens_out] if self.layers else []

    @property
    def reduces(self) -> bool:
        return any(p.tokens_out != p.tokens for p in self.layers)


def tome_schedule(r: int, depth: int, schedule: str) -> list[int]:
    """r per layer: constant, or decreasing linearly from 1.5 r to 0.5 r (ToMe's inflect -0.5),
    which merges about as many tokens in all but merges them earlier."""
    if schedule == "constant" or depth < 2:
        return [r] * depth
    hi, lo = 1.5 * r, 0.5 * r
    return [int(round(hi + (lo - hi) * i / (depth - 1))) for i in range(depth)]


def evit_layers(depth: int) -> list[int]:
    """The layers after whose attention EViT reduces: a quarter, half and three quarters of the
    depth (layers 3, 6 and 9 of 12, as in the EViT paper's DeiT setting), never the first."""
    return sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3)} - {depth})


def make_plan(config: TokenConfig, depth: int, tokens: int, protect: int) -> TokenPlan:
    """The per-layer counts of `config` for a tower of `depth` layers starting at `tokens`
    (including `protect` leading tokens). ToMe's r is capped per layer at half the unprotected
    tokens (what bipartite matching can pair); EViT keeps ceil(keep * patches) at each step."""
    if config.auto:
        raise ValueError("an auto config has no plan; the accuracy gate fixes r/keep first (tokens_gate)")
    layers: list[LayerPlan] = []
    n = tokens
    if config.method == "tome":
        for r in tome_schedule(int(config.r), depth, config.schedule):
            r = max(0, min(r, (n - protect) // 2))
            layers.append(LayerPlan(n, r=r))
            n -= r
    else:
        at = set(evit_layers(depth)) if config.keep < 1.0 else set()
        for i in range(depth):
            patches = n - 1
            keep = math.ceil(config.keep * patches) if i in at else -1
            if keep >= patches - 1:  # fusing one token into one token changes nothing
                keep = -1
            layers.append(LayerPlan(n, keep=keep))
            n = layers[-1].tokens_out
    return TokenPlan(config, protect, tuple(layers))


def layer_flops(p: LayerPlan, width: int, mlp: int) -> float:
    n, d = p.tokens, width
    flops = 2 * n * d * 4 * d + 4 * n * n * d
    if p.r:
        ta = (n - 0) // 2  # upper bound of set A: the protected tokens are out of it
        flops += 2 * ta * ta * d + 2 * p.r * ta * (d + 1)
    if p.keep >= 0:
        flops += 2 * n * d
    n_mlp = p.tokens_out  # the MLP runs after the reduction step
    return float(flops + 4 * n_mlp * d * mlp)


def plan_flops(plan: TokenPlan, width: int, mlp: int) -> float:
    return sum(layer_flops(p, width, mlp) for p in plan.layers)
