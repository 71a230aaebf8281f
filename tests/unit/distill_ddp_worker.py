"""Run by `torchrun` in test_distill.py: one rank of a distillation; saves its own final weights
to WEIGHTS_DIR/rank{r}.safetensors so the test can compare the replicas."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgevl.distill.trainer import distill_run


def ddp_config(teacher: str, out: Path, cache: Path):  # noqa: ANN201 - DistillConfig
    """The run the 2-process test and its 1-process reference share (global batch 8 images +
    4 texts, the default stages, so the joint stage's cross-batch losses are exercised)."""
    from edgevl.distill import parse_student
    from edgevl.distill.config import DistillConfig

    return DistillConfig(teacher=teacher, student=parse_student("vit-micro,text=inherit,text_layers=0+2"),
                         data="bundled", out=out, steps=6, batch=8, text_batch=4, views=1, text_corpus="data",
                         checkpoint_every=0, eval_every=0, cache_dir=cache)


if __name__ == "__main__":
    teacher, out, cache, weights = sys.argv[1:5]
    result = distill_run(ddp_config(teacher, Path(out), Path(cache)), quiet=True)
    rank = torch.distributed.get_rank()
    save_file({k: v.detach().contiguous() for k, v in result.student.state_dict().items()},
              str(Path(weights) / f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()
