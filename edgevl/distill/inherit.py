"""Build a student for a teacher: sizes from the `StudentConfig`, the output width and vocabulary
from the teacher, and, for `text=inherit`, the teacher's text weights with only some layers kept
(TinyCLIP's weight inheritance, Wu et al., ICCV 2023: a student that starts from a subset of the
teacher's layers learns faster and ends better than one from random weights)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from edgevl.distill.config import StudentConfig
from edgevl.distill.students import Block, ConvArch, StudentPair, TextArch, ViTArch, build_tower
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
    return student


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
