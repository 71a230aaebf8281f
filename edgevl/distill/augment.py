"""Function matching (Beyer et al., CVPR 2022, "Knowledge distillation: A good teacher is
patient and consistent"): every step, teacher and student see the SAME freshly augmented view of
each training photo, and the teacher's embedding of that view is computed on the fly. The student
then matches the teacher's function on an unbounded stream of inputs rather than on a few fixed
views, which is what lets a few dozen photos train for many steps without the student memorising
them. No cache can hold these embeddings: no view repeats.

A view is an inception-style random resized crop (8-100 % of the photo's area, aspect 3:4-4:3,
as in the paper), mirrored half the time, colour-jittered (brightness, contrast and saturation
each scaled by a factor in [0.6, 1.4]), then mixed up with a view of a second photo drawn the
same way (mixup weight uniform; the photo with the larger weight counts as the view's own, so its
paired text stays its text for the losses that use pairs). The view is made once, at the larger
of the two input sizes, in [0, 1]; each model gets it normalised with its own mean and std, the
smaller side resized (bilinear, antialiased) from the same tensor. At equal sizes the two inputs
are the same tensor.

Deterministic: each row of each step's global batch draws from a generator seeded by (seed,
step, row), so the views do not depend on the number of processes or where a resumed run
restarted, and each rank builds only its own rows.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgevl.preprocess import PreprocessConfig

CROP_AREA = (0.08, 1.0)  # fraction of the photo's area a crop covers (inception crop)
CROP_ASPECT = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast and saturation factors are drawn from [1 - JITTER, 1 + JITTER]
SOURCE_SIDE = 2  # photos are shrunk once so their short side is at most this many view sides


def row_rng(seed: int, step: int, row: int) -> random.Random:
    """The generator of one row of one step's global batch."""
    return random.Random((seed * 1_000_003 + step) * 1_000_003 + row)


def bounded(images: Sequence, side: int) -> list:
    """Each Pillow image shrunk (never enlarged) so its short side is at most `SOURCE_SIDE * side`:
    a crop of a large photo then costs what one of a small photo does."""
    from PIL import Image

    out = []
    limit = SOURCE_SIDE * side
    for image in images:
        w, h = image.size
        scale = limit / min(w, h)
        if scale < 1:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        out.append(image)
    return out


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _crop_flip_jitter(image, rng: random.Random, size: int) -> np.ndarray:  # noqa: ANN001 - Pillow image
    """One random resized crop of `image`, mirrored or not, colour-jittered: float32 [size, size, 3]
    in [0, 1]. NumPy, not torch: on a busy CPU torch's thread pool makes these small element-wise
    operations tens of times slower."""
    from PIL import Image

    w, h = image.size
    for _ in range(10):  # torchvision's RandomResizedCrop: retry, then fall back to the whole photo
        area = rng.uniform(*CROP_AREA) * w * h
        aspect = float(np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]))))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(view, dtype=np.float32) / np.float32(255.0)
    brightness, contrast, saturation = (np.float32(rng.uniform(1 - JITTER, 1 + JITTER)) for _ in range(3))
    pixels = np.clip(pixels * brightness, 0, 1)
    mean = np.float32((pixels @ _LUMA).mean())
    pixels = np.clip((pixels - mean) * contrast + mean, 0, 1)
    gray = (pixels @ _LUMA)[..., None]
    return np.clip((pixels - gray) * saturation + gray, 0, 1)


def draw_views(images: Sequence, primary: torch.Tensor, rows: Sequence[int], seed: int, step: int,
               size: int) -> torch.Tensor:
    """The views of `rows` of one step's global batch: row k is a view of `images[primary[k]]`
    mixed up with a view of another photo. Returns [len(rows), 3, size, size] in [0, 1]."""
    out = []
    for k in rows:
        rng = row_rng(seed, step, k)
        own = int(primary[k])
        partner = rng.randrange(len(images) - 1) if len(images) > 1 else 0
        partner += int(len(images) > 1 and partner >= own)  # another photo, uniformly
        weight = rng.random()
        weight = np.float32(max(weight, 1 - weight))  # the own photo dominates
        a = _crop_flip_jitter(images[own], rng, size)
        b = _crop_flip_jitter(images[partner], rng, size)
        out.append(weight * a + (1 - weight) * b)
    if not out:
        return torch.zeros(0, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)))


def model_input(views: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """`views` ([N, 3, S, S] in [0, 1]) as a model's pixel input: resized to `pre.crop` where S
    differs (bilinear, antialiased), normalised with `pre`'s mean and std."""
    if views.shape[-1] != pre.crop:
        views = F.interpolate(views, size=(pre.crop, pre.crop), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(pre.mean, dtype=views.dtype)[:, None, None]
    std = torch.tensor(pre.std, dtype=views.dtype)[:, None, None]
    return (views - mean) / std
