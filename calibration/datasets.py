"""Calibration sets: real inputs, in a fixed order, that quantisation observes.

Three sources: an image folder, a JSON-lines file of captions / labels (optionally with image
paths), and the bundled calibration split (photos from installed packages with captions and
labels we wrote, plus a list of everyday captions; `samples.py` keeps it disjoint from the gate
and parity splits). Anything that cannot be used raises `CalibrationError`
naming the file (and line) and saying what to do.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgevl.calibration.samples import EXTRA_CAPTIONS  # defined beside the splits it stays disjoint from
from edgevl.errors import CalibrationError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Modes whose conversion to RGB is faithful. 16-bit, 32-bit integer, float and 1-bit images
# would be rescaled or thresholded silently, so they are refused (convert them first).
IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr")
MIN_SIDE = 32
DEFAULT_SEED = 0


@dataclass
class CalibrationSet:
    """Real calibration inputs: images (Pillow, RGB) with names, and texts.

    `feeds()` turns them into a tower's inputs, one sample per dict (batch 1), in a fixed
    order shuffled by `seed`, so two runs calibrate identically.
    """

    images: list = field(default_factory=list)
    image_names: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    source: str = ""
    seed: int = DEFAULT_SEED
    # The files the images were read from (several views may share one file).
    source_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.image_names):
            raise CalibrationError("calibration set: every image needs a name")

    def describe(self) -> dict:
        return {"source": self.source, "images": len(self.images), "texts": len(self.texts), "seed": self.seed}

    def record(self) -> dict:
        """What the manifest records about this set: counts and a content hash (sha256 over the
        sorted source-file hashes and the texts; `samples.content_hash`)."""
        from edgevl.calibration.samples import content_hash, file_sha256

        files = sorted(set(self.source_files))
        return {
            "source": self.source,
            "photos": len(files),
            "images": len(self.images),
            "texts": len(self.texts),
            "sha256": content_hash([file_sha256(Path(f)) for f in files], self.texts),
        }

    def _order(self, n: int, limit: Optional[int]) -> list[int]:
        order = list(range(n))
        random.Random(self.seed).shuffle(order)
        return order[:limit] if limit else order

    def feeds(self, spec: "object", component: str, limit: Optional[int] = None) -> list[dict[str, np.ndarray]]:
        """Tower inputs, one sample per dict. Raises CalibrationError if there are none."""
        if component == "image":
            if not self.images:
                raise CalibrationError(
                    f"calibration set {self.source!r} has no images for the image tower; "
                    "pass an image folder or a JSON-lines file with \"image\" paths"
                )
            from edgevl.preprocess import preprocess_image

            out = []
            for i in self._order(len(self.images), limit):
                try:
                    pixels = preprocess_image(self.images[i], spec.preprocess)
                except Exception as exc:
                    raise CalibrationError(f"calibration image {self.image_names[i]}: {exc}") from exc
                out.append({"pixel_values": pixels[None]})
            return out
        if component == "text":
            if not self.texts:
                raise CalibrationError(
                    f"calibration set {self.source!r} has no texts for the text tower; "
                    "pass a JSON-lines file with \"text\" (or \"caption\" / \"label\") fields"
                )
            texts = [self.texts[i] for i in self._order(len(self.texts), limit)]
            if spec.tokenize is not None:
                batch = spec.tokenize(texts)
            else:
                # No tokenizer shipped (as for parity): well-formed random ids, one per text.
                from edgevl.models.spec import random_token_feeds

                batch = random_token_feeds(
                    len(texts), spec.preprocess.context_length, max(spec.vocab_size, 2),
                    spec.special_token_ids, spec.preprocess.text_inputs, seed=self.seed,
                )
            return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(len(texts))]
        raise CalibrationError(f"unknown component {component!r}; use 'image' or 'text'")


def _open_image(path: Path, min_side: int) -> "object":
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            if mode not in IMAGE_MODES:
                raise CalibrationError(
                    f"calibration image {path}: mode {mode!r} is not supported (use one of "
                    f"{', '.join(IMAGE_MODES)}); convert it to 8-bit RGB first"
                )
            if min(size) < min_side:
                raise CalibrationError(
                    f"calibration image {path}: size {size[0]}x{size[1]} is smaller than {min_side} px "
                    "on a side; use real photos at the resolution the model sees"
                )
            return im.convert("RGB")
    except CalibrationError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CalibrationError(f"calibration image {path} cannot be read: {exc}") from exc


def from_image_folder(
    folder: Path, limit: Optional[int] = None, seed: int = DEFAULT_SEED, min_side: int = MIN_SIDE
) -> CalibrationSet:
    """Every image file under `folder` (recursively, sorted by path)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise CalibrationError(
            f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "point --calib at a folder of real photos"
        )
    if limit:
        rng = random.Random(seed)
        paths = sorted(rng.sample(paths, min(limit, len(paths))))
    images = [_open_image(p, min_side) for p in paths]
    names = [str(p) for p in paths]
    return CalibrationSet(images, names, [], str(folder), seed, list(names))


def from_jsonl(path: Path, seed: int = DEFAULT_SEED, min_side: int = MIN_SIDE) -> CalibrationSet:
    """A JSON-lines file; each line an object with any of "text" / "caption" / "label" (texts)
    and "image" (a path, relative to the file). Labels become "a photo of a {label}."."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration file {path} cannot be read: {exc}") from exc
    texts, images, names = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration file {path}, line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise CalibrationError(f"calibration file {path}, line {number}: expected a JSON object")
        for key in ("text", "caption"):
            if isinstance(row.get(key), str) and row[key].strip():
                texts.append(row[key])
        if isinstance(row.get("label"), str) and row["label"].strip():
            from edgevl.calibration.samples import PROMPT_TEMPLATE

            texts.append(PROMPT_TEMPLATE.format(row["label"]))
        if row.get("image"):
            image_path = (path.parent / row["image"]).resolve()
            if not image_path.is_file():
                raise CalibrationError(f"calibration file {path}, line {number}: image {image_path} not found")
            images.append(_open_image(image_path, min_side))
            names.append(str(image_path))
    if not texts and not images:
        raise CalibrationError(
            f"calibration file {path} holds no usable rows; each line needs \"text\", \"caption\", "
            "\"label\" or \"image\""
        )
    return CalibrationSet(images, names, texts, str(path), seed, list(names))


def bundled(seed: int = DEFAULT_SEED, max_photos: Optional[int] = None) -> CalibrationSet:
    """The bundled calibration split: its photos (every view of each) and Tux Paint stamps where
    installed, the everyday captions, its captions and its own label prompts. The gate and parity splits hold other photos and
    other texts (`samples.py`)."""
    from edgevl.calibration.samples import bundled_split, split_samples

    ps = bundled_split("calibration", max_photos)
    files = [str(s.path) for s in split_samples("calibration")[:max_photos]]
    return CalibrationSet(
        list(ps.images), list(ps.image_names), list(EXTRA_CAPTIONS) + ps.texts,
        "bundled real samples (calibration split)", seed, files,
    )


def load_calibration(source: "object" = None, seed: int = DEFAULT_SEED) -> CalibrationSet:
    """None -> bundled samples; a CalibrationSet as is; a folder -> images; a .jsonl/.json file."""
    if source is None:
        return bundled(seed)
    if isinstance(source, CalibrationSet):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return from_image_folder(path, seed=seed)
        if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            if not path.is_file():
                raise CalibrationError(f"calibration file {path} does not exist")
            return from_jsonl(path, seed=seed)
        raise CalibrationError(
            f"calibration source {path} is neither a folder of images nor a .jsonl file"
        )
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        if not source:
            raise CalibrationError("calibration set is empty: give at least one text or image")
        return CalibrationSet([], [], list(source), "texts given in code", seed)
    raise CalibrationError(f"cannot use {type(source).__name__} as a calibration set")
