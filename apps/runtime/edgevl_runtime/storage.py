"""Small on-disk stores: an npz written to a temporary name beside its target and renamed into
place, so a reader never sees half a file; a default cache folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgevl_runtime.errors import BadInput

CACHE_ENV = "EDGEVL_RUNTIME_CACHE"


def cache_dir() -> Path:
    """$EDGEVL_RUNTIME_CACHE, else ~/.cache/edgevl_runtime."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgevl_runtime")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BadInput(f"cannot write {path} ({exc.strerror or exc}); pass a writable place") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the store is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: Path) -> Optional[dict[str, np.ndarray]]:
    """The arrays of an npz written by save_npz, or None when it is absent or unreadable (a cache
    that cannot be read is rebuilt, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError):
        return None
