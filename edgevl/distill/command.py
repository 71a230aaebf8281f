"""The `edgevl distill` subcommand: its arguments and what it runs (torch-free until run)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from edgevl.distill.config import DEFAULT_STAGES, DistillConfig, OptimConfig, parse_student


def add_distill_parser(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "distill",
        help="distil a teacher model into a small student that exports as-is",
        description="Distil TEACHER into a student (feature distillation, then joint affinity/contrastive "
        "alignment) on DATA and write OUT, a model folder `edgevl export OUT` takes. Teacher embeddings are "
        "cached on disk by content hash. Prints each tower's parameters and FLOPs, teacher beside student. "
        "Under torchrun the same command trains with DistributedDataParallel. "
        "Exit codes: 0 ok, 2 bad input, 130 interrupted (the last checkpoint stays; rerun with --resume).",
    )
    p.add_argument("--teacher", default=None, help="registered model name or checkpoint folder; default: effnet-minilm")
    p.add_argument("--student", default="vit-tiny",
                   help="preset (vit-tiny, vit-micro, conv-tiny, effnet-lite0) and/or key=value pairs, e.g. "
                   "vit-tiny,width=128,depth=6,resolution=64,patch=8,text=inherit,text_layers=0+5 or "
                   "effnet-lite0,blocks=10,resolution=192 (the default teacher's own EfficientNet-Lite0 with "
                   "fewer blocks); default: vit-tiny")
    p.add_argument("--data", default="bundled",
                   help="bundled (default: the real-image pool's calibration and gate splits, package photos and "
                   "Tux Paint stamps where installed; never the parity split), fashion-mnist[:N], an image folder, "
                   "or a JSON-lines file")
    p.add_argument("--heldout", default=None,
                   help="evaluation images never trained on: bundled-parity (the whole parity split: every view of "
                   "its package photos and its stamps) or fashion-mnist-test[:N]; default: by --data")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty, or an earlier run with --resume)")
    p.add_argument("--steps", type=int, default=200,
                   help="optimizer steps, half feature distillation then half joint alignment; default: 200")
    p.add_argument("--batch", type=int, default=32, help="global image batch, split across processes; default: 32")
    p.add_argument("--text-batch", type=int, default=32, help="extra corpus texts per step (global; feature distillation only); default: 32")
    p.add_argument("--views", type=int, default=2, help="with --augment fixed: augmented views per training image (their teacher embeddings are cached); default: 2")
    p.add_argument("--augment", choices=("fixed", "function-matching"), default="fixed",
                   help="fixed: --views seeded views per image, their teacher embeddings cached; "
                   "function-matching: every step a fresh view of each batch photo (random resized crop, flip, "
                   "colour jitter, mixup with another photo), the same view shown to teacher and student, the "
                   "teacher run on it (slower per step); default: fixed")
    p.add_argument("--extra-data", default=None, metavar="PATH",
                   help="an image folder (sub-folder names are labels) or JSON-lines file trained on beside --data; "
                   "held-out photos in it are left out")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (linear warm-up, then cosine decay); default: 2e-3, or 1e-4 for a "
                   "student whose image tower is inherited from the teacher (image=effnet, e.g. the effnet-lite0 "
                   "preset), which 2e-3 was measured to pull away from the teacher (docs/distillation.md)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the student's initial weights, the augmented views and each step's batch; default: 0")
    p.add_argument("--feature-kind", choices=("cosine", "mse"), default="cosine",
                   help="feature-distillation loss: 1 - cosine, or squared distance of the unit embeddings; "
                   "default: cosine")
    p.add_argument("--text-corpus", choices=("data", "data+imagenet"), default="data+imagenet",
                   help="texts the text tower learns from: the data's own, or also the 1000 ImageNet class prompts "
                   "and everyday captions; default: data+imagenet")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="steps between checkpoints under OUT/checkpoints (0: only at the end); default: 50")
    p.add_argument("--eval-every", type=int, default=50,
                   help="steps between held-out evaluations (0: only at the end); default: 50")
    p.add_argument("--resume", action="store_true", help="continue from OUT's last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


# Learning rates by how the student starts: from scratch, or from the teacher's own image trunk.
SCRATCH_LR = 2e-3
INHERITED_LR = 1e-4


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    stages = tuple(replace(s, losses=replace(s.losses, feature_kind=args.feature_kind)) for s in DEFAULT_STAGES)
    student = parse_student(args.student)
    lr = args.lr if args.lr is not None else (INHERITED_LR if student.image == "effnet" else SCRATCH_LR)
    return DistillConfig(
        teacher=args.teacher, student=student, data=args.data, out=args.out, steps=args.steps,
        batch=args.batch, text_batch=args.text_batch, views=args.views, seed=args.seed, stages=stages,
        optim=OptimConfig(lr=lr), heldout=args.heldout, text_corpus=args.text_corpus,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, augment=args.augment,
        extra_data=args.extra_data,
    )


def cmd_distill(args: argparse.Namespace) -> int:
    from edgevl.distill.sources import check_data_spec

    cfg = config_from_args(args)  # bad input fails here, before torch is imported
    check_data_spec(cfg.data, cfg.heldout)
    if cfg.extra_data is not None:
        check_data_spec(cfg.extra_data, None, option="--extra-data")
    from edgevl.distill.trainer import distill_run

    try:
        result = distill_run(cfg, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"edgevl: interrupted; the last complete checkpoint in {cfg.out / 'checkpoints'} is intact: "
              "rerun the same command with --resume", file=sys.stderr)
        return 130
    if result.evaluation:
        from edgevl.distill.trainer import eval_summary

        print(eval_summary(result.evaluation))
    if result.rank == 0:  # the other ranks of a torchrun job write nothing
        print(f"wrote {cfg.out} (edgevl export {cfg.out} --target onnx)")
    return 0
