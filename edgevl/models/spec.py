"""ModelSpec: what an adapter hands to the exporters (optimum's per-model OnnxConfig, in spirit).

Two towers, each a `torch.nn.Module` whose forward takes the named inputs and returns ONE tensor
of L2-normalised embeddings, with a declarative signature (named dynamic axes) and example inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
from torch import nn

from edgevl.preprocess import PreprocessConfig

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

    @property
    def input_names(self) -> list[str]:
        return [sig.name for sig in self.inputs]

    def forward_numpy(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The PyTorch reference: run the tower eagerly on numpy inputs."""
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


# Every registered model is a loader: (source path or None, options) -> ModelSpec.
ModelLoader = Callable[[Optional[str], LoadOptions], ModelSpec]


def default_cache_dir() -> Path:
    import os

    root = os.environ.get("EDGEVL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgevl"
    )
    return Path(root)
