"""The text projection of a dual encoder whose image space is a classifier's: a semi-orthogonal
map (orthonormal columns, no bias) from sentence embeddings of prompts such as "a photo of a tabby
cat." onto the directions of that class's normalised classifier row, over every class x every
prompt template. Fitted deterministically (fixed order, float64); the default model's fit ships
in the package (data/effnet-minilm-text-projection.safetensors, 1.9 MB: 1280 x 384 float32,
rewritten by `python -m edgevl.models.text_projection`), other fits are cached on first load.

Why semi-orthogonal: such a map preserves inner products, so the cosine between two sentence
embeddings equals the cosine between their projections. A perturbation of the sentence embedding
(int8 or palettized weights upstream) then moves the tower's output by exactly as much as it moved
the embedding: the amplification (1 - cos after) / (1 - cos before) is 1. A ridge regression onto
the same targets retrieves as well but amplifies 1 - cosine five- to nine-fold, because it
stretches the few directions in which prompts differ (measured, with the candidates compared, in
benchmarks/results/projection_conditioning.md).

The fit: start from the orthogonal Procrustes solution (the polar factor of sum over templates of
X_t^T T, which maximises the summed dot products of prompts with their class vectors), then take
`REFINE_STEPS` steps of gradient ascent on the class-retrieval log-likelihood (softmax over the
1000 class vectors at `LOGIT_SCALE`), each followed by the polar factor, which keeps the map on the
set of semi-orthogonal maps. `heldout_accuracy` measures retrieval by leaving one template out.
"""

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

from edgevl.manifest import sha256_of

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
# Refinement of the Procrustes start: steps, the softmax's logit scale (logits are cosines) and the
# step size. Chosen by leave-one-template-out retrieval (benchmarks/projection_conditioning.py).
REFINE_STEPS = 5
LOGIT_SCALE = 30.0
STEP_SIZE = 1.0
# Bump when the fit procedure changes, so old caches are not reused.
FIT_VERSION = 3
ENCODE_BATCH = 250


def _polar(m: np.ndarray) -> np.ndarray:
    """The semi-orthogonal matrix nearest `m` [in, out] (Frobenius): U V^T of its thin SVD."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u @ vt


def fit_isometry(
    x: np.ndarray, targets: np.ndarray, fit_on: Sequence[int] | None = None, steps: int = REFINE_STEPS,
) -> np.ndarray:
    """The semi-orthogonal map M [in, out] (M^T M = I) sending prompt embeddings to class vectors.

    `x` [templates, classes, in] are the prompt embeddings, `targets` [classes, out] the
    normalised class vectors (the same for every template); fits on the templates `fit_on` (all
    when None), with `steps` refinement steps. Prompt i's class scores are `x_i @ M @ targets.T`.
    """
    xs = x if fit_on is None else x[list(fit_on)]
    n_templates, n_classes, width = xs.shape
    if width > targets.shape[1]:
        raise ValueError(f"an isometry needs out >= in; got in {width}, out {targets.shape[1]}")
    m = _polar(xs.sum(0).T @ targets)
    flat = xs.reshape(-1, width)
    rows, labels = np.arange(flat.shape[0]), np.tile(np.arange(n_classes), n_templates)
    for _ in range(steps):
        logits = LOGIT_SCALE * (flat @ (m @ targets.T))
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        p[rows, labels] -= 1.0  # softmax - one-hot: minus the log-likelihood's gradient wrt the logits
        m = _polar(m - (flat.T @ p) @ targets * (STEP_SIZE * LOGIT_SCALE / flat.shape[0]))
    return m


def retrieval_accuracy(x: np.ndarray, m: np.ndarray, targets: np.ndarray) -> float:
    """The fraction of prompts `x` [templates, classes, in] whose best class vector under `m` is
    their own."""
    scores = x @ (m @ targets.T)  # [templates, classes, classes]
    return float((scores.argmax(-1) == np.arange(x.shape[1])).mean())


def heldout_accuracy(x: np.ndarray, targets: np.ndarray, steps: int = REFINE_STEPS) -> float:
    """Leave one template out: the mean over templates of the retrieval accuracy of that
    template's prompts under the map fitted on the other templates."""
    n_templates = x.shape[0]
    if n_templates < 2:
        raise ValueError("need at least 2 prompt templates to hold one out")
    return float(np.mean([
        retrieval_accuracy(x[held : held + 1], fit_isometry(x, targets, [t for t in range(n_templates) if t != held], steps),
                           targets)
        for held in range(n_templates)
    ]))


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
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit the 384 -> 1280 projection; returns (weight [1280, 384], bias [1280] (zeros), info).

    `class_vectors` [n_classes, 1280] are the targets (L2-normalised here); `tokenize` is the
    text tokenizer (`ModelSpec.tokenize`). `info` holds the method and `fit_accuracy`, the class
    retrieval of the fitted prompts themselves (`heldout_accuracy` measures unseen templates; it
    refits once per template, so the one-time fit leaves it to the benchmark and the tests).
    Deterministic: the same inputs give the same arrays (fixed order, float64).
    """
    n_classes, n_templates = len(class_names), len(templates)
    if class_vectors.shape[0] != n_classes:
        raise ValueError(f"{n_classes} class names but {class_vectors.shape[0]} class vectors")
    if n_templates < 1:
        raise ValueError("need at least 1 prompt template")
    prompts = [t.format(c) for t in templates for c in class_names]  # template-major
    x = _encode_prompts(tower, tokenize, prompts).reshape(n_templates, n_classes, -1)
    targets = F.normalize(class_vectors.detach().double(), dim=-1).numpy()
    m = fit_isometry(x, targets)
    info = {
        "method": f"semi-orthogonal (Procrustes, then {REFINE_STEPS} softmax steps at scale {LOGIT_SCALE:g})",
        "fit_accuracy": retrieval_accuracy(x, m, targets),
    }
    return m.T.copy(), np.zeros(m.shape[1]), info


def inputs_digest(class_names: Sequence[str], weight_files: Sequence[Path], context_length: int) -> str:
    """The hash of everything the fit reads: the procedure (`FIT_VERSION`, templates, refinement
    settings), the classes, the context length and the weight files' contents (sha256, ~0.1 s for
    the default model's 110 MB). A shipped or cached projection is used only when it matches."""
    key = json.dumps(
        {
            "version": FIT_VERSION,
            "classes": list(class_names),
            "templates": list(PROMPT_TEMPLATES),
            "refine": [REFINE_STEPS, LOGIT_SCALE, STEP_SIZE],
            "context_length": context_length,
            "weights": [[p.name, sha256_of(p)] for p in weight_files],
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def shipped_path(name: str) -> Path:
    """Where model `name`'s fitted projection ships inside the package (edgevl/models/data/)."""
    return Path(__file__).with_name("data") / f"{name}-text-projection.safetensors"


def save_projection(path: Path, weight: np.ndarray, bias: np.ndarray, info: dict, digest: str) -> None:
    """Write a fitted projection (float32) with the fit version and inputs' digest it was fitted
    for; written beside `path`, then renamed, so readers never see a half-written file."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        # One metadata key: safetensors writes several in a per-process random order, and one
        # keeps the file byte-identical from fit to fit.
        fit = json.dumps({"fit_version": FIT_VERSION, "inputs": digest, "info": info}, sort_keys=True)
        save_file({"weight": np.ascontiguousarray(weight, dtype=np.float32),
                   "bias": np.ascontiguousarray(bias, dtype=np.float32)}, tmp, metadata={"fit": fit})
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache may be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_projection(path: Path, digest: str, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
    """(weight, bias, info) from `path` when it was fitted for `digest` at this `FIT_VERSION` and
    fits `linear`'s shapes; None otherwise (missing, stale, foreign or unreadable)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            fit = json.loads((f.metadata() or {}).get("fit", "{}"))
            if fit.get("fit_version") != FIT_VERSION or fit.get("inputs") != digest:
                return None
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
            info = fit.get("info", {})
    except Exception:  # noqa: BLE001 - an unreadable file is refitted, never fatal
        return None
    if weight.shape != linear.weight.shape or bias.shape != linear.bias.shape:
        return None
    return weight, bias, info


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
    """Set `tower.projection` and return the fit's info, from the first of: the projection shipped
    in the package (`shipped_path(name)`), the cache under `cache_dir`, a fit
    (`fit_text_projection`, then cached). Each file is used only when it was fitted for these
    inputs (`inputs_digest`), so a change of procedure, classes, prompts, context length or
    weights refits."""
    digest = inputs_digest(class_names, weight_files, context_length)
    path = cache_dir / f"{name}-text-projection-{digest}.safetensors"
    for candidate in ([] if _SKIP_SHIPPED else [shipped_path(name)]) + [path]:
        found = read_projection(candidate, digest, tower.projection)
        if found is not None:
            _set_projection(tower.projection, found[0], found[1])
            return found[2]
    print(f"edgevl: {name}: fitting the text projection (one time; later loads read the cache)...",
          file=sys.stderr, flush=True)
    w, b, info = fit_text_projection(tower, tokenize, class_names, class_vectors)
    weight = np.ascontiguousarray(w, dtype=np.float32)
    bias = np.ascontiguousarray(b, dtype=np.float32)
    _set_projection(tower.projection, torch.from_numpy(weight), torch.from_numpy(bias))
    try:
        save_projection(path, weight, bias, info, digest)
    except OSError as exc:
        print(f"edgevl: {name}: could not cache the projection in {cache_dir} ({exc})", file=sys.stderr)
    return info


def _set_projection(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


# Set while `refit` runs: the loader then skips the shipped file and fits.
_SKIP_SHIPPED = False


def refit(model: str, cache_dir: Path) -> Path:
    """Fit `model`'s projection from scratch through its own loader, as a user without the shipped
    file would, into `cache_dir`; returns the written file (the form `shipped_path` holds)."""
    global _SKIP_SHIPPED
    from edgevl.models.resolve import resolve_model
    from edgevl.models.spec import LoadOptions

    _SKIP_SHIPPED = True
    try:
        resolve_model(model, LoadOptions(cache_dir=cache_dir))
    finally:
        _SKIP_SHIPPED = False
    written = sorted(Path(cache_dir).glob(f"{model}-text-projection-*.safetensors"))
    if len(written) != 1:
        raise RuntimeError(f"refitting {model} wrote {len(written)} projection files in {cache_dir}, expected 1")
    return written[0]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgevl.models.text_projection [MODEL]`: refit MODEL's projection (default
    effnet-minilm; minutes on 2 cores) and write it where the package ships it."""
    import argparse
    import shutil

    from edgevl.models import text_projection as module  # the instance the loader imports, not __main__

    parser = argparse.ArgumentParser(prog="python -m edgevl.models.text_projection", description=main.__doc__)
    parser.add_argument("model", nargs="?", default="effnet-minilm", help="registered model name (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fitted = module.refit(args.model, Path(tmp))
        shutil.copyfile(fitted, shipped_path(args.model))
    print(f"wrote {shipped_path(args.model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
