"""Build a student for a teacher: sizes from the `StudentConfig`, the output width and vocabulary
from the teacher, and, for `text=inherit` and `image=effnet`, the teacher's own weights with only
some layers kept (TinyCLIP's weight inheritance, Wu et al., ICCV 2023: a student that starts from
a subset of the teacher's layers learns faster and ends better than one from random weights).

Which EfficientNet blocks an `image=effnet` student keeps: every stage's first block (it changes
the stride or the channel count, so nothing after it would fit without it), and of the residual
blocks (stride 1, same channels, an identity skip: removable without any shape change) the ones
whose removal costs the most. The cost of a block is measured, not assumed: the mean cosine
between the teacher's embedding of each calibration photo (every view, 224 px) and the embedding
with that one block removed, at the student's resolution (`block_importance`). Measured on the
default teacher, the last block of a stage is not reliably the least important (docs/distillation.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgevl.distill.config import StudentConfig
from edgevl.distill.students import (
    Block, ConvArch, EffNetArch, EffNetImageStudent, StudentPair, TextArch, ViTArch, build_tower,
)
from edgevl.errors import InputError
from edgevl.models.spec import ModelSpec


def teacher_width(teacher: ModelSpec) -> int:
    """The teacher's embedding width, from one forward pass of its text tower."""
    with torch.no_grad():
        feeds = {k: v[:1] for k, v in teacher.text.example_inputs.items()}
        return int(teacher.text.module(**feeds).shape[-1])


def teacher_vocab(teacher: ModelSpec) -> int:
    if teacher.vocab_size:
        return int(teacher.vocab_size)
    raise InputError(f"teacher {teacher.name} declares no vocabulary size; use a teacher that ships a tokenizer")


def student_archs(cfg: StudentConfig, teacher: ModelSpec, width: Optional[int] = None) -> tuple[object, TextArch]:
    """The image and text architectures (before any inherited weights are copied in). `width` is
    the teacher's embedding width where the caller knows it (e.g. from cached teacher embeddings),
    so the teacher need not run; without it one text forward pass measures it."""
    dim = width if width is not None else teacher_width(teacher)
    if cfg.image == "vit":
        image: object = ViTArch(cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.resolution, dim)
    elif cfg.image == "effnet":
        image = EffNetArch(EFFNET_VARIANT, _effnet_blocks(cfg, teacher), cfg.resolution, dim)
        if _head_width(teacher) != dim:
            raise InputError(f"image=effnet: the teacher's image features are {_head_width(teacher)}-d but its "
                             f"embeddings {dim}-d; image=effnet needs a teacher whose pooled features are the embedding")
    else:
        image = ConvArch(cfg.width, cfg.depth, cfg.resolution, dim)
    context = teacher.preprocess.context_length
    if cfg.text == "fresh":
        text = TextArch(teacher_vocab(teacher), context, cfg.text_width, cfg.text_depth, cfg.text_heads,
                        4 * cfg.text_width, dim)
    else:
        text = _inherited_arch(cfg, teacher, dim, context)
    return image, text


def build_student(cfg: StudentConfig, teacher: ModelSpec, seed: int, width: Optional[int] = None) -> StudentPair:
    """A fresh student (seeded), with the teacher's text layers copied in for `text=inherit`;
    `width` as in `student_archs`."""
    image_arch, text_arch = student_archs(cfg, teacher, width)
    torch.manual_seed(seed)
    student = StudentPair(build_tower(image_arch), build_tower(text_arch))
    if cfg.text == "inherit":
        _copy_text(student.text, teacher.text.module, _keep(cfg.text_layers, len(_layers(teacher.text.module))))
    if cfg.image == "effnet":
        _copy_effnet(student.image, _teacher_effnet(teacher))
    return student


EFFNET_VARIANT = "efficientnet-lite0"


def _teacher_effnet(teacher: ModelSpec) -> nn.Module:
    net = getattr(teacher.image.module, "net", None)
    if net is None or not all(hasattr(net, a) for a in ("_conv_stem", "_blocks", "_conv_head")):
        raise InputError(f"image=effnet inherits an EfficientNet image tower; teacher {teacher.name}'s is "
                         f"{type(teacher.image.module).__name__}: use image=vit or image=conv")
    return net


def _head_width(teacher: ModelSpec) -> int:
    return int(_teacher_effnet(teacher)._conv_head.weight.shape[0])


def residual_blocks(net: nn.Module) -> list[int]:
    """The blocks that can be removed without any shape change: identity skip, stride 1, as many
    channels out as in. The others are each stage's first block."""
    out = []
    for i, block in enumerate(net._blocks):
        a = block._block_args
        stride = a.stride if isinstance(a.stride, int) else max(a.stride)  # the package stores 1 or [s]
        if a.id_skip and stride == 1 and a.input_filters == a.output_filters:
            out.append(i)
    return out


@torch.no_grad()
def block_importance(teacher: ModelSpec, resolution: int) -> dict[int, float]:
    """For each residual block of the teacher's EfficientNet: the mean cosine, over every view of
    the calibration photos, between the teacher's embedding (its own preprocessing) and the
    trunk's embedding at `resolution` with only that block removed. Lower means the block
    matters more. The activations before each block are computed once and each removal re-runs
    only the blocks after it."""
    from edgevl.distill.data import student_preprocess
    from edgevl.distill.sources import bundled_photo_views
    from edgevl.preprocess import preprocess_images

    net = _teacher_effnet(teacher)
    images = bundled_photo_views("calibration")[1]
    target = teacher.image.module(pixel_values=torch.from_numpy(preprocess_images(images, teacher.preprocess)))
    x = torch.from_numpy(preprocess_images(images, student_preprocess(teacher.preprocess, resolution)))
    h = net._swish(net._bn0(net._conv_stem(x)))
    before = []
    for block in net._blocks:
        before.append(h)
        h = block(h)

    def without(i: int) -> torch.Tensor:
        h = before[i]  # the input of block i goes straight to block i + 1
        for block in net._blocks[i + 1:]:
            h = block(h)
        return F.normalize(net._swish(net._bn1(net._conv_head(h))).mean((2, 3)), dim=-1)

    return {i: float((without(i) * target).sum(-1).mean()) for i in residual_blocks(net)}


def choose_blocks(teacher: ModelSpec, count: int, resolution: int) -> tuple[int, ...]:
    """`count` of the teacher's blocks: every stage's first, then the residual blocks in order of
    measured importance (`block_importance`), returned in network order."""
    net = _teacher_effnet(teacher)
    n, residual = len(net._blocks), residual_blocks(net)
    _check_count(count, n, n - len(residual))
    if count == n:
        return tuple(range(n))
    score = block_importance(teacher, resolution)
    # the higher the cosine without a block, the less that block matters; ties go to the later block
    drop = set(sorted(residual, key=lambda i: (-score[i], -i))[:n - count])
    return tuple(i for i in range(n) if i not in drop)


def _check_count(count: int, n: int, fixed: int) -> None:
    if not fixed <= count <= n:
        raise InputError(f"--student blocks={count}: the teacher's EfficientNet has {n} blocks, {fixed} of them "
                         f"stage-first blocks that must stay; choose {fixed}..{n}")


def _explicit_blocks(cfg: StudentConfig, net: nn.Module) -> tuple[int, ...]:
    n, residual = len(net._blocks), set(residual_blocks(net))
    keep = sorted(set(cfg.keep_blocks))
    spec = "+".join(map(str, cfg.keep_blocks))
    if len(keep) != len(cfg.keep_blocks) or not all(0 <= i < n for i in keep):
        raise InputError(f"--student keep_blocks={spec}: give distinct block indices in 0..{n - 1}")
    missing = [i for i in range(n) if i not in residual and i not in keep]
    if missing:
        raise InputError(f"--student keep_blocks={spec} lacks stage-first block(s) {'+'.join(map(str, missing))}; "
                         f"only the residual blocks {'+'.join(map(str, sorted(residual)))} can be dropped")
    return tuple(keep)


def check_student(cfg: StudentConfig, teacher: ModelSpec) -> None:
    """Refuse a student this teacher cannot give (cheap: no forward pass), before the teacher's
    embeddings are computed."""
    if cfg.text == "inherit":
        _keep(cfg.text_layers, len(_layers(teacher.text.module)))
    if cfg.image == "effnet":
        net = _teacher_effnet(teacher)
        if cfg.keep_blocks:
            _explicit_blocks(cfg, net)
        else:
            n = len(net._blocks)
            _check_count(cfg.blocks or n, n, n - len(residual_blocks(net)))


def _effnet_blocks(cfg: StudentConfig, teacher: ModelSpec) -> tuple[int, ...]:
    net = _teacher_effnet(teacher)
    if cfg.keep_blocks:
        return _explicit_blocks(cfg, net)
    count = cfg.blocks or len(net._blocks)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # One process measures and every rank builds the same student.
        chosen = [choose_blocks(teacher, count, cfg.resolution) if torch.distributed.get_rank() == 0 else None]
        torch.distributed.broadcast_object_list(chosen, src=0)
        return tuple(chosen[0])
    return choose_blocks(teacher, count, cfg.resolution)


@torch.no_grad()
def _copy_effnet(student: EffNetImageStudent, net: nn.Module) -> None:
    dst = student.net
    try:
        for name in ("_conv_stem", "_bn0", "_conv_head", "_bn1"):
            getattr(dst, name).load_state_dict(getattr(net, name).state_dict())
        for block, i in zip(dst._blocks, student.arch.blocks):
            block.load_state_dict(net._blocks[i].state_dict())
    except RuntimeError as exc:
        raise InputError(f"image=effnet: the teacher's image tower is not {student.arch.variant} "
                         f"({str(exc).splitlines()[0]}); use image=vit or image=conv") from exc


def _layers(tower: nn.Module) -> nn.ModuleList:
    if hasattr(tower, "bert"):
        return tower.bert.encoder.layer
    if hasattr(tower, "text_model") and hasattr(tower, "projection"):
        return tower.text_model.encoder.layers
    raise InputError(f"text=inherit supports CLIP- and BERT-style text towers, not {type(tower).__name__}; "
                     "use text=fresh")


def _keep(indices: tuple[int, ...], n: int) -> list[int]:
    keep = [i % n if -n <= i < n else None for i in indices]
    if None in keep:
        raise InputError(f"--student text_layers {'+'.join(map(str, indices))}: the teacher has {n} layers (0..{n - 1})")
    if len(set(keep)) != len(keep):
        raise InputError(f"--student text_layers {'+'.join(map(str, indices))} names a layer twice")
    return sorted(keep)


def _inherited_arch(cfg: StudentConfig, teacher: ModelSpec, dim: int, context: int) -> TextArch:
    tower = teacher.text.module
    n = len(_layers(tower))
    depth = len(_keep(cfg.text_layers, n))
    if hasattr(tower, "bert"):
        c = tower.bert.config
        return TextArch(c.vocab_size, context, c.hidden_size, depth, c.num_attention_heads, c.intermediate_size, dim,
                        norm_first=False, causal=False, act="gelu", eps=c.layer_norm_eps, embed_norm=True,
                        final_norm=False, pool="mean", pre_proj_norm=True)
    c = tower.text_model.config
    act = "quick_gelu" if c.hidden_act == "quick_gelu" else "gelu"
    return TextArch(c.vocab_size, context, c.hidden_size, depth, c.num_attention_heads, c.intermediate_size, dim,
                    norm_first=True, causal=True, act=act, eps=c.layer_norm_eps, embed_norm=False,
                    final_norm=True, pool="eos", pre_proj_norm=False)


def _copy_linear(dst: nn.Linear, src: nn.Linear) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
    else:
        dst.bias.zero_()


def _copy_qkv(dst: Block, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
    dst.attn.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
    dst.attn.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))


@torch.no_grad()
def _copy_text(student: nn.Module, tower: nn.Module, keep: list[int]) -> None:
    context = student.arch.context
    if hasattr(tower, "bert"):
        emb = tower.bert.embeddings
        student.tokens.weight.copy_(emb.word_embeddings.weight)
        # BERT adds token-type 0 to every position: fold that row into the position table.
        student.pos.copy_(emb.position_embeddings.weight[:context] + emb.token_type_embeddings.weight[0])
        student.embed_norm.load_state_dict(emb.LayerNorm.state_dict())
        for dst, i in zip(student.blocks, keep):
            src = tower.bert.encoder.layer[i]
            a = src.attention
            _copy_qkv(dst, a.self.query, a.self.key, a.self.value)
            _copy_linear(dst.attn.out, a.output.dense)
            dst.ln1.load_state_dict(a.output.LayerNorm.state_dict())
            _copy_linear(dst.fc1, src.intermediate.dense)
            _copy_linear(dst.fc2, src.output.dense)
            dst.ln2.load_state_dict(src.output.LayerNorm.state_dict())
    else:
        tm = tower.text_model
        student.tokens.weight.copy_(tm.embeddings.token_embedding.weight)
        student.pos.copy_(tm.embeddings.position_embedding.weight[:context])
        for dst, i in zip(student.blocks, keep):
            src = tm.encoder.layers[i]
            a = src.self_attn
            _copy_qkv(dst, a.q_proj, a.k_proj, a.v_proj)
            _copy_linear(dst.attn.out, a.out_proj)
            dst.ln1.load_state_dict(src.layer_norm1.state_dict())
            _copy_linear(dst.fc1, src.mlp.fc1)
            _copy_linear(dst.fc2, src.mlp.fc2)
            dst.ln2.load_state_dict(src.layer_norm2.state_dict())
        student.norm.load_state_dict(tm.final_layer_norm.state_dict())
    _copy_linear(student.proj, tower.projection)
