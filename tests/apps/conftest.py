"""Fixtures of the apps' tests: the shared test vectors and the bundled photos they were made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from appvectors import VECTORS, photo_path


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads(VECTORS.read_text())


@pytest.fixture(scope="session")
def photos(vectors) -> list[Path]:
    return [photo_path(entry) for entry in vectors["images"]]
