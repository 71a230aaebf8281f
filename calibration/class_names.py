"""The 1000 ImageNet class names as texts for the bundled splits.

They ship with the default model (`edgevl/models/data/imagenet_classes.txt`); each split reads a
disjoint share of them as prompts, so the text tower is checked on hundreds of texts per split
(the gate's worst text then predicts parity's) while the photos stay few. A name's split is
fixed by its hash; a name that is any photo's label is left out, so no text crosses splits
whatever photo pool is installed. They are texts, not zero-shot classes: each split's agreement
still ranks its own photos' labels.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

CLASS_NAMES = ("edgevl.models", "data/imagenet_classes.txt")  # package, file inside it


@lru_cache(maxsize=None)
def split_class_prompts(split: str, splits: tuple[str, ...], template: str, photo_labels: frozenset[str]) -> list[str]:
    """`split`'s share (one of `len(splits)`) of the class names, each as `template`, in class
    order, without the names in `photo_labels`."""
    names = dict.fromkeys(n.strip() for n in _class_names_file().read_text(encoding="utf-8").splitlines() if n.strip())
    index = splits.index(split)
    return [template.format(n) for n in names
            if n not in photo_labels and int(hashlib.sha256(n.encode()).hexdigest(), 16) % len(splits) == index]


def _class_names_file() -> Path:
    package, name = CLASS_NAMES
    spec = importlib.util.find_spec(package)
    path = Path(list(spec.submodule_search_locations)[0]) / name if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        from edgevl.errors import MissingBackendError

        raise MissingBackendError(f"{package.replace('.', '/')}/{name} is missing: reinstall edgevl")
    return path
