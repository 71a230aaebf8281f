"""The distillation loop, on one process or many (PyTorch DistributedDataParallel under
`torchrun`: gloo on CPU, NCCL on GPU).

Each step draws the GLOBAL batch from a generator seeded by (seed, step), so the batch does not
depend on the number of processes nor on where a resumed run restarted. Rank r takes the r-th
contiguous slice; the student's embeddings are all-gathered (with gradients) and every rank
computes the loss of the whole global batch, so the result equals one process's within fp32
rounding. DDP averages the gradients; each rank's gradient through its own rows is world-size
times the loss's (the all-gather's backward sums every rank's identical loss), so the average is
exactly the global loss's gradient. Rank 0 alone evaluates and writes checkpoints and the model;
the local rank 0 of each machine alone runs the teacher (see `distill_run`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from edgevl.distill.checkpoint import (
    check_out_dir, latest_checkpoint, load_checkpoint, save_checkpoint, save_student_folder,
)
from edgevl.distill.config import DistillConfig
from edgevl.distill.data import DistillData, build_data, default_cache, evaluate, student_preprocess
from edgevl.distill.inherit import build_student, check_student
from edgevl.distill.losses import total_loss
from edgevl.distill.sources import check_data_spec, load_heldout, training_source
from edgevl.distill.students import StudentPair, arch_to_json
from edgevl.errors import InputError

FORMAT = "edgevl-student"


@dataclass
class DistillResult:
    out: str
    steps: int
    losses: list[float] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)  # evaluations: {"step", "agreement", ...}
    cache_hit: bool = False
    data_seconds: float = 0.0  # building the tensors, the teacher's embeddings included on a cache miss
    world_size: int = 1
    rank: int = 0  # this process's global rank; only rank 0 writes `out`
    sizes: dict = field(default_factory=dict)  # per tower: teacher and student parameters and FLOPs (rank 0)
    student: Optional[StudentPair] = None

    @property
    def evaluation(self) -> dict:
        """The last held-out evaluation (`data.evaluate`'s figures and its step); {} if none."""
        return self.metrics[-1] if self.metrics else {}


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _local_rank(rank: int) -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; the global rank without it)."""
    return int(os.environ.get("LOCAL_RANK", rank))


def _device(world: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def batch_indices(cfg: DistillConfig, step: int, views: int, texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randint(0, views, (cfg.batch,), generator=g), torch.randint(0, texts, (cfg.text_batch,), generator=g)


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[0] // world
    return x[rank * n:(rank + 1) * n]


class FunctionMatching:
    """Fresh views for each step and the teacher's embeddings of them (`augment.py`): the state
    function matching needs beside the cached data. `seen` (tests) is called with each step's
    views and the two model inputs made from them."""

    def __init__(self, teacher, student_pre, seed: int,  # noqa: ANN001 - ModelSpec, PreprocessConfig
                 images: list) -> None:
        from edgevl.distill.augment import bounded

        self.teacher, self.seed = teacher, seed
        self.teacher_pre, self.student_pre = teacher.preprocess, student_pre
        self.size = max(teacher.preprocess.crop, student_pre.crop)
        self.images = bounded(images, self.size)
        self.teacher_seconds = 0.0
        self.seen: Optional[Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]] = None
        teacher.image.module.eval()

    def inputs(self, primary: torch.Tensor, rows: range, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's embeddings of this rank's rows' views and the student's input pixels."""
        from edgevl.distill.augment import draw_views, model_input

        views = draw_views(self.images, primary, rows, self.seed, step, self.size)
        t_px = model_input(views, self.teacher_pre)
        same = (self.student_pre.crop, self.student_pre.mean, self.student_pre.std) == (
            self.teacher_pre.crop, self.teacher_pre.mean, self.teacher_pre.std)
        s_px = t_px if same else model_input(views, self.student_pre)
        if self.seen is not None:
            self.seen(step, views, t_px, s_px)
        t0 = time.perf_counter()
        with torch.no_grad():
            t_img = self.teacher.image.module(pixel_values=t_px).float()
        self.teacher_seconds = time.perf_counter() - t0
        return t_img, s_px


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, data: DistillData, cfg: DistillConfig,
               step: int, rank: int, world: int, device: torch.device,
               matching: Optional[FunctionMatching] = None) -> tuple[float, dict[str, float]]:
    stage, progress = cfg.stage_at(step)
    for group in opt.param_groups:
        group["lr"] = cfg.optim.lr_at(step, cfg.steps)
    n_images = len(data.source_images) if matching is not None else len(data.pixels)
    img_idx, extra_idx = batch_indices(cfg, step, n_images, len(data.texts))
    pair_idx = (data.source_text if matching is not None else data.view_text)[img_idx]
    local_img, local_pair, local_extra = (_shard(x, rank, world) for x in (img_idx, pair_idx, extra_idx))
    text_rows = torch.cat([local_pair, local_extra])
    # Trim the padding every text of the GLOBAL batch shares (same length on every rank): padded
    # positions are masked out, so this changes nothing but the work.
    length = int(data.mask[torch.cat([pair_idx, extra_idx])].sum(-1).max())
    if matching is not None:
        # This rank's rows of the global batch, each a fresh view shown to teacher and student.
        n = cfg.batch // world
        t_local, pixels = matching.inputs(img_idx, range(rank * n, (rank + 1) * n), step)
        t_img = _gather(t_local.to(device), world)
    else:
        pixels = data.pixels[local_img]
        t_img = data.teacher_image[img_idx].to(device)
    s_img, s_txt = model(pixels.to(device), data.ids[text_rows, :length].to(device),
                         data.mask[text_rows, :length].to(device))
    s_img = _gather(s_img, world)
    s_pair = _gather(s_txt[:len(local_pair)], world)
    s_extra = _gather(s_txt[len(local_pair):], world)
    t_pair = data.teacher_text[pair_idx].to(device)
    t_extra = data.teacher_text[extra_idx].to(device)
    loss, terms = total_loss(stage.losses, progress, s_img, t_img, s_pair, t_pair, pair_idx.to(device),
                             torch.cat([s_pair, s_extra]), torch.cat([t_pair, t_extra]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), terms


def _check_divisible(cfg: DistillConfig, world: int) -> None:
    if cfg.batch % world or cfg.text_batch % world:
        raise InputError(f"--batch {cfg.batch} and --text-batch {cfg.text_batch} must be multiples of the "
                         f"{world} processes; change them or --nproc_per_node")


def distill_run(cfg: DistillConfig, resume: bool = False, quiet: bool = False,
                log: Optional[Callable[[str], None]] = None,
                on_views: Optional[Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]] = None
                ) -> DistillResult:
    """Distil `cfg.teacher` into a `cfg.student` on `cfg.data`; write the model folder to
    `cfg.out` (rank 0). Returns the losses and held-out evaluations. Under function matching,
    `on_views(step, views, teacher_pixels, student_pixels)` sees each step's views (tests)."""
    from edgevl.models.spec import LoadOptions
    from edgevl.models.resolve import resolve_model

    check_data_spec(cfg.data, cfg.heldout)
    if cfg.extra_data is not None:
        check_data_spec(cfg.extra_data, None, option="--extra-data")
    rank, world = _dist()
    _check_divisible(cfg, world)
    if rank == 0:
        check_out_dir(cfg.out, resume)
    say = log or ((lambda m: print(m, file=sys.stderr, flush=True)) if not quiet and rank == 0 else (lambda m: None))
    device = _device(world)
    teacher = resolve_model(cfg.teacher, LoadOptions())
    check_student(cfg.student, teacher)
    heldout = load_heldout(cfg.heldout, cfg.data)
    source = training_source(cfg.data, cfg.extra_data, heldout, say)
    cache = default_cache(cfg.cache_dir)

    def data_for(run_teacher: bool = True) -> DistillData:
        return build_data(teacher, source, heldout, cfg.student.resolution, cfg.views, cfg.seed, cfg.text_corpus,
                          cache, say, run_teacher=run_teacher, fixed_views=cfg.augment == "fixed")

    t_data = time.perf_counter()
    if world > 1:
        # Each node's local rank 0 fills its node's cache (machines need not share a file system);
        # after the barrier the other ranks read that file and never run the teacher.
        data = data_for() if _local_rank(rank) == 0 else None
        torch.distributed.barrier()
        data = data if data is not None else data_for(run_teacher=False)
    else:
        data = data_for()
    data_seconds = time.perf_counter() - t_data
    width = int(data.teacher_text.shape[-1])  # from the cache: ranks that read it never run the teacher
    student = build_student(cfg.student, teacher, cfg.seed, width).to(device)
    sizes: dict = {}
    if rank == 0:
        from edgevl.distill.sizes import size_lines, tower_sizes

        if hasattr(student.image.arch, "blocks"):
            say(f"image student: the teacher's {student.image.arch.variant} blocks "
                f"{'+'.join(map(str, student.image.arch.blocks))} at {cfg.student.resolution} px")
        sizes = tower_sizes(teacher, student, cfg.student.resolution)
        for line in size_lines(sizes):
            say(line)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    start, metrics = 0, []
    ckpt = latest_checkpoint(cfg.out) if resume else None
    if ckpt is not None:
        start, metrics = load_checkpoint(ckpt, student, opt, cfg.fingerprint())
        say(f"resuming from {ckpt} (step {start})")
    if start == 0 and rank == 0:
        metrics.append({"step": 0, **evaluate(student, data)})
        say(_eval_line(metrics[-1]))  # before any training: what the later lines compare with
    model = student
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    matching = None
    if cfg.augment == "function-matching":
        matching = FunctionMatching(teacher, student_preprocess(teacher.preprocess, cfg.student.resolution),
                                    cfg.seed, data.source_images)
        matching.seen = on_views
        photos = len(set(map(id, data.source_images)))  # a photo paired with several texts is one photo
        say(f"function matching: {photos} training photos ({len(data.source_images)} with their paired texts), "
            f"a fresh view of each batch row every step at {matching.size} px, the teacher run on every view")
    student.train()
    result = DistillResult(str(cfg.out), cfg.steps, cache_hit=data.cache_hit, world_size=world, rank=rank,
                           student=student, data_seconds=data_seconds, sizes=sizes)
    every = max(1, cfg.steps // 20)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        loss, terms = train_step(model, opt, data, cfg, step, rank, world, device, matching)
        dt = time.perf_counter() - t0
        result.losses.append(loss)
        done = step + 1
        if rank == 0 and (done % every == 0 or done == cfg.steps):
            stage = cfg.stage_at(step)[0].name
            bar = "#" * (20 * done // cfg.steps)
            parts = " ".join(f"{k} {v:.4f}" for k, v in terms.items())
            say(f"[{bar:<20}] step {done}/{cfg.steps} {stage} loss {loss:.4f} ({parts}) "
                f"{dt:.3f} s/step {cfg.batch / dt:.0f} img/s"
                + (f" (teacher {matching.teacher_seconds:.3f} s)" if matching is not None else ""))
        if rank == 0 and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            metrics.append({"step": done, **evaluate(student, data)})
            say(_eval_line(metrics[-1]))
        if rank == 0 and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(cfg.out, done, student, opt, cfg.fingerprint(), metrics)
    if rank == 0:
        metrics.append({"step": cfg.steps, **evaluate(student, data)})
        say(_eval_line(metrics[-1]))
        save_checkpoint(cfg.out, cfg.steps, student, opt, cfg.fingerprint(), metrics)
        record = {"format": FORMAT, "version": 1, "teacher": teacher.name, "teacher_source": teacher.source,
                  "image": arch_to_json(student.image.arch), "text": arch_to_json(student.text.arch),
                  "config": cfg.to_json(), "metrics": metrics, "sizes": sizes, "world_size": world,
                  "vocab_size": teacher.vocab_size,
                  "special_token_ids": teacher.special_token_ids}
        save_student_folder(cfg.out, student, record, teacher.tokenizer_files,
                            student_preprocess(teacher.preprocess, cfg.student.resolution))
        say(f"wrote {cfg.out}")
    if world > 1:
        torch.distributed.barrier()
    result.metrics = metrics
    student.eval()
    return result


def _eval_line(m: dict) -> str:
    return f"  eval step {m['step']}: " + eval_summary(m)


def eval_summary(m: dict) -> str:
    """One line of held-out figures: the 1000-prompt agreement first, then the held-out classes'
    agreement, the cosines and the accuracies that are known."""
    parts = []
    if "imagenet_top1" in m:
        parts.append(f"1000-prompt agreement top-1 {m['imagenet_top1']:.3f} top-5 {m['imagenet_top5']:.3f}"
                     + (f" (student image tower alone {m['imagenet_top1_image_tower']:.3f}, text tower alone "
                        f"{m['imagenet_top1_text_tower']:.3f})" if "imagenet_top1_image_tower" in m else ""))
    parts.append(f"agreement {m['agreement']:.3f} image cosine {m['image_cosine']:.3f} "
                 f"text cosine {m['text_cosine']:.3f}")
    if "imagenet_text_cosine" in m:
        parts.append(f"prompt text cosine {m['imagenet_text_cosine']:.3f}")
    parts += [f"{k.replace('_', ' ')} {m[k]:.3f}" for k in (
        "student_accuracy", "teacher_accuracy", "student_caption_accuracy", "teacher_caption_accuracy") if k in m]
    return "  ".join(parts)
