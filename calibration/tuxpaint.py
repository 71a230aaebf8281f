"""Photo cut-outs from Debian's `tuxpaint-stamps-default` package, as more rows of the bundled
calibration, gate and parity splits (`samples.split_samples`).

The package installs object images (animals, fruit, plants, vehicles, tools, planets, ...) under
`STAMPS_ROOT`, each PNG with a `.txt` beside it whose first line without a `=` is its English
caption (the other lines are translations). `make setup` installs it where apt-get may run; an
install without it reads the package photos only, and the manifest's pool record says which.
`EDGEVL_TUXPAINT_STAMPS` (`ROOT_ENV`) names another folder to read instead (an empty folder: as
if the package were absent).

Which stamps are used, each decided by the file alone (so a stamp's split never depends on what
else is installed):

* not under a `symbols` or `cartoon` folder, with an English caption;
* at least `MIN_SIDE` px on a side and at least `MIN_COLOURS` distinct colours among its opaque
  pixels: flat drawings have few colours, photo cut-outs thousands (docs/data-splits.md has
  the figures this was chosen on);
* its split is fixed by the sha256 of its caption (lower case, spaces collapsed), so stamps that
  share a caption share a split; shares `SHARES` out of 100.

A stamp whose composited pixels equal those of an earlier one (by relative path) is left out, so
no two rows hold the same picture. Each stamp is composited onto a white square (the object
centred, nothing cropped by the model's centre crop) and used as one view: with hundreds of
stamps, views add no resolution to the agreement figures.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
ROOT_ENV = "EDGEVL_TUXPAINT_STAMPS"
DEBIAN_PACKAGE = "tuxpaint-stamps-default"
LICENCE = "GPL-2 (Tux Paint Stamps by Bill Kendrick et al., Debian package tuxpaint-stamps-default)"
EXCLUDED_FOLDERS = frozenset({"symbols", "cartoon"})
MIN_SIDE = 32
MIN_COLOURS = 2000
# Out of 100, by caption hash. Parity gets the most (it judges every artifact, and must reach
# hundreds of images); the gate the fewest (the int8 gate runs every candidate over it).
SHARES = (("calibration", 25), ("gate", 15), ("parity", 60))
BACKGROUND = (255, 255, 255)
ALPHA_OPAQUE = 128


@dataclass(frozen=True)
class Stamp:
    relative: str  # path under the stamps root, e.g. "animals/birds/owl.png"
    path: Path
    caption: str
    split: str


def stamps_root() -> Optional[Path]:
    """The folder the stamps are read from (`ROOT_ENV`, else `STAMPS_ROOT`), or None when it is
    not a folder."""
    root = Path(os.environ.get(ROOT_ENV) or STAMPS_ROOT)
    return root if root.is_dir() else None


def caption_of(text_file: Path) -> Optional[str]:
    """The English caption: the first non-empty line without a `=` (translations read
    `lang.utf8=...`)."""
    try:
        lines = text_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip() for line in lines if line.strip() and "=" not in line), None)


def caption_key(caption: str) -> str:
    return " ".join(caption.lower().split())


def split_of(caption: str) -> str:
    """The split a caption (and every stamp that carries it) belongs to."""
    bucket = int(hashlib.sha256(caption_key(caption).encode("utf-8")).hexdigest(), 16) % 100
    for split, share in SHARES:
        if bucket < share:
            return split
        bucket -= share
    raise AssertionError("SHARES must add up to 100")


def colour_count(rgba: "object") -> int:
    """Distinct colours among the pixels with alpha >= ALPHA_OPAQUE of an RGBA uint8 array."""
    import numpy as np

    opaque = rgba[rgba[..., 3] >= ALPHA_OPAQUE][:, :3].astype(np.uint32)
    return int(np.unique((opaque[:, 0] << 16) | (opaque[:, 1] << 8) | opaque[:, 2]).size)


def composite(image: "object") -> "object":
    """A stamp (any Pillow mode) on a white square, centred: RGB."""
    from PIL import Image

    rgba = image.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), BACKGROUND + (255,))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas.convert("RGB")


def load_stamp(path: Path) -> "object":
    """A stamp composited on white (a copy of the one decoded per process: every export builds
    its parity split again, and decoding hundreds of PNGs each time costs seconds)."""
    return _composited(Path(path)).copy()


@lru_cache(maxsize=None)
def _composited(path: Path) -> "object":
    from PIL import Image

    with Image.open(path) as im:
        return composite(im)


def stamps(split: Optional[str] = None) -> list[Stamp]:
    """The stamps of one split (all if None) under `stamps_root()`, sorted by relative path;
    empty when there is no stamps folder."""
    root = stamps_root()
    if root is None:
        return []
    return [s for s in _scan(str(root.resolve())) if split is None or s.split == split]


@lru_cache(maxsize=None)
def _scan(root: str) -> tuple[Stamp, ...]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    base = Path(root)
    found, seen_pixels = [], set()
    for path in sorted(base.rglob("*.png")):
        relative = path.relative_to(base)
        if EXCLUDED_FOLDERS & set(relative.parts[:-1]):
            continue
        caption = caption_of(path.with_suffix(".txt"))
        if caption is None:
            continue
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except (UnidentifiedImageError, OSError, ValueError):
            continue
        if min(rgba.shape[:2]) < MIN_SIDE or colour_count(rgba) < MIN_COLOURS:
            continue
        pixels = hashlib.sha256(np.asarray(composite(Image.fromarray(rgba))).tobytes()).hexdigest()
        if pixels in seen_pixels:
            continue
        seen_pixels.add(pixels)
        found.append(Stamp(relative.as_posix(), path, caption, split_of(caption)))
    return tuple(found)


def record() -> Optional[dict]:
    """What the manifest's pool record says about the stamps: None when none are read."""
    found = stamps()
    if not found:
        return None
    return {"debian_package": DEBIAN_PACKAGE, "root": str(stamps_root()), "stamps": len(found),
            "licence": LICENCE, "selection": f">= {MIN_SIDE} px, >= {MIN_COLOURS} colours, no "
            f"{'/'.join(sorted(EXCLUDED_FOLDERS))} folders; split by caption hash {dict(SHARES)}"}
