"""`reduce_tokens_(spec, config)`: fewer tokens per layer in a ViT image tower, fixed at export time.

The tower's encoder loop is replaced (in place) by one that runs the same layers with the same
weights, and after each layer's attention merges r tokens (ToMe) or keeps the tokens the class
token attends to and fuses the rest (EViT) as `edgevl.compress.tokens_plan` fixed them. Attention
still goes through edgevl's one attention op (`edgevl.ops.attention`), with log(token size) as
its additive mask once tokens have been merged, so every exporter still lowers each block to its
fused form. Supported towers: Hugging Face CLIP and SigLIP vision towers (`hf-clip`) and edgevl's
ViT students (`edgevl-student`); the class token (CLIP, students) is never merged, SigLIP's
pooling head attends over the merged tokens with the same size bias. A tower without tokens (a
CNN) is refused with InputError.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
from torch import nn

from edgevl.compress.tokens_config import TokenConfig
from edgevl.compress.tokens_merge import class_attention, evit_fuse, size_bias, tome_merge
from edgevl.compress.tokens_plan import TokenPlan, make_plan, plan_flops
from edgevl.errors import InputError
from edgevl.ops.attention import edgevl_attention


@dataclass
class LayerOps:
    """One pre-LN encoder layer taken apart: x -> x + attn(norm1(x)); [reduce]; x + mlp(norm2(x))."""

    width: int
    norm1: nn.Module
    qkv: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (x, N) -> [B, H, N, D] each
    attn_module: nn.Module  # the module named as the attention block (the fused-op probe records it)
    out: Callable[[torch.Tensor], torch.Tensor]  # [B, N, H*D] -> [B, N, C]
    scale: float
    norm2: nn.Module
    mlp: Callable[[torch.Tensor], torch.Tensor]


def _hf_layer(layer: nn.Module) -> LayerOps:
    attn = layer.self_attn
    heads, head_dim = attn.num_heads, attn.head_dim

    def qkv(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(p(x).view(-1, n, heads, head_dim).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))

    return LayerOps(attn.embed_dim, layer.layer_norm1, qkv, attn, attn.out_proj, float(attn.scale), layer.layer_norm2, layer.mlp)


def _student_layer(block: nn.Module) -> LayerOps:
    attn = block.attn
    if not block.norm_first:
        raise InputError("--tokens needs a pre-LN ViT student (norm_first); this student's blocks are post-LN")
    width = attn.qkv.in_features
    heads, head_dim = attn.heads, width // attn.heads

    def qkv(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = attn.qkv(x).view(-1, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    return LayerOps(width, block.ln1, qkv, attn, attn.out, head_dim**-0.5, block.ln2, block.mlp)


def run_layers(layers: list[LayerOps], plan: TokenPlan, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The encoder with `plan`'s reductions: returns the last hidden states and the token sizes
    (None while no token was merged, so r=0 / keep=1.0 run exactly the original layers). Token
    counts in reshapes are the plan's Python ints, never read from tensor shapes, so TorchScript
    frontends (OpenVINO, Core ML) see them as constants too."""
    size: Optional[torch.Tensor] = None
    for ops, step in zip(layers, plan.layers):
        n = step.tokens
        h = ops.norm1(x)
        q, k, v = ops.qkv(h, n)
        o = edgevl_attention(ops.attn_module, q, k, v, size_bias(size, n), ops.scale)
        x = x + ops.out(o.transpose(1, 2).reshape(-1, n, ops.width))
        if step.r or step.keep >= 0:
            if size is None:
                size = torch.ones_like(x[..., :1])
            if step.r:
                x, size = tome_merge(x, size, k.mean(1), step.r, plan.protect, n, ops.width)
            else:
                x, size = evit_fuse(x, size, class_attention(q, k, ops.scale, size_bias(size)), step.keep, n, ops.width)
        x = x + ops.mlp(ops.norm2(x))
    return x, size


class _HFEncoder(nn.Module):
    """Stands in for a transformers CLIP/SigLIP vision encoder: same layers (same names), run
    with the plan's reductions. Returns the hidden states and the token sizes."""

    def __init__(self, encoder: nn.Module, plan: TokenPlan) -> None:
        super().__init__()
        self.layers = encoder.layers
        self.plan = plan

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return run_layers([_hf_layer(layer) for layer in self.layers], self.plan, x)


class ReducedCLIPVision(nn.Module):
    """A transformers `CLIPVisionModel` body with token reduction; `pooler_output` is the class
    token after `post_layernorm`, as in transformers."""

    def __init__(self, vision: nn.Module, plan: TokenPlan) -> None:
        super().__init__()
        self.embeddings, self.pre_layrnorm, self.post_layernorm = vision.embeddings, vision.pre_layrnorm, vision.post_layernorm
        self.encoder = _HFEncoder(vision.encoder, plan)
        self.original = [vision]  # a list: not a submodule, so the weights are not counted twice

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> SimpleNamespace:
        x, _size = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
        return SimpleNamespace(last_hidden_state=x, pooler_output=self.post_layernorm(x[:, 0, :]))


class ReducedSiglipVision(nn.Module):
    """A transformers `SiglipVisionModel` body with token reduction; its attention-pooling head
    reads every remaining token with the same log(size) bias (nothing is pooled away)."""

    def __init__(self, vision: nn.Module, plan: TokenPlan) -> None:
        super().__init__()
        self.embeddings, self.post_layernorm = vision.embeddings, vision.post_layernorm
        self.encoder = _HFEncoder(vision.encoder, plan)
        self.head = vision.head if getattr(vision, "use_head", False) else None
        self.original = [vision]

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> SimpleNamespace:
        x, size = self.encoder(self.embeddings(pixel_values))
        x = self.post_layernorm(x)
        pooled = _siglip_head(self.head, x, size) if self.head is not None else None
        return SimpleNamespace(last_hidden_state=x, pooler_output=pooled)


def _siglip_head(head: nn.Module, x: torch.Tensor, size: Optional[torch.Tensor]) -> torch.Tensor:
    """transformers' SiglipMultiheadAttentionPoolingHead with the size bias on its attention
    (head.attention is edgevl's FusedMultiheadAttention after `use_edgevl_attention`)."""
    probe = head.probe.expand(x.shape[0], -1, -1)
    h = head.attention(probe, x, x, attn_mask=size_bias(size))[0]
    return (h + head.mlp(head.layernorm(h)))[:, 0]


class ReducedStudent(nn.Module):
    """An edgevl `ViTImageStudent` with token reduction (its forward, run through the plan)."""

    def __init__(self, student: nn.Module, plan: TokenPlan) -> None:
        super().__init__()
        self.student = student
        self.plan = plan

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        s = self.student
        x = s.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([s.cls.expand(x.shape[0], -1, -1), x], dim=1) + s.pos
        x, _size = run_layers([_student_layer(b) for b in s.blocks], self.plan, x)
        return F.normalize(s.proj(s.norm(x[:, 0])), dim=-1)


@dataclass
class _Tower:
    """Where a tower's ViT is and what it looks like (for planning and patching)."""

    kind: str  # "clip", "siglip", "student"
    depth: int
    tokens: int
    protect: int
    width: int
    mlp: int


def _find_vit(module: nn.Module) -> _Tower:
    """Which ViT `module` (an image tower, possibly patched before) holds; InputError if none."""
    vision = getattr(module, "vision_model", None)
    if isinstance(vision, (ReducedCLIPVision, ReducedSiglipVision)):
        vision = vision.original[0]
    student = module.student if isinstance(module, ReducedStudent) else module
    if vision is not None and hasattr(vision, "encoder") and hasattr(vision, "embeddings"):
        cfg = vision.config
        patches = (cfg.image_size // cfg.patch_size) ** 2
        kind = "clip" if hasattr(vision, "pre_layrnorm") else "siglip"
        if kind == "siglip" and not getattr(vision, "use_head", False):
            raise InputError("--tokens: this SigLIP vision tower has no pooling head; edgevl supports SigLIP with its head")
        protect = 1 if kind == "clip" else 0
        return _Tower(kind, len(vision.encoder.layers), patches + protect, protect, cfg.hidden_size, cfg.intermediate_size)
    if type(student).__name__ == "ViTImageStudent":
        arch = student.arch
        return _Tower("student", arch.depth, (arch.resolution // arch.patch) ** 2 + 1, 1, arch.width, 4 * arch.width)
    raise InputError(
        f"--tokens applies to ViT image towers (CLIP, SigLIP, edgevl ViT students); this image tower "
        f"({type(student).__name__}) has no tokens: drop --tokens"
    )


def describe_tower(spec: Any) -> _Tower:
    """The ViT facts of `spec`'s image tower (InputError for a tower without tokens)."""
    return _find_vit(spec.image.module)


def reduce_tokens_(spec: Any, config: TokenConfig) -> dict:
    """Patch `spec`'s image tower in place so that each layer drops tokens as `config` says (a
    second call replaces the first; r=0 / keep=1.0 restores the original computation). Returns
    the record the manifest keeps: method, per-layer token counts, FLOPs before and after."""
    if config.auto:
        raise InputError("reduce_tokens_ needs a fixed r/keep; `auto` is resolved by the accuracy gate "
                         "(edgevl.compress.tokens_gate.search_tokens)")
    module = spec.image.module
    tower = _find_vit(module)
    if tower.kind == "siglip" and config.method == "evit":
        raise InputError("--tokens evit ranks tokens by the class token's attention and SigLIP has no class "
                         "token; use --tokens tome:r=N for SigLIP")
    plan = make_plan(config, tower.depth, tower.tokens, tower.protect)
    if tower.kind == "student":
        base = module.student if isinstance(module, ReducedStudent) else module
        spec.image.module = ReducedStudent(base, plan).eval()
    else:
        vision = module.vision_model
        base = vision.original[0] if isinstance(vision, (ReducedCLIPVision, ReducedSiglipVision)) else vision
        module.vision_model = (ReducedCLIPVision if tower.kind == "clip" else ReducedSiglipVision)(base, plan).eval()
    # Cached reference outputs were computed by the tower as it was.
    for key in [k for k in spec.derived if isinstance(k, tuple) and k and k[0] == "split_data"]:
        del spec.derived[key]
    unreduced = make_plan(TokenConfig("tome", r=0), tower.depth, tower.tokens, tower.protect)
    before, after = plan_flops(unreduced, tower.width, tower.mlp), plan_flops(plan, tower.width, tower.mlp)
    record = {
        "method": config.method,
        "config": config.label(),
        "schedule": config.schedule if config.method == "tome" else None,
        "tower": tower.kind,
        "protected_tokens": tower.protect,
        "per_layer_tokens": plan.per_layer_tokens,
        "per_layer_r": [p.r for p in plan.layers] if config.method == "tome" else None,
        "per_layer_keep": [p.keep for p in plan.layers] if config.method == "evit" else None,
        "encoder_flops_before": before,
        "encoder_flops_after": after,
        "flops_ratio": round(after / before, 4),
    }
    spec.derived["tokens"] = record  # what an export of this spec records in its manifest
    return record
