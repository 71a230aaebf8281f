"""edgevl's one attention definition: numerics, routing, block discovery."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevl.ops.attention import (
    FusedMultiheadAttention,
    attention_blocks,
    edgevl_attention,
    lowered_to_sdpa,
    unrouted_blocks,
)


def test_op_equals_sdpa_with_bool_and_additive_masks():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    keep = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    keep[0, :, :, 5:] = False
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.3)
    torch.testing.assert_close(edgevl_attention(None, q, k, v, keep, 0.3), expected, atol=1e-6, rtol=1e-5)
    additive = torch.zeros(2, 1, 7, 7).masked_fill(~keep, torch.finfo(torch.float32).min)
    torch.testing.assert_close(edgevl_attention(None, q, k, v, additive, 0.3), expected, atol=1e-6, rtol=1e-5)
    with lowered_to_sdpa():
        torch.testing.assert_close(edgevl_attention(None, q, k, v, keep, 0.3), expected, atol=1e-6, rtol=1e-5)


def test_fused_multihead_attention_equals_torch_module():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    fused = FusedMultiheadAttention(mha).eval()
    probe, tokens = torch.randn(3, 1, 32), torch.randn(3, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(probe, tokens, tokens)[0], mha(probe, tokens, tokens)[0], atol=1e-6, rtol=1e-5)


def test_fused_multihead_attention_refuses_unsupported_layouts():
    with pytest.raises(ValueError, match="batch-first"):
        FusedMultiheadAttention(nn.MultiheadAttention(32, 4, batch_first=False))


def test_blocks_are_the_innermost_attention_modules_and_unrouted_ones_are_named(tiny_clip_dir):
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    tower = spec.text.module
    assert attention_blocks(tower) == [
        "text_model.encoder.layers.0.self_attn", "text_model.encoder.layers.1.self_attn",
    ]
    inputs = spec.text.example_inputs
    assert unrouted_blocks(tower, lambda: tower(**inputs)) == []

    class Plain(nn.Module):  # an attention block computed by hand is found, and is unrouted
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            return torch.softmax(self.inner(x) @ x.transpose(-1, -2), -1) @ x

    Plain.__name__ = "HandWrittenAttention"
    model = nn.Sequential(Plain())
    assert attention_blocks(model) == ["0"]
    assert unrouted_blocks(model, lambda: model(torch.randn(1, 3, 4))) == ["0"]
