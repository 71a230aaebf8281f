"""ModelSpec: what an adapter hands to the exporters (optimum's per-model OnnxConfig, in spirit).

Two towers, each a `torch.nn.Module` whose forward takes the named inputs and returns ONE tensor
of L2-normalised embeddings, with a declarative signature (named dynamic axes) and example inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import numpy as np

from edgevl.preprocess import PreprocessConfig

if TYPE_CHECKING:  # torch stays out of `edgevl --help` and `edgevl targets`
    import torch
    from torch import nn

Component = Literal["image", "text"]


@dataclass(frozen=True)
class TensorSig:
    """A named tensor; string dims are dynamic axes (e.g. ("batch", 3, 224, 224))."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass
class TowerSpec:
    component: Component
    module: nn.Module
    inputs: tuple[TensorSig, ...]
    output: TensorSig
    example_inputs: dict[str, torch.Tensor]
    # Set by `edgevl.compress.quantize.quantize_`: the config and calibration set the exporters
    # apply to this tower's graph (None: the precision's default on the bundled data).
    quant_config: Optional[Any] = None
    calibration: Optional[Any] = None

    @property
    def input_names(self) -> list[str]:
        return [sig.name for sig in self.inputs]

    def examples_at(self, static: Optional[dict[str, int]]) -> dict[str, "torch.Tensor"]:
        """The example inputs at the static sizes `static` names (dimension name -> size): batch
        by repeating the last row, seq by cutting or repeating the last column, so a traced graph
        has exactly those shapes. Without `static`, the examples as they are."""
        import torch

        if not static:
            return dict(self.example_inputs)
        out = {}
        for sig in self.inputs:
            t = self.example_inputs[sig.name]
            for axis, size in enumerate(sig.shape):
                want = static.get(size) if isinstance(size, str) else None
                if want is None or t.shape[axis] == want:
                    continue
                if t.shape[axis] > want:
                    t = t.narrow(axis, 0, want)
                else:
                    reps = [1] * t.dim()
                    reps[axis] = want - t.shape[axis]
                    t = torch.cat([t, t.narrow(axis, t.shape[axis] - 1, 1).repeat(*reps)], dim=axis)
            out[sig.name] = t.contiguous()
        return out

    def forward_numpy(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The PyTorch reference: run the tower eagerly on numpy inputs."""
        import torch

        with torch.no_grad():
            tensors = {name: torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names}
            return self.module(**tensors).float().numpy()


# A tokenizer turns texts into the text tower's numpy feeds; None means "no tokenizer shipped".
Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass
class ModelSpec:
    name: str
    source: str
    image: TowerSpec
    text: TowerSpec
    preprocess: PreprocessConfig
    tokenize: Optional[Tokenize]
    tokenizer_files: tuple[Path, ...] = ()
    # What the reference's random-token fallback may draw from (when `tokenize` is None).
    vocab_size: int = 0
    special_token_ids: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # Results derived from the towers that several stages need (the parity reference): computed
    # once per spec, not per artifact.
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    def tower(self, component: Component) -> TowerSpec:
        if component == "image":
            return self.image
        if component == "text":
            return self.text
        raise ValueError(f"unknown component {component!r}; use 'image' or 'text'")

    @property
    def params(self) -> int:
        seen: set[int] = set()
        total = 0
        for tower in (self.image, self.text):
            for p in tower.module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total


@dataclass(frozen=True)
class LoadOptions:
    """How a model source may be loaded.

    Attributes:
        allow_pickle: accept a pickle checkpoint (`pytorch_model.bin`); it is then read with
            `torch.load(weights_only=True)`. Off by default: pickle can run code.
        cache_dir: where derived data (e.g. a fitted projection) is cached.
    """

    allow_pickle: bool = False
    cache_dir: Optional[Path] = None


def default_cache_dir() -> Path:
    import os

    root = os.environ.get("EDGEVL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgevl"
    )
    return Path(root)


def random_token_feeds(
    n: int, context_length: int, vocab_size: int, special: dict[str, int], input_names: tuple[str, ...], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random but well-formed token ids, for checkpoints that ship no tokenizer: `[bos] ids
    [eos] pad...` with varied lengths, so padding and end-of-text pooling are exercised."""
    rng = np.random.default_rng(seed)
    bos, eos, pad = special.get("bos"), special.get("eos"), special.get("pad", 0)
    reserved = {t for t in (bos, eos, pad) if t is not None}
    high = min(vocab_size, eos) if eos is not None and eos > 8 else vocab_size
    ids = np.full((n, context_length), pad, dtype=np.int64)
    mask = np.zeros((n, context_length), dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(max(3, context_length // 4), context_length + 1))
        body = rng.integers(0, high, size=length)
        body = np.where(np.isin(body, list(reserved)), (body + 1) % high, body)
        if bos is not None:
            body[0] = bos
        if eos is not None:
            body[-1] = eos
        ids[row, :length] = body
        mask[row, :length] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    return {name: feeds[name] for name in input_names}


def existing_files(folder: Path, names: tuple[str, ...]) -> tuple[Path, ...]:
    """`folder / name` for each of `names` that is a file there, in the order given."""
    return tuple(folder / name for name in names if (folder / name).is_file())
