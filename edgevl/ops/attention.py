"""The ONE definition of attention in edgevl, and how model code is routed through it.

Every attention block of every tower calls `torch.ops.edgevl.attention(q, k, v, mask, scale)`:
q, k, v are `[batch, heads, seq, head_dim]`, `mask` is an additive float mask broadcastable to
`[batch, heads, q_len, kv_len]` (or None), the result is `[batch, heads, q_len, head_dim]`.
Because it is an opaque custom op, `torch.export` keeps each block as ONE node, and each exporter
lowers that node to its target's fused form (ONNX `Attention`, `com.microsoft.MultiHeadAttention`,
OpenVINO `ScaledDotProductAttention`, ...). A block that does not go through this op is, by
definition, unfused, and the exporters name it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLEMENTATION = "edgevl"


@torch.library.custom_op("edgevl::attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@attention.register_fake
def _attention_fake(q, k, v, mask, scale):  # noqa: ANN001 - signature fixed by torch.library
    return q.new_empty(q.shape[:-1] + (v.shape[-1],))


# Which modules called the op during a probe forward (see `record_attention_calls`).
_calls = threading.local()
# When set, the op is replaced by plain SDPA so frontends that trace TorchScript (OpenVINO,
# Core ML) see the aten op they already fuse, instead of an unknown custom op.
_lower_to_sdpa = threading.local()


def edgevl_attention(
    module: nn.Module | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Run attention through edgevl's op; records the calling module when a probe is active."""
    recorder = getattr(_calls, "modules", None)
    if recorder is not None and module is not None:
        recorder.add(id(module))
    if mask is not None and mask.dtype == torch.bool:
        # Additive masks are what every target's fused op takes; -inf would make fully padded
        # rows NaN, the dtype's minimum keeps them finite (as transformers' eager path does).
        mask = torch.zeros((), dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)
    elif mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    if getattr(_lower_to_sdpa, "on", False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.ops.edgevl.attention(q, k, v, mask, float(scale))


def hf_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' AttentionInterface entry point (returns `[batch, seq, heads, head_dim]`)."""
    if dropout and module.training:
        raise ValueError("edgevl attention is for inference; call model.eval() before exporting")
    if attention_mask is None and is_causal and query.shape[2] > 1:
        q_len, kv_len = query.shape[2], key.shape[2]
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        attention_mask = keep[None, None]
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = edgevl_attention(module, query, key, value, attention_mask, scale)
    return out.transpose(1, 2).contiguous(), None


def register_with_transformers() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, hf_attention_forward)
    # eager_mask gives the additive float mask the fused ops take.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


class FusedMultiheadAttention(nn.Module):
    """Drop-in for a batch-first `nn.MultiheadAttention` (SigLIP's pooling head) via edgevl's op."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("only batch-first nn.MultiheadAttention with equal q/k/v sizes is supported")
        self.num_heads = mha.num_heads
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None, **_: object
    ) -> tuple[torch.Tensor, None]:
        """`attn_mask`: an additive float mask broadcastable to `[batch, heads, q_len, kv_len]`
        (token reduction's log-size bias), unlike nn.MultiheadAttention's `[L, S]` form."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = (
            self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        )
        batch, embed = query.shape[0], query.shape[-1]
        head_dim = embed // self.num_heads

        def heads(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
            return F.linear(x, w, b).view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        out = edgevl_attention(
            self, heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv), attn_mask, head_dim**-0.5
        )
        out = out.transpose(1, 2).reshape(batch, -1, embed)
        return self.out_proj(out), None


def _is_leaf_attention(module: nn.Module) -> bool:
    if isinstance(module, (nn.MultiheadAttention, FusedMultiheadAttention)):
        return True
    name = type(module).__name__
    if not name.endswith("Attention"):
        return False
    # BertAttention wraps BertSelfAttention: the innermost one is the block that computes it.
    return not any(_is_leaf_attention(c) for c in module.children())


def attention_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the attention blocks (the innermost `*Attention` modules) in `model`."""
    return [n for n, m in model.named_modules() if n and _is_leaf_attention(m)]


def use_edgevl_attention(model: nn.Module) -> nn.Module:
    """Route every attention block of a transformers model through edgevl's op (in place)."""
    register_with_transformers()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = ATTN_IMPLEMENTATION
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, child_name, FusedMultiheadAttention(child))
    return model


@contextlib.contextmanager
def record_attention_calls() -> Iterator[set[int]]:
    """Collect `id()`s of the modules that ran edgevl's op inside the block."""
    previous = getattr(_calls, "modules", None)
    _calls.modules = set()
    try:
        yield _calls.modules
    finally:
        _calls.modules = previous


@contextlib.contextmanager
def lowered_to_sdpa() -> Iterator[None]:
    """Inside the block edgevl's op is plain `F.scaled_dot_product_attention` (for TorchScript
    frontends such as OpenVINO's and Core ML's, which fuse that aten op themselves)."""
    previous = getattr(_lower_to_sdpa, "on", False)
    _lower_to_sdpa.on = True
    try:
        yield
    finally:
        _lower_to_sdpa.on = previous


def unrouted_blocks(model: nn.Module, run_forward: "callable[[], object]") -> list[str]:
    """Names of attention blocks that do NOT call edgevl's op in one forward pass (unfused)."""
    blocks = dict((n, m) for n, m in model.named_modules() if n and _is_leaf_attention(m))
    with record_attention_calls() as called, torch.no_grad():
        run_forward()
    return [n for n, m in blocks.items() if id(m) not in called]
