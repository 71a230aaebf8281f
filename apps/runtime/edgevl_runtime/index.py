"""Text-to-image search over a folder: an on-disk index of image embeddings (`FOLDER/.edgevl-index.npz`
by default) that updates incrementally. `update()` embeds only files that are new or whose size or
modification time changed, drops files that are gone, and rebuilds everything when the image
artifact (sha256, runtime, options) differs from the one that built the index."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgevl_runtime.errors import BadInput
from edgevl_runtime.model import EdgeModel
from edgevl_runtime.storage import load_npz, save_npz

INDEX_NAME = ".edgevl-index.npz"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class IndexUpdate:
    added: int
    changed: int
    removed: int
    kept: int
    rebuilt: bool

    def __str__(self) -> str:
        what = "rebuilt" if self.rebuilt else "updated"
        return (f"index {what}: {self.added} added, {self.changed} changed, {self.removed} removed, "
                f"{self.kept} unchanged")


@dataclass(frozen=True)
class Hit:
    path: Path
    score: float


class ImageIndex:
    def __init__(self, model: EdgeModel, folder: Path, index_path: Optional[Path] = None) -> None:
        self.model, self.folder = model, Path(folder)
        if not self.folder.is_dir():
            raise BadInput(f"{folder} is not a folder of images; pass a folder")
        self.path = Path(index_path) if index_path else self.folder / INDEX_NAME
        image = model.artifacts["image"]
        key = json.dumps([image.sha256, model.runtime, image.runtime_options])
        self.key = hashlib.sha256(key.encode()).hexdigest()

    def scan(self) -> dict[str, tuple[int, int]]:
        """relative path -> (size, mtime_ns) of every image file below the folder (hidden ones skipped)."""
        found = {}
        for path in sorted(self.folder.rglob("*")):
            rel = path.relative_to(self.folder)
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(p.startswith(".") for p in rel.parts):
                stat = path.stat()
                found[rel.as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return found

    def load(self) -> Optional[dict[str, tuple[tuple[int, int], np.ndarray]]]:
        """path -> ((size, mtime_ns), embedding); None when there is no index for this artifact."""
        data = load_npz(self.path)
        if data is None or str(data.get("key")) != self.key:
            return None
        return {p: ((int(s), int(m)), e) for p, s, m, e in
                zip(data["paths"].tolist(), data["sizes"], data["mtimes"], data["embeddings"])}

    def update(self) -> IndexUpdate:
        stored = self.load()
        rebuilt = stored is None and self.path.is_file()
        stored = stored or {}
        files = self.scan()
        todo = [p for p, stat in files.items() if p not in stored or stored[p][0] != stat]
        entries = {p: stored[p] for p in files if p in stored and p not in todo}
        if todo:
            embedded = self.model.embed_images([self.folder / p for p in todo])
            entries.update({p: (files[p], row) for p, row in zip(todo, embedded)})
        removed = len(set(stored) - set(files))
        if todo or removed or rebuilt or not self.path.is_file():
            self._save(entries)
        changed = sum(1 for p in todo if p in stored)
        return IndexUpdate(added=len(todo) - changed, changed=changed, removed=removed,
                           kept=len(entries) - len(todo), rebuilt=rebuilt)

    def _save(self, entries: dict[str, tuple[tuple[int, int], np.ndarray]]) -> None:
        paths = sorted(entries)
        dim = next(iter(entries.values()))[1].shape[0] if entries else 0
        save_npz(self.path, key=np.array(self.key), paths=np.array(paths, dtype=str),
                 sizes=np.array([entries[p][0][0] for p in paths], dtype=np.int64),
                 mtimes=np.array([entries[p][0][1] for p in paths], dtype=np.int64),
                 embeddings=np.stack([entries[p][1] for p in paths]).astype(np.float32) if paths
                 else np.zeros((0, dim), np.float32))

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The `k` images whose embeddings are closest (cosine) to the query text's."""
        if k < 1:
            raise BadInput(f"k {k} must be at least 1")
        entries = self.load()
        if entries is None:
            raise BadInput(f"{self.path} holds no index for this export; run `edgevl-runtime index {self.folder}` first")
        if not entries:
            raise BadInput(f"{self.folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some and index again")
        paths = sorted(entries)
        matrix = np.stack([entries[p][1] for p in paths]).astype(np.float64)
        scores = matrix @ self.model.embed_texts([query])[0].astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.folder / paths[i], float(scores[i])) for i in order]
