"""Typed, frozen configs for `edgevl distill` (torchao-style: validated on construction, the
message says how to fix it, serialisable to JSON for the output folder and the checkpoints).

Torch-free: the CLI parses and validates these before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from edgevl.errors import InputError

FEATURE_KINDS = ("cosine", "mse")
IMAGE_KINDS = ("vit", "conv", "effnet")
TEXT_KINDS = ("fresh", "inherit")
AUGMENTS = ("fixed", "function-matching")


@dataclass(frozen=True)
class LossWeights:
    """How much each distillation loss counts (0 turns it off). Sources in `losses.py`.

    Attributes:
        feature: feature distillation of both towers' embeddings (CLIP-KD).
        feature_kind: "cosine" (1 - cos) or "mse" (squared distance of the unit embeddings).
        affinity: affinity mimicking, image->text and text->image (TinyCLIP).
        contrastive: contrastive alignment with softened negatives (LightCLIP, DC-CLIP stage 2).
        kl: KL to the teacher's similarity distribution (MobileCLIP).
        temperature: softmax temperature of the image-text similarities.
        soften: how much of the contrastive target comes from the teacher's similarities, ramped
            from 0 to this value over the stage (LightCLIP's progressively softened negatives).
    """

    feature: float = 1.0
    feature_kind: str = "cosine"
    affinity: float = 0.0
    contrastive: float = 0.0
    kl: float = 0.0
    temperature: float = 0.05
    soften: float = 0.5

    def __post_init__(self) -> None:
        for name in ("feature", "affinity", "contrastive", "kl"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"loss weight {name}={value!r} must be a finite number >= 0")
        if self.feature_kind not in FEATURE_KINDS:
            raise InputError(f"feature_kind {self.feature_kind!r} is unknown; choose from: {', '.join(FEATURE_KINDS)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise InputError(f"temperature {self.temperature!r} must be > 0, e.g. 0.05")
        if not 0.0 <= self.soften <= 1.0:
            raise InputError(f"soften {self.soften!r} must be in [0, 1]")
        if self.feature + self.affinity + self.contrastive + self.kl <= 0:
            raise InputError("every loss weight is 0; give at least one loss a positive weight")


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: a fraction of the steps trained with its own loss weights.
    The default is DC-CLIP's: per-tower feature distillation first, then joint alignment."""

    name: str
    fraction: float
    losses: LossWeights

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise InputError(f"stage {self.name!r}: fraction {self.fraction} must be in (0, 1]")


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage("features", 0.5, LossWeights(feature=1.0)),
    Stage("joint", 0.5, LossWeights(feature=1.0, affinity=0.5, contrastive=0.25)),
)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to `min_lr_ratio * lr`."""

    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr {self.lr!r} must be > 0, e.g. 2e-3")
        if self.weight_decay < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InputError("weight_decay and warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")

    def lr_at(self, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, total - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass(frozen=True)
class StudentConfig:
    """The student's shape.

    Attributes:
        image: "vit" (patch transformer on edgevl's fused attention), "conv" (a small CNN, for
            teachers whose image tower is a CNN) or "effnet" (the teacher's own EfficientNet
            trunk, weights copied, with fewer blocks: TinyCLIP's weight inheritance for images).
        width, depth, heads, patch: the ViT's sizes (width and depth also size the conv student).
        resolution: the student's input side in pixels (its own preprocessing).
        blocks: for image=effnet, how many of the teacher's blocks to keep (0: all); every
            stage's first block is kept and the residual blocks that matter least, measured on
            the calibration photos at `resolution`, are dropped (`inherit.block_importance`).
        keep_blocks: for image=effnet, the teacher's block indices to keep, instead of `blocks`.
        text: "fresh" (a small transformer) or "inherit" (TinyCLIP weight inheritance: the
            teacher's text transformer with only `text_layers` kept; CLIP- and BERT-style towers).
        text_width, text_depth, text_heads: the fresh text transformer's sizes.
        text_layers: the teacher's layer indices an inherited text tower keeps.
    """

    image: str = "vit"
    width: int = 96
    depth: int = 4
    heads: int = 3
    patch: int = 16
    resolution: int = 96
    text: str = "fresh"
    text_width: int = 96
    text_depth: int = 3
    text_heads: int = 3
    text_layers: tuple[int, ...] = (0, -1)
    blocks: int = 0
    keep_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.image not in IMAGE_KINDS:
            raise InputError(f"student image={self.image!r} is unknown; choose from: {', '.join(IMAGE_KINDS)}")
        if self.text not in TEXT_KINDS:
            raise InputError(f"student text={self.text!r} is unknown; choose from: {', '.join(TEXT_KINDS)}")
        for name in ("width", "depth", "heads", "patch", "resolution", "text_width", "text_depth", "text_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"student {name}={value!r} must be a positive integer")
        if self.image == "vit" and self.width % self.heads:
            raise InputError(f"student width {self.width} must be a multiple of heads {self.heads}")
        if self.text == "fresh" and self.text_width % self.text_heads:
            raise InputError(f"student text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 0:
            raise InputError(f"student blocks={self.blocks!r} must be an integer >= 0 (0 keeps every teacher block)")
        if self.image != "effnet" and (self.blocks or self.keep_blocks):
            raise InputError("student blocks and keep_blocks choose the teacher's EfficientNet blocks; "
                             "they need image=effnet")
        if self.blocks and self.keep_blocks:
            raise InputError("student blocks (a count) and keep_blocks (indices) both choose blocks; give one")
        if self.image == "effnet" and self.resolution % 32:
            raise InputError(f"student resolution {self.resolution} must be a multiple of 32 for image=effnet "
                             "(e.g. 160, 192 or 224)")
        if self.image == "vit" and self.resolution % self.patch:
            raise InputError(f"student resolution {self.resolution} must be a multiple of patch {self.patch}")
        if not self.text_layers:
            raise InputError("student text_layers is empty; keep at least one teacher layer, e.g. text_layers=0+5")


PRESETS: dict[str, StudentConfig] = {
    "vit-tiny": StudentConfig(),
    "vit-micro": StudentConfig(width=32, depth=2, heads=2, patch=16, resolution=32, text_width=32, text_depth=2,
                               text_heads=2),
    "conv-tiny": StudentConfig(image="conv", width=32, depth=4, resolution=96),
    # The default teacher's own towers, shrunk: 12 of EfficientNet-Lite0's 16 blocks at 160 px,
    # 3 of MiniLM's 6 layers.
    "effnet-lite0": StudentConfig(image="effnet", blocks=12, resolution=160, text="inherit", text_layers=(0, 2, 5)),
}


def parse_student(text: str) -> StudentConfig:
    """`--student`: a preset (`vit-tiny`, `vit-micro`, `conv-tiny`, `effnet-lite0`) and/or
    `key=value` pairs, comma-separated; list values join with `+` (e.g.
    `vit-tiny,text=inherit,text_layers=0+5`, `effnet-lite0,blocks=10,resolution=192`)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    base = StudentConfig()
    if parts and "=" not in parts[0]:
        name = parts.pop(0)
        if name not in PRESETS:
            raise InputError(f"--student preset {name!r} is unknown; choose from: {', '.join(PRESETS)} or give key=value pairs")
        base = PRESETS[name]
    fields = StudentConfig.__dataclass_fields__
    changes: dict[str, object] = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in fields or not value:
            raise InputError(f"--student {part!r}: expected key=value with key one of {', '.join(fields)}")
        try:
            if key in ("text_layers", "keep_blocks"):
                changes[key] = tuple(int(v) for v in value.split("+"))
            elif key in ("image", "text"):
                changes[key] = value
            else:
                changes[key] = int(value)
        except ValueError:
            raise InputError(f"--student {part!r}: {key} needs an integer (lists joined with +)") from None
    if "keep_blocks" in changes and "blocks" not in changes:
        changes["blocks"] = 0  # explicit indices replace a preset's count
    return replace(base, **changes)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run.

    Attributes:
        teacher: a registered model name or a checkpoint folder (edgevl's loaders).
        data: "bundled" (the real-image pool's calibration and gate splits: package photos and
            Tux Paint stamps where installed, augmented; never the parity split), an image folder,
            a JSON-lines file, or "fashion-mnist[:N]" (Debian's dataset-fashion-mnist).
        heldout: evaluation images never trained on: "bundled-parity" (the whole parity split), or
            "fashion-mnist-test[:N]"; None picks the data's own held-out split.
        out: the output folder (a model `edgevl export` loads; checkpoints under it).
        steps, batch: optimizer steps and the GLOBAL batch of images (split across ranks).
        text_batch: extra texts per step from the text corpus (feature distillation only).
        views: augmented views per training image whose teacher embeddings are cached.
        text_corpus: "data" (the data's own texts) or "data+imagenet" (also 1000 class prompts
            and everyday captions, for a text tower that generalises beyond the data's labels).
        checkpoint_every, eval_every: in steps (0: only at the end).
        augment: "fixed" (`views` seeded views per image, their teacher embeddings cached) or
            "function-matching" (a fresh view every step, shown to teacher and student alike,
            the teacher run on it; `augment.py`).
        extra_data: an image folder or JSON-lines file trained on beside `data` (its held-out
            photos left out).
    """

    teacher: Optional[str]
    student: StudentConfig
    data: str
    out: Path
    steps: int = 200
    batch: int = 32
    text_batch: int = 32
    views: int = 2
    seed: int = 0
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    optim: OptimConfig = field(default_factory=OptimConfig)
    heldout: Optional[str] = None
    text_corpus: str = "data+imagenet"
    checkpoint_every: int = 50
    eval_every: int = 50
    cache_dir: Optional[Path] = None
    augment: str = "fixed"
    extra_data: Optional[str] = None

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise InputError(f"--augment {self.augment!r} is unknown; choose from: {', '.join(AUGMENTS)}")
        for name in ("steps", "batch", "views"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} {value!r} must be a positive integer")
        for name in ("text_batch", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0")
        if not self.stages:
            raise InputError("the stage schedule is empty; give at least one stage")
        if abs(sum(s.fraction for s in self.stages) - 1.0) > 1e-6:
            raise InputError("stage fractions must add up to 1")
        if self.text_corpus not in ("data", "data+imagenet"):
            raise InputError(f"text_corpus {self.text_corpus!r} is unknown; choose 'data' or 'data+imagenet'")

    def stage_at(self, step: int) -> tuple[Stage, float]:
        """The stage that trains `step` and how far into it the step is (0..1)."""
        start = 0
        for i, stage in enumerate(self.stages):
            length = round(stage.fraction * self.steps) if i < len(self.stages) - 1 else self.steps - start
            if step < start + length or i == len(self.stages) - 1:
                return stage, (step - start) / max(1, length)
            start += length
        raise AssertionError("unreachable")

    def to_json(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        data["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return data

    def fingerprint(self) -> str:
        """What must match for `--resume` to continue a run (everything but where it goes and
        how often it checkpoints)."""
        data = {k: v for k, v in self.to_json().items() if k not in ("out", "checkpoint_every", "eval_every", "cache_dir")}
        # Options added later count only when set, so earlier runs' checkpoints still resume.
        for name, default in (("augment", "fixed"), ("extra_data", None)):
            if data.get(name) == default:
                data.pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
