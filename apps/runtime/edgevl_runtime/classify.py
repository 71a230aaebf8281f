"""Zero-shot classification against free labels, with a label-embedding bank cached on disk:
each label's prompt is embedded once per text artifact (keyed by its sha256, runtime and options)
and reused by later calls and processes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgevl_runtime.errors import BadInput
from edgevl_runtime.model import EdgeModel
from edgevl_runtime.preprocess import ImageLike
from edgevl_runtime.storage import cache_dir, load_npz, save_npz

TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Ranking:
    """One image's labels, best first, with their cosine scores."""

    image: str
    labels: list[str]
    scores: list[float]

    @property
    def top(self) -> str:
        return self.labels[0]


class LabelBank:
    def __init__(self, model: EdgeModel, template: str = TEMPLATE, folder: Optional[Path] = None) -> None:
        if "{}" not in template:
            raise BadInput(f"template {template!r} has no '{{}}' where the label goes; e.g. {TEMPLATE!r}")
        text = model.artifacts["text"]
        key = json.dumps([text.sha256, model.runtime, text.runtime_options, model.preprocess.context_length])
        self.model, self.template = model, template
        self.path = (folder or cache_dir()) / f"labels-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
        self.computed = 0  # prompts embedded by this bank (the rest came from the cache)

    def embeddings(self, labels: Sequence[str]) -> np.ndarray:
        prompts = [self.template.format(label) for label in labels]
        stored = load_npz(self.path) or {}
        known = dict(zip(stored.get("prompts", np.array([], str)).tolist(), stored.get("embeddings", [])))
        missing = [p for p in dict.fromkeys(prompts) if p not in known]
        if missing:
            for prompt, row in zip(missing, self.model.embed_texts(missing)):
                known[prompt] = row
            self.computed += len(missing)
            names = sorted(known)
            save_npz(self.path, prompts=np.array(names, dtype=str), embeddings=np.stack([known[n] for n in names]))
        return np.stack([np.asarray(known[p], dtype=np.float32) for p in prompts])


def parse_labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BadInput(f"labels {text!r}: give two or more distinct comma-separated labels, e.g. cat,dog,car")
    return labels


def classify(model: EdgeModel, images: Sequence[ImageLike], labels: Sequence[str],
             bank: Optional[LabelBank] = None) -> list[Ranking]:
    """Rank `labels` for each image by the cosine of its embedding to the label prompt's."""
    labels = list(labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BadInput("labels: give two or more distinct labels")
    bank = bank or LabelBank(model)
    scores = model.embed_images(images).astype(np.float64) @ bank.embeddings(labels).astype(np.float64).T
    out = []
    for image, row in zip(images, scores):
        order = np.argsort(-row, kind="stable")
        out.append(Ranking(str(image), [labels[i] for i in order], [float(row[i]) for i in order]))
    return out
