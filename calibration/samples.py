"""Real photos bundled inside installed packages (scikit-image, scikit-learn, matplotlib), with
captions and labels we wrote for them. They are the default parity and calibration data: real
pixels and real text, available offline on every machine that installs edgevl.

Only files that ship inside the wheels are used (some `skimage.data` images download on first
use; those are not listed here).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# (package, path inside the package, caption, label). Labels form the zero-shot label list.
_BUNDLED: tuple[tuple[str, str, str, str], ...] = (
    ("skimage", "data/astronaut.png", "a portrait of an astronaut in a space suit with a flag", "astronaut"),
    ("skimage", "data/chelsea.png", "a ginger tabby cat looking to the side", "cat"),
    ("skimage", "data/coffee.png", "a cup of coffee on a saucer with a spoon", "coffee"),
    ("skimage", "data/rocket.jpg", "a rocket standing on the launch pad", "rocket"),
    ("skimage", "data/camera.png", "a black and white photo of a man with a camera on a tripod", "camera"),
    ("skimage", "data/page.png", "a scanned page of printed text", "book"),
    ("skimage", "data/clock_motion.png", "a wall clock with a blurred second hand", "clock"),
    ("skimage", "data/coins.png", "a collection of old coins on a dark background", "coin"),
    ("skimage", "data/hubble_deep_field.jpg", "many distant galaxies seen by a space telescope", "galaxy"),
    ("skimage", "data/motorcycle_left.png", "a motorcycle parked in a room", "motorcycle"),
    ("skimage", "data/moon.png", "the cratered surface of the moon", "moon"),
    ("skimage", "data/retina.jpg", "a photograph of the retina of a human eye", "eye"),
    ("skimage", "data/brick.png", "a close-up of a brick wall", "brick wall"),
    ("skimage", "data/grass.png", "a close-up of green grass", "grass"),
    ("skimage", "data/gravel.png", "a close-up of gravel stones", "gravel"),
    ("skimage", "data/color.png", "a chart of colour patches", "color chart"),
    ("sklearn", "datasets/images/china.jpg", "a chinese temple with a curved roof among trees", "temple"),
    ("sklearn", "datasets/images/flower.jpg", "a pink flower in close-up", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "a portrait of a woman in a navy uniform", "uniform"),
)

PROMPT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    caption: str
    label: str


def bundled_samples() -> list[Sample]:
    """The bundled photos that are present on this machine, in a fixed order."""
    samples = []
    for package, rel, caption, label in _BUNDLED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if path.is_file():
            samples.append(Sample(path.stem, path, caption, label))
    return samples


def load_rgb(path: Path) -> "object":
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def views(image: "object") -> Iterator["object"]:
    """Deterministic views of one photo: as is, mirrored, and a central 80 % zoom. More real
    samples per photo make agreement figures finer than 1/len(photos)."""
    from PIL import ImageOps

    yield image
    yield ImageOps.mirror(image)
    w, h = image.size
    dx, dy = int(w * 0.1), int(h * 0.1)
    yield image.crop((dx, dy, w - dx, h - dy))


@dataclass
class ParitySet:
    """Real inputs for parity: images (Pillow), captions, and the zero-shot label prompts."""

    images: list
    image_names: list[str]
    captions: list[str]
    labels: list[str]

    @property
    def prompts(self) -> list[str]:
        return [PROMPT_TEMPLATE.format(label) for label in self.labels]

    @property
    def texts(self) -> list[str]:
        """Every text the text tower is checked on: the captions, then the label prompts."""
        return self.captions + self.prompts


def bundled_parity_set(max_photos: int | None = None) -> ParitySet:
    samples = bundled_samples()[:max_photos]
    if not samples:
        raise RuntimeError("no bundled sample photos found; reinstall scikit-image")
    images, names = [], []
    for sample in samples:
        for i, view in enumerate(views(load_rgb(sample.path))):
            images.append(view)
            names.append(f"{sample.name}#{i}")
    labels = list(dict.fromkeys(s.label for s in samples))
    return ParitySet(images, names, [s.caption for s in samples], labels)
