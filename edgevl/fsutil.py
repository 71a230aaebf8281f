"""Write-then-move: an export is built in a staging folder beside its destination and renamed
into place only when complete, so an interrupted or failed run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgevl.errors import InputError


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder without --force."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")
    parent = out.resolve().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder; choose another path")


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh folder on the same filesystem as `out` (so the final rename is atomic); removed on
    any failure, including KeyboardInterrupt."""
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: out/demo works on a fresh clone
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgevl-staging-", dir=parent))
    # mkdtemp makes the folder private (0700); the published folder gets the usual umask mode.
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def publish(stage: Path, out: Path) -> None:
    """Move a complete staging folder to `out`, replacing what was there (already allowed)."""
    out = out.resolve()
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.edgevl-old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
