"""Parameters and FLOPs of each tower, the teacher's beside the student's, for `edgevl distill`.

FLOPs are counted by PyTorch's own `torch.utils.flop_counter.FlopCounterMode` on one forward at
batch 1 (the image at the tower's own resolution, the text at the teacher's context length, every
token attended): convolutions (depthwise included), matrix products and attention, multiply and
add counted as two operations; element-wise ops, normalisation and pooling are left out, as in
`edgevl.profile.flops`, which counts an exported graph the same way. edgevl's attention op is
opaque to the counter, so its formula is registered here (the one `edgevl.profile.flops` uses:
Q K^T and softmax(.) V, each 2 * batch * heads * q_len * kv_len * head_dim).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_registered = False


def _register_attention() -> None:
    global _registered
    if _registered:
        return
    from torch.utils.flop_counter import register_flop_formula

    import edgevl.ops.attention  # noqa: F401 - defines torch.ops.edgevl.attention

    @register_flop_formula(torch.ops.edgevl.attention)
    def _attention(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        b, h, s_q, d = q_shape
        return 2 * b * h * s_q * k_shape[-2] * (d + v_shape[-1])

    _registered = True


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def flops(module: nn.Module, run: Callable[[nn.Module], object]) -> int:
    """FLOPs of `run(module)` (one forward), in inference mode."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_attention()
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            run(module)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def tower_sizes(teacher: "object", student: nn.Module, resolution: int) -> dict[str, dict[str, float]]:
    """{"image": {...}, "text": {...}}, each with the teacher's and the student's parameters and
    FLOPs and the student/teacher FLOPs ratio; `teacher` is a ModelSpec, `student` a StudentPair."""
    pre = teacher.preprocess
    tokens = int(pre.context_length)
    ids = torch.ones(1, tokens, dtype=torch.long)  # [CLS]-free filler: FLOPs do not depend on the ids
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    teacher_text = {k: feeds[k] for k in pre.text_inputs}
    teacher_side = int(pre.crop)

    def on(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # the tower's device (a student may be on a GPU)
        return x.to(next(m.parameters()).device)

    def image(side: int) -> Callable[[nn.Module], object]:
        return lambda m: m(on(m, torch.zeros(1, 3, side, side)))

    out = {}
    for name, t_mod, s_mod, t_run, s_run in (
        ("image", teacher.image.module, student.image, image(teacher_side), image(resolution)),
        ("text", teacher.text.module, student.text, lambda m: m(**{k: on(m, v) for k, v in teacher_text.items()}),
         lambda m: m(**{k: on(m, v) for k, v in feeds.items()})),
    ):
        t_flops, s_flops = flops(t_mod, t_run), flops(s_mod, s_run)
        out[name] = {"teacher_params": params(t_mod), "teacher_flops": t_flops, "student_params": params(s_mod),
                     "student_flops": s_flops, "flops_ratio": s_flops / t_flops if t_flops else float("nan"),
                     "input": f"{teacher_side}->{resolution} px" if name == "image" else f"{tokens} tokens"}
    return out


def size_lines(sizes: dict[str, dict[str, float]]) -> list[str]:
    """The table `edgevl distill` prints."""
    lines = ["tower  input           teacher params  GFLOPs   student params  GFLOPs   FLOPs ratio"]
    for name, s in sizes.items():
        lines.append(f"{name:<6} {s['input']:<15} {s['teacher_params'] / 1e6:>12.2f} M {s['teacher_flops'] / 1e9:>7.3f}  "
                     f"{s['student_params'] / 1e6:>12.2f} M {s['student_flops'] / 1e9:>7.3f}  "
                     f"{s['flops_ratio']:>10.2f}x")
    return lines
