"""An export folder opened for one runtime: its towers, preprocessing and tokenizer, ready to embed
images and texts. Towers load on first use; `timings` holds each tower's last run in seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgevl_runtime.backends import Session, check_options, installed, load
from edgevl_runtime.errors import BadInput, MissingRuntime, NoArtifact
from edgevl_runtime.manifest import (RUNTIME_EXTRA, TARGET_RUNTIME, Artifact, artifacts, check_files, choose,
                                     not_run_here, other_targets, read_manifest)
from edgevl_runtime.preprocess import ImageLike, Preprocess, pixel_values
from edgevl_runtime.tokenize import Tokenizer

COMPONENTS = ("image", "text")
RUNTIMES = tuple(TARGET_RUNTIME.values())
BATCH = 16


class EdgeModel:
    """`EdgeModel("out/demo")` opens an export; `runtime` ("onnxruntime" / "openvino", default:
    the first installed one the export has both towers for) and `precision` (default: the best
    verified artifact of each tower) choose the artifacts; `verify_sha256` checks their bytes
    against the manifest before anything runs."""

    def __init__(self, folder: Path, runtime: Optional[str] = None, precision: Optional[str] = None,
                 threads: Optional[int] = None, verify_sha256: bool = True) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        found = artifacts(self.folder, self.manifest)
        others = other_targets(self.manifest)
        self.runtime = runtime or _pick_runtime(found, precision, others)
        if self.runtime not in RUNTIMES:
            raise BadInput(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.artifacts: dict[str, Artifact] = {c: choose(found, c, self.runtime, precision, others)
                                               for c in COMPONENTS}
        for artifact in self.artifacts.values():
            check_files(artifact, verify_sha256)
            check_options(artifact, threads)
        self.preprocess = Preprocess.load(self.folder / "preprocess.json")
        self.tokenizer = Tokenizer(self.folder / "tokenizer" / "tokenizer.json", self.preprocess.context_length,
                                   self.preprocess.pad_token_id, self.preprocess.text_inputs)
        self.threads = threads
        self.timings: dict[str, float] = {}
        self._sessions: dict[str, Session] = {}

    def describe(self) -> str:
        return ", ".join(f"{c} {a.path.relative_to(os.path.abspath(self.folder))}" for c, a in self.artifacts.items())

    def session(self, component: str) -> Session:
        if component not in self._sessions:
            self._sessions[component] = load(self.artifacts[component], self.threads)
        return self._sessions[component]

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Image paths or Pillow images -> float32 `[n, dim]` (the tower's L2-normalised output)."""
        if not images:
            raise BadInput("no images to embed; pass at least one")
        return self._run("image", {"pixel_values": pixel_values(list(images), self.preprocess)})

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise BadInput("texts must be non-empty strings; pass at least one label or query")
        return self._run("text", self.tokenizer(texts))

    def _run(self, component: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self.session(component)
        if session.seq is not None:
            feeds = {k: _fit(v, session.seq, self.preprocess.pad_token_id if k == "input_ids" else 0)
                     for k, v in feeds.items()}
        size = session.batch or BATCH
        n = next(iter(feeds.values())).shape[0]
        start, outs = time.perf_counter(), []
        for i in range(0, n, size):
            chunk = {k: v[i : i + size] for k, v in feeds.items()}
            rows = next(iter(chunk.values())).shape[0]
            if session.batch is not None and rows < size:  # a static batch takes only its own size
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for k, v in chunk.items()}
            outs.append(np.asarray(session.run(chunk), dtype=np.float32)[:rows])
        self.timings[component] = time.perf_counter() - start
        return np.concatenate(outs, axis=0)


def _fit(values: np.ndarray, seq: int, pad: int) -> np.ndarray:
    if values.shape[1] >= seq:
        return np.ascontiguousarray(values[:, :seq])
    return np.concatenate([values, np.full((values.shape[0], seq - values.shape[1]), pad, values.dtype)], axis=1)


def _pick_runtime(found: list[Artifact], precision: Optional[str], others: list[str]) -> str:
    """The first installed runtime the export has both towers for (at `precision`); otherwise an
    error naming what is missing: the runtime to install, the precision to pick, or artifacts
    of a target this library does not run."""
    def complete(runtime: str, at: Optional[str]) -> bool:
        return {a.component for a in found if a.runtime == runtime and at in (None, a.precision)} >= set(COMPONENTS)

    ready = [r for r in RUNTIMES if complete(r, precision)]
    for runtime in ready:
        if installed(runtime):
            return runtime
    if ready:  # the export has what it takes; its runtime is not installed
        extras = " or ".join(f"'edgevl-runtime[{RUNTIME_EXTRA[r]}]'" for r in ready)
        raise MissingRuntime(
            f"this export runs on {' or '.join(ready)}, which {'is' if len(ready) == 1 else 'are'} not installed; "
            f"pip install {extras}"
        )
    at = f" at {precision}" if precision else ""
    if not found:
        fix = "; re-export with --target onnx or openvino" if others else "; re-export"
        raise NoArtifact(f"the export has no artifact edgevl-runtime runs{not_run_here(others) or ''}{fix}")
    have = sorted({f"{a.runtime}/{a.precision}/{a.component}" for a in found})
    whole = sorted({a.precision for a in found if complete(a.runtime, a.precision)})
    fix = (f"pick --precision {' or '.join(whole)}" if whole
           else "re-export with both towers (--components image,text)")
    raise NoArtifact(
        f"no runtime has both towers{at} in this export (it has: {', '.join(have)}){not_run_here(others)}; {fix}"
    )
