"""`edgevl distill`: shrink a teacher dual encoder into a student that exports as-is.

Torch-free on import (the CLI parses and validates first); `distill` imports the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from edgevl.distill.config import DistillConfig, LossWeights, OptimConfig, Stage, StudentConfig, parse_student

if TYPE_CHECKING:
    from edgevl.distill.trainer import DistillResult

__all__ = ["DistillConfig", "LossWeights", "OptimConfig", "Stage", "StudentConfig", "distill", "parse_student"]


def distill(teacher: Optional[str], student: Union[str, StudentConfig], data: str, out: Union[str, Path],
            resume: bool = False, quiet: bool = True, **options: Any) -> "DistillResult":
    """Distil `teacher` (a model name or checkpoint folder; None: the default) into `student` (a
    `StudentConfig` or a `--student` string) on `data`, writing a model folder to `out` that
    `edgevl export` loads. `options` are `DistillConfig`'s other fields (steps, batch, seed,
    stages, optim, heldout, views, text_corpus, checkpoint_every, eval_every, cache_dir)."""
    from edgevl.distill.trainer import distill_run

    spec = parse_student(student) if isinstance(student, str) else student
    cfg = DistillConfig(teacher=teacher, student=spec, data=data, out=Path(out), **options)
    return distill_run(cfg, resume=resume, quiet=quiet)
