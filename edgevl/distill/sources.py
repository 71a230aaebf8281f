"""Where distillation images and texts come from: the bundled pool's calibration and gate splits
(package photos and, where installed, Tux Paint stamps; never the parity split), an image folder
(sub-folder names as labels), a JSON-lines file, or Debian's `dataset-fashion-mnist`; and the
held-out evaluation images (never trained on: the whole parity split)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgevl.errors import InputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")
PROMPT = "a photo of a {}."


@dataclass
class Source:
    """Images (Pillow RGB) each with one paired text; `files` identify the content for the cache
    key (a file hash or a dataset's name and index)."""

    name: str
    images: list = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # paired text per image
    files: list[str] = field(default_factory=list)
    extra_texts: list[str] = field(default_factory=list)  # texts without an image
    skipped: int = 0  # files left out because they are held-out photos


@dataclass
class HeldOut:
    """Evaluation images, the class names zero-shot agreement picks among, each image's true
    class index (-1 where unknown), and where the images have them, their own captions and each
    image's caption index."""

    name: str
    images: list
    classes: list[str]
    labels: list[int]
    files: list[str]
    captions: list[str] = field(default_factory=list)
    caption_of: list[int] = field(default_factory=list)
    # How many of `classes` (the first ones) are names read through PROMPT; the rest are
    # zero-shot texts read as they are (Tux Paint stamps' captions). None: every class is a name.
    named_classes: Optional[int] = None

    @property
    def prompts(self) -> list[str]:
        named = len(self.classes) if self.named_classes is None else self.named_classes
        return [PROMPT.format(c) for c in self.classes[:named]] + list(self.classes[named:])


def _count(spec: str, default: int) -> tuple[str, int]:
    name, _, n = spec.partition(":")
    if not n:
        return name, default
    if not n.isdigit() or int(n) < 1:
        raise InputError(f"data {spec!r}: the count after ':' must be a positive integer, e.g. {name}:2000")
    return name, int(n)


def check_data_spec(data: str, heldout: Optional[str], option: str = "--data") -> None:
    """Refuse a --data / --extra-data / --heldout that cannot be read, before the teacher loads."""
    if option != "--data":  # --extra-data: a folder or JSON-lines file beside --data
        path = Path(data).expanduser()
        if data in ("bundled",) or data.startswith("fashion-mnist"):
            raise InputError(f"{option} {data!r}: give an image folder or a .jsonl file (name bundled or "
                             "fashion-mnist with --data)")
        if not path.exists():
            raise InputError(f"{option} {data} does not exist; give an image folder or a .jsonl file")
        if path.is_file() and path.suffix not in (".jsonl", ".json"):
            raise InputError(f"{option} {data} is a {path.suffix or 'plain'} file; give an image folder or a .jsonl file")
        return
    name, _ = _count(data, 0)
    if name == "fashion-mnist" or (heldout or "").startswith("fashion-mnist"):
        _fashion_files("train" if name == "fashion-mnist" else "t10k")
    if data != "bundled" and name != "fashion-mnist":
        path = Path(data).expanduser()
        if not path.exists():
            raise InputError(f"--data {data} does not exist; give 'bundled', 'fashion-mnist[:N]', an image folder "
                             "or a .jsonl file")
        if path.is_file() and path.suffix not in (".jsonl", ".json"):
            raise InputError(f"--data {data} is a {path.suffix or 'plain'} file; give an image folder or a .jsonl file")
    if heldout is not None and _count(heldout, 0)[0] not in ("bundled-parity", "fashion-mnist-test"):
        raise InputError(f"--heldout {heldout!r} is unknown; use 'bundled-parity' or 'fashion-mnist-test[:N]'")


def _fashion_files(split: str) -> tuple[Path, Path]:
    images_gz = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels_gz = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images_gz.is_file() or not labels_gz.is_file():
        raise InputError(f"fashion-mnist is not installed ({images_gz} is missing); run as root: "
                         "apt-get update && apt-get install -y dataset-fashion-mnist")
    return images_gz, labels_gz


def load_source(spec: str, exclude: frozenset = frozenset()) -> Source:
    """The images and texts of `spec`; a file whose sha256 is in `exclude` (the held-out photos)
    is skipped before it is decoded."""
    from edgevl.calibration.samples import file_sha256

    if spec == "bundled":
        from edgevl.calibration.samples import PROMPT_TEMPLATE, load_rgb, sample_views, split_samples

        # The calibration and gate splits of the whole pool: each package photo (as it is; the
        # augmentation makes its views) with its caption and its label prompt, and each Tux Paint
        # stamp (composited on white) with its caption. The parity split is never read here.
        src = Source("bundled")
        for sample in split_samples("calibration") + split_samples("gate"):
            sha = file_sha256(sample.path)
            if sha in exclude:
                src.skipped += 1
                continue
            if sample.is_stamp:
                pairs = [(sample_views(sample)[0], sample.caption)]
            else:
                image = load_rgb(sample.path)
                pairs = [(image, sample.caption), (image, PROMPT_TEMPLATE.format(sample.label))]
            for image, text in pairs:
                src.images.append(image)
                src.texts.append(text)
                src.files.append(sha)
        return src
    name, n = _count(spec, 6000)
    if name == "fashion-mnist":
        images, labels = _fashion_mnist("train", n)
        return Source(spec, images, [PROMPT.format(FASHION_MNIST_CLASSES[i]) for i in labels],
                      [f"fashion-mnist/train/{i}" for i in range(len(images))])
    path = Path(spec).expanduser()
    if path.is_dir():
        return _image_folder(path, exclude)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return _jsonl(path, exclude)
    raise InputError(f"--data {spec}: not 'bundled', 'fashion-mnist[:N]', an image folder or a .jsonl file; "
                     "check the path")


def training_source(data: str, extra: Optional[str], heldout: HeldOut,
                    log: Callable[[str], None] = lambda m: None) -> Source:
    """What training reads: `--data`, then `--extra-data` (a folder or JSON-lines file) if
    given, without any file that is a held-out photo (a folder may hold a copy of a parity
    photo): such files are skipped by content hash before they are decoded, and said so."""
    held = frozenset(f.split("#")[0] for f in heldout.files)
    sources = [load_source(data, held)] + ([load_source(extra, held)] if extra is not None else [])
    source = Source("+".join(s.name for s in sources), [i for s in sources for i in s.images],
                    [t for s in sources for t in s.texts], [f for s in sources for f in s.files],
                    [t for s in sources for t in s.extra_texts])
    skipped = sum(s.skipped for s in sources)
    if skipped:
        log(f"training data: skipped {skipped} file(s) that are held-out photos")
    if not source.images:
        raise InputError(f"no training image is left in {source.name} once the held-out photos are left out; "
                         "give other images")
    return source


def bundled_photo_views(split: str) -> tuple[list, list, list[tuple[int, int]]]:
    """The bundled package photos of one split alone (no Tux Paint stamps: the EfficientNet block
    ranking reads the calibration photos' views, the set docs/distillation.md measures), every
    view of each, and (photo index, view index) per view."""
    from edgevl.calibration.samples import bundled_samples, load_rgb, views

    samples = bundled_samples(split)
    images, view_of = [], []
    for i, sample in enumerate(samples):
        for v, view in enumerate(views(load_rgb(sample.path))):
            images.append(view)
            view_of.append((i, v))
    return samples, images, view_of


def load_heldout(spec: Optional[str], data: str) -> HeldOut:
    if spec is None:
        spec = "fashion-mnist-test:1000" if data.startswith("fashion-mnist") else "bundled-parity"
    if spec == "bundled-parity":
        return _parity_split(spec)
    name, n = _count(spec, 1000)
    if name == "fashion-mnist-test":
        images, labels = _fashion_mnist("t10k", n)
        return HeldOut(spec, images, list(FASHION_MNIST_CLASSES), labels,
                       [f"fashion-mnist/t10k/{i}" for i in range(len(images))])
    raise InputError(f"--heldout {spec!r} is unknown; use 'bundled-parity' or 'fashion-mnist-test[:N]'")


def _parity_split(spec: str) -> HeldOut:
    """The whole parity split (`calibration.samples.split_samples("parity")`): every view of each
    package photo, whose class is its label prompt, and each Tux Paint stamp (one view), whose
    class is its own caption, as the parity check reads them. Captions: the photos' and the
    stamps' own, distinct."""
    from edgevl.calibration.samples import file_sha256, sample_views, split_samples

    samples = split_samples("parity")
    labels = list(dict.fromkeys(s.label for s in samples if not s.is_stamp))
    classes = labels + [c for c in dict.fromkeys(s.caption for s in samples if s.is_stamp) if c not in labels]
    captions = list(dict.fromkeys(s.caption for s in samples))
    images, class_of, files, caption_of = [], [], [], []
    for sample in samples:
        sha = file_sha256(sample.path)
        for v, view in enumerate(sample_views(sample)):
            images.append(view)
            class_of.append(classes.index(sample.caption if sample.is_stamp else sample.label))
            files.append(f"{sha}#{sample.name}#{v}")
            caption_of.append(captions.index(sample.caption))
    return HeldOut(spec, images, classes, class_of, files, captions, caption_of, named_classes=len(labels))


def _fashion_mnist(split: str, n: int) -> tuple[list, list[int]]:
    from PIL import Image

    images_gz, labels_gz = _fashion_files(split)
    with gzip.open(images_gz) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_gz) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    n = min(n, len(labels))
    return [Image.fromarray(raw[i]).convert("RGB") for i in range(n)], [int(x) for x in labels[:n]]


def _image_folder(folder: Path, exclude: frozenset = frozenset()) -> Source:
    from edgevl.calibration.datasets import IMAGE_SUFFIXES
    from edgevl.calibration.samples import file_sha256, load_rgb

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"--data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some or pass a .jsonl file")
    src = Source(str(folder))
    for path in files:
        if file_sha256(path) in exclude:
            src.skipped += 1
            continue
        label = path.parent.name if path.parent != folder else path.stem.replace("_", " ")
        src.images.append(load_rgb(path))
        src.texts.append(PROMPT.format(label))
        src.files.append(file_sha256(path))
    return src


def _jsonl(path: Path, exclude: frozenset = frozenset()) -> Source:
    from edgevl.calibration.samples import file_sha256, load_rgb

    src = Source(str(path))
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InputError(f"{path}:{number} is not valid JSON; one object per line") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number} is not a JSON object; write {{\"image\": ..., \"caption\": ...}}")
        text = row.get("caption") or (PROMPT.format(row["label"]) if row.get("label") else None)
        if not isinstance(text, str):
            raise InputError(f"{path}:{number} has no \"caption\" or \"label\"; give one of them")
        if row.get("image") is None:
            src.extra_texts.append(text)
            continue
        image = (path.parent / str(row["image"])).expanduser()
        if not image.is_file():
            raise InputError(f"{path}:{number}: image {image} does not exist; paths are relative to the .jsonl file")
        if file_sha256(image) in exclude:
            src.skipped += 1
            continue
        src.images.append(load_rgb(image))
        src.texts.append(text)
        src.files.append(file_sha256(image))
    if not src.images and not src.skipped:
        raise InputError(f"{path} names no images; give each line an \"image\" path")
    return src
