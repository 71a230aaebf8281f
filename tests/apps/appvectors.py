"""Helpers of the apps' tests: where the shared test vectors are, their photos and crops. (A module
of its own: `conftest` is a name every conftest.py shares, so tests import helpers from here.)"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "apps" / "testvectors" / "default.json"


def photo_path(entry: dict) -> Path:
    """A test-vector photo's file, e.g. "skimage/data/chelsea.png", inside the installed package."""
    import importlib.util

    package, rel = entry["file"].split("/", 1)
    return Path(importlib.util.find_spec(package).origin).parent / rel


def crop_of(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["crop_rgb_base64"]), np.uint8).reshape(entry["crop_shape"])
