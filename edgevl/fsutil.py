"""Write-then-move: an export is built in a staging folder beside its destination and renamed
into place only when complete, so an interrupted or failed run leaves nothing half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgevl.errors import InputError
from edgevl.manifest import MANIFEST_NAME


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an output that cannot be written, or that would replace a user's files: a
    non-empty folder needs --force, and --force replaces only an earlier edgevl export."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder path")
    if out.is_dir():
        try:
            entries = sorted(p.name for p in out.iterdir())
        except OSError as exc:
            raise InputError(f"--out {out} cannot be read ({exc.strerror}); choose another folder") from exc
        if entries and not force:
            raise InputError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")
        if entries and not is_edgevl_export(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise InputError(
                f"--out {out} holds files edgevl did not write ({shown}) and no edgevl manifest.json; "
                "--force replaces only an empty folder or an earlier edgevl export: choose another folder"
            )
    _check_parent_writable(out)


def is_edgevl_export(folder: Path) -> bool:
    """True if `folder` holds a manifest.json written by edgevl (an object with `edgevl_version`)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("edgevl_version"), str)


def _check_parent_writable(out: Path) -> None:
    """The nearest existing folder above `out` must be a folder edgevl may create entries in
    (staging beside `out` and the missing parents are made there)."""
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: folder {parent} is not writable; choose a folder you can write to")


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
