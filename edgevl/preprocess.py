"""Torch-free image preprocessing (numpy + Pillow) that travels with every export as
`preprocess.json`, so apps on a device compute exactly what the reference computed.

For CLIP it reproduces OpenAI CLIP's `_transform`: resize the shorter side to `resize` with
Pillow bicubic, center crop `crop`, scale to [0, 1], normalise with mean/std, CHW float32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw inputs become tower inputs.

    Attributes:
        resize: length the image's shorter side is resized to.
        crop: side of the square center crop taken after resizing.
        mean, std: per-channel normalisation applied to pixels scaled to [0, 1].
        interpolation: Pillow resampling filter for the resize.
        resize_mode: "shortest_edge" (CLIP: shorter side to `resize`, aspect kept, then crop) or
            "squash" (SigLIP: straight to `resize` x `resize`, aspect not kept, then crop).
        context_length: token sequence length the text tower is fed (padded / truncated to it).
        text_inputs: names of the text tower's inputs, e.g. ("input_ids", "attention_mask").
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest_edge"
    context_length: int = 77
    text_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    pad_token_id: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; use one of {_INTERPOLATIONS}"
            )
        if self.resize_mode not in ("shortest_edge", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} must be 'shortest_edge' or 'squash'")
        if self.crop > self.resize or self.crop <= 0:
            raise ValueError(f"crop {self.crop} must be in 1..resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 channels, std > 0")

    def to_json(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["text_inputs"] = list(self.text_inputs)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "PreprocessConfig":
        data = dict(data)
        data["mean"] = tuple(data["mean"])
        data["std"] = tuple(data["std"])
        data["text_inputs"] = tuple(data.get("text_inputs", ("input_ids", "attention_mask")))
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PreprocessConfig":
        return cls.from_json(json.loads(Path(path).read_text()))


def _resample(name: str) -> int:
    from PIL import Image

    return {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


def preprocess_image(image: "object", config: PreprocessConfig) -> np.ndarray:
    """One Pillow image (any mode) -> float32 `[3, crop, crop]`."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}")
    image = image.convert("RGB")
    width, height = image.size
    # Shorter side to `resize`, longer side scaled and truncated, as torchvision's Resize(int).
    if config.resize_mode == "squash":
        new_w, new_h = config.resize, config.resize
    elif width <= height:
        new_w, new_h = config.resize, int(config.resize * height / width)
    else:
        new_w, new_h = int(config.resize * width / height), config.resize
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _resample(config.interpolation))
    # Center crop with torchvision's rounding.
    top = int(round((new_h - config.crop) / 2.0))
    left = int(round((new_w - config.crop) / 2.0))
    image = image.crop((left, top, left + config.crop, top + config.crop))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_images(images: Sequence["object"], config: PreprocessConfig) -> np.ndarray:
    """Pillow images -> float32 `[batch, 3, crop, crop]` (the image tower's `pixel_values`)."""
    return np.stack([preprocess_image(im, config) for im in images])
