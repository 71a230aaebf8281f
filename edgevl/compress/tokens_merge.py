"""The token-reduction steps themselves, written with ops that export at static shapes.

ToMe's bipartite soft matching (Bolya et al., 2023; facebookresearch/ToMe) and EViT's
class-attention keep-and-fuse (Liang et al., 2022), re-derived here so that a step uses only
TopK, Gather, MatMul, comparisons and element-wise ops: no sort, no scatter, no data-dependent
shape. The number of tokens removed is a Python int, so the output length is fixed when the
graph is traced. Tokens carry a size (how many patches they stand for): merging averages by size,
and attention adds log(size) to the scores (proportional attention), so a merged token weighs
as much as the tokens it replaced.

Shapes: x [B, N, C]; size [B, N, 1] (float); metric [B, N, Cm]; protected tokens (the class
token) are the first `protect` rows and are never merged, dropped or moved.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _gather_rows(x: torch.Tensor, index: torch.Tensor, channels: int) -> torch.Tensor:
    """x[b, index[b, i], :] for every b, i (x [B, T, channels], index [B, K] -> [B, K, channels])."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, channels))


def _rest_in_order(ta: int, chosen: torch.Tensor, r: int, dtype: torch.dtype) -> torch.Tensor:
    """Indices in 0..ta-1 not in `chosen` [B, r], ascending, as [B, ta - r] (TopK on distinct
    keys: deterministic on every runtime, and the kept tokens keep their order)."""
    positions = torch.arange(ta, device=chosen.device)
    is_chosen = (chosen.unsqueeze(-1) == positions).any(1)  # [B, ta]
    key = torch.where(is_chosen, torch.full((), -float(ta + 1), dtype=dtype, device=chosen.device),
                      -positions.to(dtype))
    return key.topk(ta - r, dim=-1).indices


def tome_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int,
               protect: int, n: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` tokens of `x` into others (bipartite soft matching): the unprotected tokens
    alternate into sets A and B; each A token's most similar B token (cosine of `metric`) is its
    match; the r A tokens with the best matches are averaged (by size) into them. Returns the
    new x [B, N - r, C] and size [B, N - r, 1]: protected tokens, unmerged A tokens in order, then B.
    `n` (= N) and `width` (= C) are passed as Python ints so no shape is read from a tensor."""
    if r <= 0:
        return x, size
    head_x, head_s = x[:, :protect], size[:, :protect]
    rest = torch.cat([x[:, protect:] * size[:, protect:], size[:, protect:]], dim=-1)  # size-weighted sums
    m = F.normalize(metric[:, protect:], dim=-1)
    a, b = rest[:, 0::2], rest[:, 1::2]
    ma, mb = m[:, 0::2], m[:, 1::2]
    ta, tb = (n - protect + 1) // 2, (n - protect) // 2
    if r > ta:
        raise ValueError(f"cannot merge {r} tokens out of {ta} in set A; the schedule should have capped r")
    scores = ma @ mb.transpose(-1, -2)  # [B, ta, tb]
    best, match = scores.max(dim=-1)  # each A token's best B partner
    src = best.topk(r, dim=-1).indices  # [B, r]: the A tokens merged away
    keep = _rest_in_order(ta, src, r, x.dtype)  # [B, ta - r]
    dst = match.gather(1, src)  # [B, r]: their B partners
    onehot = (dst.unsqueeze(-1) == torch.arange(tb, device=x.device)).to(x.dtype)  # [B, r, tb]
    merged_b = b + onehot.transpose(1, 2) @ _gather_rows(a, src, width + 1)
    out = torch.cat([_gather_rows(a, keep, width + 1), merged_b], dim=1)
    new_size = out[..., -1:]
    new_x = out[..., :-1] / new_size
    return torch.cat([head_x, new_x], dim=1), torch.cat([head_s, new_size], dim=1)


def class_attention(q: torch.Tensor, k: torch.Tensor, scale: float,
                    bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The class token's (row 0) attention over the other tokens, averaged over heads: q, k
    [B, H, N, D], bias [B, 1, 1, N] or None -> [B, N - 1]. Computed apart from the fused
    attention op (which returns no weights); it costs one row of the score matrix."""
    logits = (q[:, :, :1] @ k.transpose(-1, -2)) * scale  # [B, H, 1, N]
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1).mean(1)[:, 0, 1:]


def evit_fuse(x: torch.Tensor, size: torch.Tensor, cls_attn: torch.Tensor, n_keep: int, n: int,
              width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the class token and the `n_keep` patch tokens it attends to most (`cls_attn`
    [B, N - 1]) and fuse the others into ONE token: their class-attention-weighted mean (EViT
    sums them; a mean keeps the token on the scale the untuned tower expects), whose size is the
    sum of theirs. Returns x [B, n_keep + 2, C] and size [B, n_keep + 2, 1]."""
    patches, patch_size = x[:, 1:], size[:, 1:]
    kept = cls_attn.topk(n_keep, dim=-1).indices  # [B, n_keep]
    positions = torch.arange(n - 1, device=x.device)
    dropped = 1.0 - (kept.unsqueeze(-1) == positions).any(1).to(x.dtype)  # [B, N - 1]
    weight = (cls_attn * dropped).unsqueeze(-1)  # [B, N - 1, 1]
    fused = (weight * patches).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    fused_size = (dropped.unsqueeze(-1) * patch_size).sum(1, keepdim=True)
    new_x = torch.cat([x[:, :1], _gather_rows(patches, kept, width), fused], dim=1)
    new_size = torch.cat([size[:, :1], _gather_rows(patch_size, kept, 1), fused_size], dim=1)
    return new_x, new_size


def size_bias(size: Optional[torch.Tensor], q_len: int = 1) -> Optional[torch.Tensor]:
    """Proportional attention's additive bias log(size) as [B, 1, q_len, N] (None: every size is
    1). The query axis is spelled out: ONNX Runtime's `Attention` wants the mask's second-last
    dimension to equal the query length rather than broadcast from 1."""
    if size is None:
        return None
    bias = size.log().transpose(1, 2).unsqueeze(1)
    return bias if q_len == 1 else bias.expand(-1, -1, q_len, -1)
