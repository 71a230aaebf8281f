"""Palettization-aware fine-tuning: the tower relearns around its 4-bit palettes.

Plain k-means palettes (16 values per group of channels) cost a small text tower like MiniLM
much of its embedding's accuracy (docs/coreml.md has the default model's figures):
4-bit weights without training hold up on large models only. So, as in Deep Compression (Han et
al., ICLR 2016: shared centroids fine-tuned after clustering) and in quantization-aware training:

* every palettized `Linear` keeps a latent float weight and a trainable table of 16 centres per
  group; the forward pass uses each weight's nearest centre, the backward pass reaches the
  centres through that lookup and the latent weight straight through it (the straight-through
  estimator), so weights can move to another centre;
* embedding tables are palettized once (k-means) and frozen: a batch reaches a few rows only;
* the tower's float parameters (norms, biases, the output projection) train too: they stay
  float in the package, so adapting them costs nothing in size;
* the loss is 1 - cosine between the tuned tower's and the float tower's embeddings (feature
  distillation, as CLIP-KD found strongest) plus, for each block of the tower's block list, the
  mean squared error of its output against the float block's, divided by the float output's
  variance (hidden-state distillation, as TinyBERT and TernaryBERT do for low-bit BERT), on data
  the gate and parity splits never see:
  text towers read sentences built from the tokenizer's own whole-word vocabulary, the 1000
  ImageNet class prompts and the bundled everyday captions (minus every gate and parity text);
  image towers read augmented views of the calibration split's photos.

The result holds at most 16 distinct values per group in every palettized weight, so
coremltools' `palettize_weights(mode="unique")` stores it without further loss.
"""

from __future__ import annotations

import copy
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from edgevl.compress.config import DEFAULT_PALETTE_TUNE_STEPS
from edgevl.models.spec import ModelSpec, TowerSpec

PALETTE_SIZE = 16
KMEANS_ITERATIONS = 25
# Batch and peak learning rate of the recipe (one-cycle schedule, Adam); the steps default to
# `config.DEFAULT_PALETTE_TUNE_STEPS`.
BATCH = 32
LEARNING_RATE = 2e-4
WARMUP_FRACTION = 0.1
PROGRESS_EVERY = 50
# The text corpus: the share of prompts and captions, then the sentence shapes made of the
# tokenizer's words (zero-shot prompts and free word sequences).
FIXED_SHARE = 0.25
TEMPLATES = ("a photo of a {}.", "a picture of the {}.", "{}", "an image of a {} and a {}.",
             "the {} is next to the {}.")
TEMPLATE_SHARE = 0.4
MAX_WORDS = 14
# Weight of the hidden-state term against the embedding's 1 - cosine.
HIDDEN_WEIGHT = 1.0
# Augmented views per calibration photo that image batches are drawn from.
IMAGE_VIEWS = 16
# Random-token batches (checkpoints without a tokenizer) draw seeds from here up, far from the
# seeds of the gate's and parity's random texts (`paritydata.RANDOM_TEXT_SEEDS`).
RANDOM_SEED_BASE = 1_000_000


def kmeans_centres(values: Any, chunk: int = 8, size: int = PALETTE_SIZE) -> Any:
    """`size` centres per row of `values` [groups, n] (torch), by Lloyd's k-means in 1-D; centres
    start at evenly spaced quantiles and are returned sorted. Nearest-centre assignment is a
    `searchsorted` against the midpoints, so memory stays at the size of `values`."""
    import torch

    out = []
    quantiles = torch.linspace(0, 1, size + 2)[1:-1]
    for start in range(0, values.shape[0], chunk):
        x = values[start:start + chunk].float().contiguous()
        centres = torch.quantile(x, quantiles, dim=1).T.contiguous()
        for _ in range(KMEANS_ITERATIONS):
            centres, _ = torch.sort(centres, dim=1)
            assign = nearest(centres, x)
            sums = torch.zeros_like(centres).scatter_add_(1, assign, x)
            counts = torch.zeros_like(centres).scatter_add_(1, assign, torch.ones_like(x))
            centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        out.append(torch.sort(centres, dim=1)[0])
    return torch.cat(out)


def nearest(sorted_centres: Any, values: Any) -> Any:
    """Index of each value's nearest centre (rows of `sorted_centres` ascending)."""
    import torch

    mids = ((sorted_centres[:, 1:] + sorted_centres[:, :-1]) / 2).contiguous()
    return torch.searchsorted(mids, values.contiguous())


def group_size(channels: int, largest: int) -> int:
    """The largest divisor of `channels` up to `largest`: channels that share one table."""
    return max(d for d in range(1, largest + 1) if channels % d == 0)


def palettized(weight: Any, group: int, size: int = PALETTE_SIZE) -> Any:
    """`weight` [channels, ...] with each value replaced by its group's nearest of `size` k-means
    centres."""
    import torch

    rows = weight.detach().reshape(weight.shape[0] // group, -1)
    centres = kmeans_centres(rows, size=size)
    return torch.gather(centres, 1, nearest(centres, rows)).reshape(weight.shape)


def _palette_module(weight: Any, group: int, size: int = PALETTE_SIZE) -> Any:
    """A `torch.nn.utils.parametrize` parametrization: latent weight -> its nearest of `size`
    centres per group (trainable), with the straight-through gradient to the latent weight."""
    import torch

    class Palette(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.group = group
            self.centres = torch.nn.Parameter(
                kmeans_centres(weight.detach().reshape(weight.shape[0] // group, -1), size=size))

        def snap(self, latent: torch.Tensor) -> torch.Tensor:
            """Each latent weight's nearest centre (gradients reach the centres)."""
            rows = latent.reshape(latent.shape[0] // self.group, -1)
            centres, _ = torch.sort(self.centres, dim=1)
            return torch.gather(centres, 1, nearest(centres.detach(), rows.detach())).reshape(latent.shape)

        def forward(self, latent: torch.Tensor) -> torch.Tensor:
            # (latent - latent.detach()) is exactly zero: the value is the snapped weight, the
            # gradient also reaches the latent weight (straight through).
            return self.snap(latent) + (latent - latent.detach())

    return Palette()


def block_outputs(module: Any) -> tuple[list[Any], list[Any]]:
    """Forward hooks on every block of the module's outermost `ModuleList`s (a transformer's
    layers, a CNN's stages); returns (the hooks, the list each forward appends the blocks'
    outputs to, first tensor of a tuple)."""
    import torch

    outputs: list[Any] = []
    hooks, inside = [], set()
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.ModuleList) and not any(name.startswith(p + ".") for p in inside):
            inside.add(name)
            for block in sub:
                hooks.append(block.register_forward_hook(
                    lambda _m, _i, out: outputs.append(out[0] if isinstance(out, (tuple, list)) else out)))
    return hooks, outputs


def hidden_state_loss(reference: list[Any], tuned: list[Any], feeds: dict) -> Any:
    """Sum over blocks of the variance-normalised MSE between tuned and float block outputs,
    over real tokens only where the feeds carry an attention mask."""
    import torch

    total = torch.zeros(())
    mask = feeds.get("attention_mask")
    for ref, out in zip(reference, tuned):
        if not (torch.is_tensor(ref) and ref.shape == out.shape):
            continue
        error = (out - ref) ** 2
        if mask is not None and ref.dim() == 3 and ref.shape[:2] == mask.shape:
            weights = mask.unsqueeze(-1).to(error.dtype)
            mse = (error * weights).sum() / (weights.sum() * ref.shape[-1])
        else:
            mse = error.mean()
        total = total + mse / ref.var().clamp(min=1e-12)
    return total


@dataclass(frozen=True)
class TuneResult:
    module: Any  # the tuned tower module (float parameters tuned, palettized weights snapped)
    grids: dict[str, np.ndarray]  # layer -> its palettized weight, as stored
    report: dict


def vocabulary_sentences(spec: ModelSpec, seed: int) -> Iterator[str]:
    """Endless sentences for a text tower, none of them a gate or parity text: a `FIXED_SHARE`
    of them drawn from the ImageNet class prompts and the bundled everyday and calibration
    captions, the rest made of the tokenizer's whole words (templates or free sequences)."""
    from edgevl.calibration.datasets import EXTRA_CAPTIONS
    from edgevl.calibration.samples import split_texts
    from edgevl.models.effnet_minilm import imagenet_class_names

    held_out = set(split_texts("gate")) | set(split_texts("parity"))
    fixed = [t for t in dict.fromkeys(
        [f"a photo of a {name}." for name in imagenet_class_names()] + list(EXTRA_CAPTIONS)
        + split_texts("calibration")) if t not in held_out]
    vocab = whole_words(spec)
    rng = random.Random(seed)
    while True:
        if vocab and rng.random() >= FIXED_SHARE:
            if rng.random() < TEMPLATE_SHARE:
                template = rng.choice(TEMPLATES)
                text = template.format(*[rng.choice(vocab) for _ in range(template.count("{}"))])
            else:
                text = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, MAX_WORDS)))
        else:
            text = rng.choice(fixed)
        if text not in held_out:
            yield text


def whole_words(spec: ModelSpec) -> list[str]:
    """The tokenizer's vocabulary entries that are plain ASCII words of 3+ letters, with BPE's
    word-end mark and the word-start marks of byte-level BPE and SentencePiece removed (sub-word
    pieces and specials dropped), sorted so the corpus is reproducible."""
    vocabulary = getattr(spec.tokenize, "vocabulary", None)
    entries = vocabulary() if callable(vocabulary) else []
    words = {w.removesuffix("</w>").lstrip("\u0120\u2581") for w in entries}
    return sorted(w for w in words if w.isascii() and w.isalpha() and len(w) >= 3)


def text_batches(spec: ModelSpec, batch: int, seed: int) -> Iterator[dict]:
    """Tokenized `vocabulary_sentences`; random well-formed token ids where the checkpoint ships
    no tokenizer (as its parity data)."""
    import torch

    from edgevl.models.spec import random_token_feeds

    sentences = vocabulary_sentences(spec, seed) if spec.tokenize is not None else None
    for step in itertools.count():
        if sentences is not None:
            feeds = spec.tokenize([next(sentences) for _ in range(batch)])
        else:
            feeds = random_token_feeds(batch, spec.preprocess.context_length, spec.vocab_size or 1000,
                                       spec.special_token_ids, spec.preprocess.text_inputs,
                                       seed=RANDOM_SEED_BASE + seed * 7919 + step)
        yield {name: torch.from_numpy(value) for name, value in feeds.items()}


def image_batches(spec: ModelSpec, batch: int, seed: int) -> Iterator[dict]:
    """Batches drawn from `IMAGE_VIEWS` augmented views per calibration photo (random resized
    crops, mirrored half the time), preprocessed once as the tower expects."""
    import torch

    from edgevl.calibration.samples import bundled_split
    from edgevl.distill.data import augmented_views
    from edgevl.preprocess import preprocess_images

    # The package photos' views only: with the Tux Paint stamps the pool of augmented views would
    # more than double in memory and preprocessing time.
    photos = list(bundled_split("calibration", stamps=False).images)
    pool = torch.from_numpy(preprocess_images(augmented_views(photos, IMAGE_VIEWS, seed), spec.preprocess))
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield {"pixel_values": pool[torch.randint(len(pool), (batch,), generator=generator)]}


def tune_palettes(
    spec: ModelSpec,
    tower: TowerSpec,
    linear_groups: dict[str, int],
    frozen_grids: dict[str, np.ndarray],
    steps: int = DEFAULT_PALETTE_TUNE_STEPS,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _m: None,
    batches: Optional[Iterator[dict]] = None,
    palette_sizes: Optional[dict[str, int]] = None,
) -> TuneResult:
    """Fine-tune a copy of the tower with the `Linear` layers in `linear_groups` (name -> channels
    per table) palettized and trainable, and the weights in `frozen_grids` set and frozen.
    `palette_sizes`: values per table of the layers that hold more than `PALETTE_SIZE`."""
    import torch
    from torch.nn.utils import parametrize

    from edgevl.ops.attention import lowered_to_sdpa

    torch.manual_seed(seed)
    teacher = tower.module.eval()
    student = copy.deepcopy(teacher).eval()  # eval: no dropout; gradients still flow
    for name, grid in frozen_grids.items():
        weight = student.get_submodule(name).weight
        weight.data.copy_(torch.from_numpy(grid))
        weight.requires_grad_(False)
    for name, group in linear_groups.items():
        layer = student.get_submodule(name)
        parametrize.register_parametrization(layer, "weight", _palette_module(
            layer.weight, group, (palette_sizes or {}).get(name, PALETTE_SIZE)))
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=max(steps, 1),
                                                   pct_start=WARMUP_FRACTION)
    if batches is None:
        batches = (text_batches if tower.component == "text" else image_batches)(spec, BATCH, seed)
    started, losses = time.perf_counter(), []
    teacher_hooks, teacher_blocks = block_outputs(teacher)
    student_hooks, student_blocks = block_outputs(student)
    # Training runs plain SDPA: edgevl's attention op has no autograd formula (same function).
    try:
        with lowered_to_sdpa():
            for step in range(1, steps + 1):
                feeds = next(batches)
                teacher_blocks.clear()
                student_blocks.clear()
                with torch.no_grad():
                    reference = teacher(**feeds)
                embedding = student(**feeds)
                loss = (1 - torch.nn.functional.cosine_similarity(embedding, reference, dim=-1)).mean()
                loss = loss + HIDDEN_WEIGHT * hidden_state_loss(teacher_blocks, student_blocks, feeds)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                if step % PROGRESS_EVERY == 0 or step == steps:
                    elapsed = time.perf_counter() - started
                    progress(f"{tower.component} palettize4 tuning: step {step}/{steps}, loss "
                             f"{np.mean(losses[-PROGRESS_EVERY:]):.5f}, {elapsed / step:.2f} s/step")
    finally:
        for hook in teacher_hooks + student_hooks:
            hook.remove()
    grids = dict(frozen_grids)
    with torch.no_grad():
        for name in linear_groups:
            layer = student.get_submodule(name)
            snapped = layer.parametrizations.weight[0].snap(layer.parametrizations.weight.original)
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            layer.weight.data.copy_(snapped)
            grids[name] = snapped.numpy().copy()
    for p in student.parameters():
        p.requires_grad_(False)
    report = {
        "method": "palettization-aware fine-tuning (k-means centres and latent weights, straight-through)",
        "steps": steps, "batch": BATCH, "learning_rate": LEARNING_RATE, "seed": seed,
        "data": ("tokenizer-vocabulary sentences, ImageNet class prompts and calibration captions "
                 "(no gate or parity text)") if tower.component == "text"
        else "augmented views of the calibration split's photos",
        "loss_first": round(float(np.mean(losses[:PROGRESS_EVERY])), 6) if losses else None,
        "loss_last": round(float(np.mean(losses[-PROGRESS_EVERY:])), 6) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return TuneResult(module=student, grids=grids, report=report)
