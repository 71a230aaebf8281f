"""Images -> the image tower's `pixel_values`, exactly as the export's preprocess.json declares
(numpy + Pillow; the same steps as edgevl's reference preprocessing, checked against the shared
test vectors): convert to RGB, resize (shorter side to `resize` keeping the aspect, or both sides
to `resize` for "squash") with Pillow's filter, center crop `crop` with torchvision's rounding,
scale to [0, 1], normalise with mean/std, CHW float32."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from edgevl_runtime.errors import BadInput, RefusedExport

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
RESIZE_MODES = ("shortest_edge", "squash")
KNOWN_KEYS = {"resize", "crop", "mean", "std", "interpolation", "resize_mode", "context_length",
              "text_inputs", "pad_token_id", "extra"}
ImageLike = Union[str, Path, "object"]


@dataclass(frozen=True)
class Preprocess:
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    context_length: int
    text_inputs: tuple[str, ...]
    pad_token_id: int

    @classmethod
    def load(cls, path: Path) -> "Preprocess":
        """Read preprocess.json; refuse keys or values this library does not implement."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RefusedExport(f"{path} is missing or not JSON ({exc}); copy the whole export folder") from None
        unknown = sorted(set(data) - KNOWN_KEYS) if isinstance(data, dict) else ["<not an object>"]
        if unknown:
            raise RefusedExport(f"{path} has keys this edgevl-runtime does not implement: {', '.join(unknown)}; upgrade it")
        try:
            config = cls(
                resize=int(data["resize"]), crop=int(data["crop"]),
                mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                interpolation=str(data.get("interpolation", "bicubic")),
                resize_mode=str(data.get("resize_mode", "shortest_edge")),
                context_length=int(data.get("context_length", 77)),
                text_inputs=tuple(data.get("text_inputs", ("input_ids", "attention_mask"))),
                pad_token_id=int(data.get("pad_token_id", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RefusedExport(f"{path}: missing or malformed field ({exc}); re-export the folder") from None
        if config.interpolation not in INTERPOLATIONS or config.resize_mode not in RESIZE_MODES:
            raise RefusedExport(
                f"{path}: interpolation {config.interpolation!r} / resize_mode {config.resize_mode!r} is not one of "
                f"{INTERPOLATIONS} / {RESIZE_MODES}; upgrade edgevl-runtime"
            )
        if len(config.mean) != 3 or len(config.std) != 3 or min(config.std) <= 0 or not 0 < config.crop <= config.resize:
            raise RefusedExport(f"{path}: mean/std need 3 channels with std > 0 and 0 < crop <= resize; re-export")
        return config


def open_image(image: ImageLike) -> "object":
    """A path or a Pillow image -> an RGB Pillow image (the file is read fully and closed)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise BadInput(f"{image} is not a readable image ({exc}); pass a JPEG, PNG or other Pillow format") from None


def crop_rgb(image: ImageLike, config: Preprocess) -> np.ndarray:
    """The resized, center-cropped image as uint8 `[crop, crop, 3]` (before scaling)."""
    from PIL import Image

    image = open_image(image)
    width, height = image.size
    if config.resize_mode == "squash":
        new_w, new_h = config.resize, config.resize
    elif width <= height:
        new_w, new_h = config.resize, int(config.resize * height / width)
    else:
        new_w, new_h = int(config.resize * width / height), config.resize
    if (new_w, new_h) != (width, height):
        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}[config.interpolation]
        image = image.resize((new_w, new_h), resample)
    top = int(round((new_h - config.crop) / 2.0))
    left = int(round((new_w - config.crop) / 2.0))
    return np.asarray(image.crop((left, top, left + config.crop, top + config.crop)), dtype=np.uint8)


def normalise(crop: np.ndarray, config: Preprocess) -> np.ndarray:
    """uint8 `[H, W, 3]` -> float32 `[3, H, W]`: scale to [0, 1], then (x - mean) / std, in float32."""
    pixels = crop.astype(np.float32) / np.float32(255.0)
    pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def pixel_values(images: Sequence[ImageLike], config: Preprocess) -> np.ndarray:
    """Images -> float32 `[batch, 3, crop, crop]`."""
    return np.stack([normalise(crop_rgb(im, config), config) for im in images])
