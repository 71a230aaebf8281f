"""Real photos and scans bundled inside installed packages, with captions and labels we wrote for
them, split into three disjoint sets.

Splits (a photo belongs to exactly one):

* ``calibration``: what int8 observes when no ``--calib`` is given (its photos' views, its
  captions, its label prompts and the everyday captions in `EXTRA_CAPTIONS`).
* ``gate``: what the int8 accuracy gate measures on when it decides which layers stay float.
* ``parity``: held out; it only judges the finished artifact. It keeps the photos the docs
  quote (chelsea = cat, coffee, rocket, astronaut).

Like the parity split, the gate holds photos whose best two labels lie close together (the
stairs and the portrait): the gate must see the kind of data the verdict is given on, or it
passes int8 candidates that flip near-tie picks on the held-out photos (docs/data-splits.md).
Both splits' agreement is tie-aware.

The splits are disjoint by source file (content hash), by caption, and by label: every photo has
its own label, and each of the gate and parity splits measures zero-shot agreement over the label
prompts ("a photo of a {label}.") of its own photos only. So no text the gate or calibration
sees (caption or prompt) is ever judged by parity, and the class lists differ between splits.
`tests/unit/test_splits.py` fails if any two splits share a source file, a text, or a pixel-
identical view.

Beside these rows, the photo cut-outs of Debian's `tuxpaint-stamps-default` package are read where
it is installed (`calibration/tuxpaint.py`: hundreds of object photos with English captions, each
stamp's split fixed by its caption's hash); `split_samples` gives both, and the manifest's pool
record says whether the stamps were read. A stamp's zero-shot class is its own caption.

Only files that ship inside the installed wheels are used (some `skimage.data` images download
on first use; those are not listed). Each row names its split, so a file's split never depends on
what else is installed. The photos come in two pools (`pool()`): "core" holds the rows of edgevl's
own dependencies (scikit-image, scikit-learn); "full" adds the rows of the `photos` extra
(`pip install 'edgevl[photos]'`: matplotlib, mahotas, PyWavelets, pydicom), used only when every
package of that extra is installed, so each split is one of exactly two fixed sets of files. A
listed file of a pool in use that is missing is an error that names the package to reinstall: a
pool (and the hashes the manifest records) never shrinks silently. Each row carries its licence;
`SOURCES` gives each package's own licence.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from edgevl.calibration import tuxpaint
from edgevl.calibration.class_names import split_class_prompts
from edgevl.calibration.photo_rows import ROWS as _ROWS
from edgevl.calibration.photo_rows import Row  # noqa: F401  (re-exported)

SPLITS = ("calibration", "gate", "parity")
PROMPT_TEMPLATE = "a photo of a {}."
# The gate split also reads its labels in these phrasings: the gate judges a candidate by its
# worst text, and a few short captions are too few for that minimum to hold on the held-out
# split's texts. Parity reads only PROMPT_TEMPLATE.
GATE_TEMPLATES = ("a picture of a {}.", "an image of the {}.", "a close-up photo of a {}.", "a {} in a photo.")

# Everyday captions (written for edgevl) that widen the bundled text calibration beyond the
# calibration split's own captions and label prompts. None of them is a gate or parity text
# (tests/unit/test_splits.py checks).
EXTRA_CAPTIONS: tuple[str, ...] = (
    "a dog running on the beach at sunset",
    "two children playing football in a park",
    "a bowl of fresh fruit on a wooden table",
    "a red car parked in front of a house",
    "an airplane flying over snowy mountains",
    "a man riding a bicycle through the city",
    "a plate of spaghetti with tomato sauce",
    "a group of people sitting around a campfire",
    "a close-up of a butterfly on a yellow flower",
    "a train crossing a bridge over a river",
    "a laptop and a cup of tea on a desk",
    "an old lighthouse on a rocky coast",
    "a woman reading a book in a library",
    "a herd of elephants walking across the savanna",
    "the skyline of a large city at night",
    "a sailboat on a calm lake",
    "a black and white dog sleeping on a sofa",
    "a street market with fruit and vegetables",
    "a snowy forest with tall pine trees",
    "a person surfing a large wave",
    "a vintage typewriter on a table",
    "a chocolate cake with candles",
    "a horse standing in a green field",
    "a cat sitting on a window sill",
    "a violin resting on sheet music",
    "a bicycle leaning against a brick wall",
    "an aerial view of farmland",
    "a photo of a dog.",
    "a photo of a car.",
    "a photo of a bird.",
    "a photo of a guitar.",
    "a photo of a pizza.",
)

# The packages whose photos every install has (edgevl's core dependencies), and those of the
# `photos` extra, in the order their rows are read.
CORE_PACKAGES = ("skimage", "sklearn")
PHOTOS_EXTRA_PACKAGES = ("matplotlib", "mahotas", "pywt", "pydicom")
POOLS = {"core": CORE_PACKAGES, "full": CORE_PACKAGES + PHOTOS_EXTRA_PACKAGES}

# Package -> its licence and where its images come from.
SOURCES: dict[str, str] = {
    "skimage": "scikit-image (BSD-3-Clause); per-image licences from skimage.data's docstrings",
    "sklearn": "scikit-learn (BSD-3-Clause); load_sample_images() photos, CC BY 2.0 (its images/README.txt)",
    "matplotlib": "matplotlib (PSF-based matplotlib licence); sample_data",
    "mahotas": "mahotas (MIT); demos/data photos shipped with the package",
    "pywt": "PyWavelets (MIT); pywt/data images",
    "pydicom": "pydicom (MIT); data/test_files, from the NEMA WG04 / public DICOM sample sets",
    "tuxpaint": tuxpaint.LICENCE,
}


_PIP_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "pywt": "PyWavelets"}


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    caption: str
    label: str
    split: str = "parity"
    source: str = ""  # package/path inside it, e.g. "skimage/data/chelsea.png"

    @property
    def is_stamp(self) -> bool:
        """A Tux Paint stamp (one view, its caption as its zero-shot class), not a package photo."""
        return self.source.startswith("tuxpaint/")


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pool() -> str:
    """The pool of photos this install reads: "full" when every package of the `photos` extra is
    installed, else "core" (a partial extra counts as absent, so there are only two pools)."""
    return "full" if all(_package_dir(p) is not None for p in PHOTOS_EXTRA_PACKAGES) else "core"


def pool_record() -> dict:
    """Which pool the bundled splits come from, the packages it reads photos from, and the Tux
    Paint stamps read beside them (None: the package is not installed)."""
    name = pool()
    return {"pool": name, "packages": [_PIP_NAMES.get(p, p) for p in POOLS[name]], "tuxpaint": tuxpaint.record()}


def pool_name() -> str:
    """`pool()`, with "+ Tux Paint stamps" when the stamps are read."""
    return f"{pool()} pool" + (" + Tux Paint stamps" if tuxpaint.stamps() else "")


def _resolve(row: Row) -> Path:
    folder = _package_dir(row.package)
    path = folder / row.path if folder is not None else None
    if path is None or not path.is_file():
        from edgevl.errors import MissingBackendError

        pip_name = _PIP_NAMES.get(row.package, row.package)
        raise MissingBackendError(
            f"bundled sample {row.package}/{row.path} is missing; reinstall the package that ships it: "
            f"`pip install --force-reinstall {pip_name}`"
        )
    return path


def bundled_samples(split: str | None = None) -> list[Sample]:
    """The bundled photos of one split (all splits if None) from this install's `pool()`, in a
    fixed order."""
    if split is not None and split not in SPLITS:
        from edgevl.errors import InputError

        raise InputError(f"unknown data split {split!r}; choose from: {', '.join(SPLITS)}")
    packages = POOLS[pool()]
    return [
        Sample(Path(row.path).stem, _resolve(row), row.caption, row.label, row.split, f"{row.package}/{row.path}")
        for row in _ROWS
        if (split is None or row.split == split) and row.package in packages
    ]


def split_samples(split: str | None = None, stamps: bool = True) -> list[Sample]:
    """`bundled_samples(split)`, then (with `stamps`) that split's Tux Paint stamps, labelled
    with their captions."""
    found = bundled_samples(split)
    if stamps:
        found += [Sample(s.relative.rsplit(".", 1)[0], s.path, s.caption, s.caption, s.split, f"tuxpaint/{s.relative}")
                  for s in tuxpaint.stamps(split)]
    return found


def sample_views(sample: Sample) -> list:
    """The views a sample is used in: a package photo's `views`, a stamp composited on white."""
    if sample.is_stamp:
        return [tuxpaint.load_stamp(sample.path)]
    return list(views(load_rgb(sample.path)))


def load_rgb(path: Path) -> "object":
    """One bundled file as an RGB Pillow image. Image files open with Pillow; `.npz` holds a uint8
    array under "data" (PyWavelets); `.dcm` is a DICOM scan, windowed to 8 bits between its 0.5th
    and 99.5th percentiles (a scanner's raw 12-16-bit values are not display levels)."""
    from PIL import Image

    path = Path(path)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as archive:
            return Image.fromarray(np.asarray(archive["data"], dtype=np.uint8)).convert("RGB")
    if path.suffix == ".dcm":
        return _load_dicom(path)
    with Image.open(path) as im:
        return im.convert("RGB")


def _load_dicom(path: Path) -> "object":
    import numpy as np
    import pydicom
    from PIL import Image

    pixels = pydicom.dcmread(path).pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.dtype == np.uint8:
        return Image.fromarray(pixels, "RGB")
    values = pixels.astype(np.float64)
    lo, hi = np.percentile(values, [0.5, 99.5])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")


VIEWS_PER_PHOTO = 5


def views(image: "object") -> Iterator["object"]:
    """Deterministic views of one photo: as is, mirrored, a central 80 % zoom, and the upper-left
    and lower-right 80 % crops. More real samples per photo make agreement figures finer than
    1/len(photos): with 11 parity photos one flipped view moves agreement by 1/55."""
    from PIL import ImageOps

    yield image
    yield ImageOps.mirror(image)
    w, h = image.size
    dx, dy = int(w * 0.1), int(h * 0.1)
    yield image.crop((dx, dy, w - dx, h - dy))
    yield image.crop((0, 0, w - 2 * dx, h - 2 * dy))
    yield image.crop((2 * dx, 2 * dy, w, h))


@dataclass
class ParitySet:
    """Real inputs for parity (or the gate): images (Pillow), captions, and the zero-shot label
    prompts of the same photos."""

    images: list
    image_names: list[str]
    captions: list[str]
    labels: list[str]
    split: str = "parity"
    # More texts of the same photos, checked beside the captions (not zero-shot classes).
    extra_texts: list[str] = field(default_factory=list)
    # Zero-shot classes read as they are (Tux Paint stamps' captions), after the label prompts.
    caption_classes: list[str] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        """The zero-shot classes: the label prompts, then the caption classes."""
        return [PROMPT_TEMPLATE.format(label) for label in self.labels] + self.caption_classes

    @property
    def texts(self) -> list[str]:
        """Every text the text tower is checked on: the captions and extra texts, then the label
        prompts (last: zero-shot agreement reads them as the classes)."""
        return self.captions + self.extra_texts + self.prompts


def bundled_split(split: str, max_photos: int | None = None, stamps: bool = True) -> ParitySet:
    """One split's photos (every view of each), captions and labels; with `stamps`, its Tux
    Paint stamps too (one view each, their captions as zero-shot classes). `max_photos` cuts
    the list of `split_samples`, package photos first."""
    samples = split_samples(split, stamps)[:max_photos]
    if not samples:
        raise RuntimeError(f"the bundled {split} split holds no photos")
    images, names = [], []
    for sample in samples:
        for i, view in enumerate(sample_views(sample)):
            images.append(view)
            names.append(f"{sample.name}#{i}")
    photos = [s for s in samples if not s.is_stamp]
    labels = list(dict.fromkeys(s.label for s in photos))
    caption_classes = list(dict.fromkeys(s.caption for s in samples if s.is_stamp))
    return ParitySet(images, names, [s.caption for s in photos], labels, split, _extra_texts(split, labels),
                     caption_classes)


def _extra_texts(split: str, labels: list[str]) -> list[str]:
    """The texts a split reads beside its captions: its third of the class-name prompts, and for
    the gate its labels in `GATE_TEMPLATES`."""
    gate = [template.format(label) for template in GATE_TEMPLATES for label in labels] if split == "gate" else []
    return gate + class_prompts(split)


def class_prompts(split: str) -> list[str]:
    """This split's third of the ImageNet class-name prompts (`class_names.split_class_prompts`)."""
    return split_class_prompts(split, SPLITS, PROMPT_TEMPLATE, frozenset(row.label for row in _ROWS))


def bundled_parity_set(max_photos: int | None = None) -> ParitySet:
    """The held-out parity split."""
    return bundled_split("parity", max_photos)


@lru_cache(maxsize=None)
def file_sha256(path: Path) -> str:
    from edgevl.manifest import sha256_of

    return sha256_of(Path(path))


def content_hash(file_hashes: list[str], texts: list[str]) -> str:
    """sha256 over the sorted source-file hashes, then the sorted texts (one per line), so the
    hash names the content and not the order it is read in."""
    digest = hashlib.sha256()
    for h in sorted(file_hashes):
        digest.update(f"file {h}\n".encode())
    for text in sorted(texts):
        digest.update(f"text {text}\n".encode("utf-8"))
    return digest.hexdigest()


def split_texts(split: str, stamps: bool = True) -> list[str]:
    """Every text a split feeds the text tower. Gate and parity: captions (the gate's labels in
    `GATE_TEMPLATES` after them), then label prompts, then (with `stamps`) the Tux Paint
    stamps' captions. Calibration adds the everyday captions of `EXTRA_CAPTIONS` in front."""
    samples = bundled_samples(split)
    labels = list(dict.fromkeys(s.label for s in samples))
    texts = [s.caption for s in samples] + _extra_texts(split, labels) + [PROMPT_TEMPLATE.format(s.label) for s in samples]
    if stamps:
        texts += list(dict.fromkeys(s.caption for s in tuxpaint.stamps(split)))
    return list(EXTRA_CAPTIONS) + texts if split == "calibration" else texts


def split_record(split: str) -> dict:
    """What the manifest records about one bundled split: its pool, counts and a content hash."""
    samples = split_samples(split)
    texts = split_texts(split)
    return {
        "source": f"bundled {split} split, {pool_name()}",
        "photos": len(samples),
        "images": sum(1 if s.is_stamp else VIEWS_PER_PHOTO for s in samples),
        "texts": len(texts),
        "sha256": content_hash([file_sha256(s.path) for s in samples], texts),
        "files": [s.source for s in samples],
        "pool": pool_record(),
    }
