"""Student towers: a ViT, a small CNN or the teacher's own EfficientNet with fewer blocks for
images, a transformer for text. Each returns L2-normalised embeddings in the teacher's space (a
projection maps its width onto it; the inherited EfficientNet is already in it).

Every attention block is `StudentAttention`, which runs edgevl's one attention op outside
training (so `torch.export` keeps each block as one node and every exporter fuses it) and plain
SDPA while training (the custom op has no autograd formula; both compute the same function).
The architecture is fully described by a frozen `*Arch` dataclass, stored as JSON next to the
safetensors weights, so a student folder rebuilds without pickle and without its teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgevl.ops.attention import edgevl_attention


@dataclass(frozen=True)
class ViTArch:
    width: int
    depth: int
    heads: int
    patch: int
    resolution: int
    embed_dim: int
    kind: str = "vit"


@dataclass(frozen=True)
class ConvArch:
    width: int  # channels after the stem; doubled at each of the `depth` stride-2 stages (capped at 8x)
    depth: int
    resolution: int
    embed_dim: int
    kind: str = "conv"


@dataclass(frozen=True)
class EffNetArch:
    """The teacher's EfficientNet trunk with only some of its blocks: `blocks` are indices into
    the teacher's flat block list (every stage's first block among them), `resolution` the input
    side (a multiple of 32, so every stride-2 layer sees an even size and TF "same" padding is the
    teacher's). The pooled 1280-d features are the embedding, as in the teacher: no projection."""

    variant: str
    blocks: tuple[int, ...]
    resolution: int
    embed_dim: int
    kind: str = "effnet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))  # a JSON list back to a tuple


@dataclass(frozen=True)
class TextArch:
    vocab: int
    context: int
    width: int
    depth: int
    heads: int
    mlp: int
    embed_dim: int
    norm_first: bool = True  # pre-LN (CLIP) or post-LN (BERT)
    causal: bool = False
    act: str = "gelu"  # "gelu" or "quick_gelu" (CLIP)
    eps: float = 1e-5
    embed_norm: bool = False  # LayerNorm after the embeddings (BERT)
    final_norm: bool = True  # LayerNorm after the last block (CLIP)
    pool: str = "mean"  # "mean" over the attention mask, or "eos" (the last attended token, CLIP)
    pre_proj_norm: bool = False  # L2-normalise before the projection (sentence-transformers + a fitted projection)
    kind: str = "text"


def arch_to_json(arch: object) -> dict:
    return asdict(arch)


def arch_from_json(data: dict) -> object:
    kinds = {"vit": ViTArch, "conv": ConvArch, "effnet": EffNetArch, "text": TextArch}
    if data.get("kind") not in kinds:
        raise ValueError(f"unknown student tower kind {data.get('kind')!r}; expected one of {', '.join(kinds)}")
    return kinds[data["kind"]](**data)


class StudentAttention(nn.Module):
    """Multi-head self-attention; q, k, v from one fused projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scale = (w // self.heads) ** -0.5
        if self.training:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        else:
            o = edgevl_attention(self, q, k, v, mask, scale)
        return self.out(o.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int, norm_first: bool = True, act: str = "gelu",
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.act = act
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = StudentAttention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h)
        return self.fc2(h)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.ln1(x), mask)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.mlp(x))


class ViTImageStudent(nn.Module):
    """`pixel_values` [batch, 3, R, R] -> `image_embeds` [batch, embed_dim], L2-normalised:
    patch embedding, class token, pre-LN blocks, the class token's LayerNorm, a projection."""

    def __init__(self, arch: ViTArch) -> None:
        super().__init__()
        self.arch = arch
        tokens = (arch.resolution // arch.patch) ** 2 + 1
        self.patch = nn.Conv2d(3, arch.width, arch.patch, stride=arch.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos = nn.Parameter(torch.randn(1, tokens, arch.width) * 0.02)
        self.blocks = nn.ModuleList(Block(arch.width, arch.heads, 4 * arch.width) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width)
        self.proj = nn.Linear(arch.width, arch.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.proj(self.norm(x[:, 0])), dim=-1)


def _conv_bn(cin: int, cout: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6())


class ConvImageStudent(nn.Module):
    """A small MobileNet-style CNN (depthwise-separable stride-2 stages, ReLU6 as
    EfficientNet-Lite's), globally average pooled, projected to embed_dim, L2-normalised. Its
    BatchNorm statistics are per process under DDP."""

    def __init__(self, arch: ConvArch) -> None:
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = [_conv_bn(3, arch.width, 2)]
        c = arch.width
        for i in range(arch.depth):
            out = arch.width * min(2 ** (i + 1), 8)
            layers += [_conv_bn(c, c, 2, groups=c),
                       nn.Sequential(nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU6())]
            c = out
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c, arch.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(pixel_values).mean((2, 3))), dim=-1)


def efficientnet(variant: str, resolution: int) -> nn.Module:
    """A randomly initialised EfficientNet(-Lite) of package `efficientnet-lite-pytorch`, its
    static "same" padding computed for `resolution`, without the classifier."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(variant, image_size=resolution)
    net._fc = nn.Identity()
    return net


class EffNetImageStudent(nn.Module):
    """`pixel_values` [batch, 3, R, R] -> `image_embeds` [batch, 1280], L2-normalised: the
    teacher's stem, the kept blocks, the teacher's head, global average pool (the teacher's
    `EffNetImageTower` with blocks removed). Removed blocks are residual ones (stride 1, same
    channels), so every kept layer sees the shapes it was trained on.

    BatchNorm stays in inference mode while training: the running statistics are the teacher's
    (ImageNet), which a distillation batch of a few dozen views of a few dozen photos would only
    make noisier; its affine weights still train. No stochastic depth either: every kept block
    runs at every step."""

    def __init__(self, arch: EffNetArch) -> None:
        super().__init__()
        self.arch = arch
        net = efficientnet(arch.variant, arch.resolution)
        net._blocks = nn.ModuleList(net._blocks[i] for i in arch.blocks)
        self.net = net

    def train(self, mode: bool = True) -> "EffNetImageStudent":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))
        for block in net._blocks:
            x = block(x)
        x = net._swish(net._bn1(net._conv_head(x)))
        return F.normalize(x.mean((2, 3)), dim=-1)


class TextStudent(nn.Module):
    """`input_ids`, `attention_mask` int64 [batch, seq] -> `text_embeds` [batch, embed_dim],
    L2-normalised. Covers CLIP's text transformer (pre-LN, causal, end-of-text pooling) and BERT's
    (post-LN, embedding LayerNorm, mean pooling), so either can be inherited layer by layer."""

    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.arch = arch
        self.tokens = nn.Embedding(arch.vocab, arch.width)
        self.pos = nn.Parameter(torch.randn(arch.context, arch.width) * 0.01)
        self.embed_norm = nn.LayerNorm(arch.width, eps=arch.eps) if arch.embed_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(arch.width, arch.heads, arch.mlp, arch.norm_first, arch.act, arch.eps)
                                    for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=arch.eps) if arch.final_norm else nn.Identity()
        self.proj = nn.Linear(arch.width, arch.embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        x = self.embed_norm(self.tokens(input_ids) + self.pos[:seq])
        # [batch, 1, seq, seq]: ONNX Attention wants the query axis spelled out, not broadcast.
        square = torch.ones(seq, seq, dtype=torch.bool, device=x.device)
        keep = attention_mask.bool()[:, None, None, :] & (square.tril() if self.arch.causal else square)[None, None]
        # Additive float mask (the form every target's fused op takes); the dtype's minimum keeps
        # fully padded rows finite.
        mask = torch.zeros((), dtype=x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.arch.pool == "eos":
            last = (attention_mask.sum(-1) - 1).clamp(min=0)
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        else:
            m = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.arch.pre_proj_norm:
            pooled = F.normalize(pooled, dim=-1)
        return F.normalize(self.proj(pooled), dim=-1)


class StudentPair(nn.Module):
    """Both towers in one module, so DDP synchronises them with one forward per step."""

    def __init__(self, image: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.image = image
        self.text = text

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(pixel_values), self.text(input_ids, attention_mask)


def build_tower(arch: object) -> nn.Module:
    if isinstance(arch, ViTArch):
        return ViTImageStudent(arch)
    if isinstance(arch, ConvArch):
        return ConvImageStudent(arch)
    if isinstance(arch, EffNetArch):
        return EffNetImageStudent(arch)
    if isinstance(arch, TextArch):
        return TextStudent(arch)
    raise TypeError(f"no student tower for {type(arch).__name__}")
