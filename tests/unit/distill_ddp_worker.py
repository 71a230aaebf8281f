"""Run by `torchrun` in test_distill.py: one rank of a distillation; saves its own final weights
to WEIGHTS_DIR/rank{r}.safetensors and, in WEIGHTS_DIR/rank{r}.json, how many forward calls the
teacher's towers made on this rank, so the test can compare the replicas and see which ranks ran
the teacher."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import edgevl.models.resolve
from edgevl.distill.trainer import distill_run


def ddp_config(teacher: str, out: Path, cache: Path):  # noqa: ANN201 - DistillConfig
    """The run the multi-process tests and their 1-process reference share (global batch 8 images
    + 4 texts, the default stages, so the joint stage's cross-batch losses are exercised)."""
    from edgevl.distill import parse_student
    from edgevl.distill.config import DistillConfig

    return DistillConfig(teacher=teacher, student=parse_student("vit-micro,text=inherit,text_layers=0+2"),
                         data="bundled", out=out, steps=6, batch=8, text_batch=4, views=1, text_corpus="data",
                         checkpoint_every=0, eval_every=0, cache_dir=cache)


def count_teacher_calls() -> list:
    """Forward hooks on both towers of every model `distill_run` resolves (the real teacher, run
    as it is); returns the list each call appends to."""
    calls: list = []
    resolve = edgevl.models.resolve.resolve_model

    def resolve_counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - resolve_model's own
        spec = resolve(*args, **kwargs)
        for tower in (spec.image.module, spec.text.module):
            tower.register_forward_hook(lambda *_: calls.append(1))
        return spec

    edgevl.models.resolve.resolve_model = resolve_counted
    return calls


if __name__ == "__main__":
    teacher, out, cache, weights = sys.argv[1:5]
    calls = count_teacher_calls()
    result = distill_run(ddp_config(teacher, Path(out), Path(cache)), quiet=True)
    rank = torch.distributed.get_rank()
    save_file({k: v.detach().contiguous() for k, v in result.student.state_dict().items()},
              str(Path(weights) / f"rank{rank}.safetensors"))
    report = {"rank": rank, "local_rank": int(os.environ["LOCAL_RANK"]), "node": int(os.environ["GROUP_RANK"]),
              "cache": cache, "teacher_calls": len(calls), "cache_hit": result.cache_hit}
    (Path(weights) / f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()
