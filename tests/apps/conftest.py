"""Fixtures of the apps' tests: the shared test vectors and the bundled photos they were made from."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "apps" / "testvectors" / "default.json"


def photo_path(entry: dict) -> Path:
    """A test-vector photo's file, e.g. "skimage/data/chelsea.png", inside the installed package."""
    import importlib.util

    package, rel = entry["file"].split("/", 1)
    return Path(importlib.util.find_spec(package).origin).parent / rel


def crop_of(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["crop_rgb_base64"]), np.uint8).reshape(entry["crop_shape"])


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads(VECTORS.read_text())


@pytest.fixture(scope="session")
def photos(vectors) -> list[Path]:
    return [photo_path(entry) for entry in vectors["images"]]
