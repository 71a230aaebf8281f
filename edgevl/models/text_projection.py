"""The text projection of a dual encoder whose image space is a classifier's: a ridge regression
(closed form, float64) from sentence embeddings of prompts such as "a photo of a tabby cat." onto
that class's vector, over every class x every prompt template. Lambda is chosen by leaving one
template out at a time (fit on the others, retrieve the class of each held-out prompt by its dot
product with the normalised class vectors). Fitted once, deterministically, and cached."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a good photo of a {}.",
    "a picture of a {}.",
)
# Ridge penalties tried; the one with the best held-out accuracy wins (ties: the larger one).
LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Bump when the fit procedure changes, so old caches are not reused.
FIT_VERSION = 2
ENCODE_BATCH = 250


def _fit_ridge(
    x: np.ndarray, targets: np.ndarray, fit_on: Sequence[int], lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept, closed form, float64.

    `x` [templates, classes, in] are the prompt embeddings, `targets` [classes, out] the class
    vectors (the same for every template). Fits on the templates `fit_on`; returns (W [out, in],
    b [out]). Because the targets repeat per template, X^T Y = (sum over templates of X_t)^T T.
    """
    xs = x[list(fit_on)]
    n = xs.shape[0] * xs.shape[1]
    x_mean, y_mean = xs.reshape(n, -1).mean(0), targets.mean(0)
    gram = np.einsum("tci,tcj->ij", xs, xs) - n * np.outer(x_mean, x_mean)
    cross = xs.sum(0).T @ targets - n * np.outer(x_mean, y_mean)
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross)  # [in, out]
    return w.T, y_mean - x_mean @ w


def _heldout_accuracy(x: np.ndarray, targets: np.ndarray, lambdas: Sequence[float]) -> dict[float, float]:
    """Leave one template out: for each lambda, the mean over held-out templates of the fraction of
    classes whose held-out prompt retrieves its own class vector (argmax of the dot product; the
    row norm of a prediction does not change its argmax, so predictions are not normalised)."""
    n_templates, n_classes, _ = x.shape
    labels = np.arange(n_classes)
    kernel = targets @ targets.T  # [classes, classes]
    y_mean = targets.mean(0)
    scores = {lam: [] for lam in lambdas}
    for held in range(n_templates):
        keep = [t for t in range(n_templates) if t != held]
        xs = x[keep]
        n = len(keep) * n_classes
        x_mean = xs.reshape(n, -1).mean(0)
        gram = np.einsum("tci,tcj->ij", xs, xs) - n * np.outer(x_mean, x_mean)
        # X^T Y T^T without forming the [in, out] product per lambda: (sum_t X_t)^T (T T^T).
        cross_k = xs.sum(0).T @ kernel - n * np.outer(x_mean, y_mean @ targets.T)
        for lam in lambdas:
            wk = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross_k)  # W^T T^T [in, classes]
            logits = x[held] @ wk + (y_mean @ targets.T - x_mean @ wk)
            scores[lam].append(float((logits.argmax(1) == labels).mean()))
    return {lam: float(np.mean(v)) for lam, v in scores.items()}


def _encode_prompts(tower: nn.Module, tokenize: "object", prompts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings [n, tower's text width] (float64) of `prompts`, in their order."""
    feeds = tokenize(list(prompts))
    lengths = feeds["attention_mask"].sum(1)
    # Encode in order of token count and trim each batch to its longest prompt: masked mean
    # pooling ignores padding columns, so this only saves work. A stable sort keeps the result
    # deterministic.
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(prompts), tower.projection.in_features), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(prompts), ENCODE_BATCH):
            rows = order[start : start + ENCODE_BATCH]
            used = max(int(lengths[rows].max()), 1)
            ids = torch.from_numpy(np.ascontiguousarray(feeds["input_ids"][rows, :used]))
            mask = torch.from_numpy(np.ascontiguousarray(feeds["attention_mask"][rows, :used]))
            out[rows] = tower.sentence_embedding(ids, mask).double().numpy()
    return out


def fit_text_projection(
    tower: nn.Module,
    tokenize: "object",
    class_names: Sequence[str],
    class_vectors: torch.Tensor,
    templates: Sequence[str] = PROMPT_TEMPLATES,
    lambdas: Sequence[float] = LAMBDAS,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit the 384 -> 1280 projection; returns (weight [1280, 384], bias [1280], info).

    `class_vectors` [n_classes, 1280] are the targets (L2-normalised here); `tokenize` is the
    text tokenizer (`ModelSpec.tokenize`). Lambda is the one of `lambdas` with the best
    leave-one-template-out class retrieval accuracy (ties: the larger lambda); `info` holds
    `lambda`, its `heldout_accuracy` and every lambda's score. Deterministic: the same inputs
    give the same arrays (fixed order, float64 solve).
    """
    n_classes, n_templates = len(class_names), len(templates)
    if class_vectors.shape[0] != n_classes:
        raise ValueError(f"{n_classes} class names but {class_vectors.shape[0]} class vectors")
    if n_templates < 2:
        raise ValueError("need at least 2 prompt templates to choose lambda by holding one out")
    prompts = [t.format(c) for t in templates for c in class_names]  # template-major
    x = _encode_prompts(tower, tokenize, prompts).reshape(n_templates, n_classes, -1)
    targets = F.normalize(class_vectors.detach().double(), dim=-1).numpy()
    scores = _heldout_accuracy(x, targets, lambdas)
    best = max(scores.values())
    lam = max(l for l, s in scores.items() if s == best)
    w, b = _fit_ridge(x, targets, range(n_templates), lam)
    info = {"lambda": lam, "heldout_accuracy": scores[lam], "scores": {str(k): v for k, v in scores.items()}}
    return w, b, info


def _cache_path(
    cache_dir: Path, name: str, class_names: Sequence[str], weight_files: Sequence[Path], context_length: int,
) -> Path:
    key = json.dumps(
        {
            "version": FIT_VERSION,
            "classes": list(class_names),
            "templates": list(PROMPT_TEMPLATES),
            "lambdas": list(LAMBDAS),
            "context_length": context_length,
            "weights": [[p.name, p.stat().st_size] for p in weight_files],
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{name}-text-projection-{digest}.safetensors"


def load_or_fit_projection(
    tower: nn.Module,
    tokenize: "object",
    class_names: Sequence[str],
    class_vectors: torch.Tensor,
    weight_files: Sequence[Path],
    cache_dir: Path,
    name: str,
    context_length: int,
) -> dict:
    """Set `tower.projection` from the cache under `cache_dir`, or fit it (`fit_text_projection`)
    and cache it; returns the fit's info. The cache key covers the fit procedure, the classes,
    the prompts, the context length and the weight files, so a change of any of them refits."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = _cache_path(cache_dir, name, class_names, weight_files, context_length)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
                info = json.loads((f.metadata() or {}).get("info", "{}"))
            if weight.shape == tower.projection.weight.shape and bias.shape == tower.projection.bias.shape:
                _set_projection(tower.projection, weight, bias)
                return info
        except Exception:  # noqa: BLE001 - a corrupt cache is refitted, never fatal
            pass
    print(f"edgevl: {name}: fitting the text projection (one time; later loads read the cache)...",
          file=sys.stderr, flush=True)
    w, b, info = fit_text_projection(tower, tokenize, class_names, class_vectors)
    weight = np.ascontiguousarray(w, dtype=np.float32)
    bias = np.ascontiguousarray(b, dtype=np.float32)
    _set_projection(tower.projection, torch.from_numpy(weight), torch.from_numpy(bias))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: readers never see a half-written file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"weight": weight, "bias": bias}, tmp, metadata={"info": json.dumps(info)})
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache may be shared
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        print(f"edgevl: {name}: could not cache the projection in {cache_dir} ({exc})", file=sys.stderr)
    return info


def _set_projection(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
