"""Every path a manifest names must be relative to its export folder and exist there.

`check_manifest_paths(out)` walks `out/manifest.json` and returns one line per offence (an empty
list: all good), so a test can `assert not check_manifest_paths(out)` and see every miss at once.
A value is a path when its key names a file (PATH_KEYS, including inside `passes`) or when it is
an absolute path anywhere; the keys in USER_INPUT_KEYS name inputs, not files of the export (a
`--calib` folder as given; the data splits' photos by their package path)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

# Keys whose string values (or lists of strings) name a file or folder of the export.
PATH_KEYS = frozenset({"path", "file", "files", "recipe", "script", "engine", "preprocess", "tokenizer"})
USER_INPUT_KEYS = frozenset({"source", "data_splits"})


def manifest_path_values(manifest: Any, where: str = "") -> list[tuple[str, str, bool]]:
    """(where, value, named by a path key) for every path-like string in a manifest."""
    found: list[tuple[str, str, bool]] = []
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            here = f"{where}.{key}" if where else key
            if key in USER_INPUT_KEYS:
                continue
            strings = value if isinstance(value, list) else [value]
            if key in PATH_KEYS and all(isinstance(s, str) for s in strings):
                found += [(here, s, True) for s in strings]
            else:
                found += manifest_path_values(value, here)
    elif isinstance(manifest, list):
        for i, value in enumerate(manifest):
            found += manifest_path_values(value, f"{where}[{i}]")
    elif isinstance(manifest, str) and manifest.startswith("/"):
        found.append((where, manifest, False))
    return found


def check_manifest_paths(out: Path) -> list[str]:
    """Offences of `out/manifest.json`: absolute paths, paths leaving the folder, missing files."""
    out = Path(out).resolve()
    manifest = json.loads((out / "manifest.json").read_text())
    problems = []
    for where, value, _ in manifest_path_values(manifest):
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            problems.append(f"{where}: {value!r} is not relative to the export folder")
        elif not (out / path).exists():
            problems.append(f"{where}: {value!r} does not exist in {out}")
        elif not (out / path).resolve().is_relative_to(out):
            problems.append(f"{where}: {value!r} resolves outside the export folder")
    return problems
