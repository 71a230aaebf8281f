"""Runtime contract: `load(path, options)` then `run(feeds) -> outputs`, numpy in and out.

One file per backend (a backend's helpers beside it, e.g. `tensorrt_build.py`, `mil_ops.py`).
Runtimes get a path and options, never an exporter or a ModelSpec. A runtime imports only other
runtime modules and core modules (`edgevl.errors`, `edgevl.registry`), never an exporter, compress,
the pipeline or the CLI; exporters import runtimes (tests/unit/test_layout.py checks both, over every
import). What exporter and runtime both need (TensorRT's engine build, its attention plugin) lives
here, on the runtime's side.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edgevl.errors import MissingBackendError


class LoadedModel(ABC):
    input_names: list[str]
    output_names: list[str]
    # What ran the artifact, as the manifest's `verified` records it: "runtime" (the target's own
    # runtime) or "reference-interpreter" (a labelled reference, e.g. Core ML off macOS).
    verified: str = "runtime"
    # The most parity images this runtime is asked to run (a slow reference interpreter); None:
    # all of them. The pipeline judges the first ones and the manifest says how many of how many.
    parity_images: int | None = None

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(ABC):
    name: str = ""
    requires: tuple[str, ...] = ()
    extra: str = ""

    def check_available(self) -> None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingBackendError(
                f"runtime {self.name!r} needs {', '.join(missing)}, which is not installed; "
                f"install it with: pip install 'edgevl[{self.extra}]'"
            )

    def load(self, path: Path, options: dict[str, Any] | None = None) -> LoadedModel:
        self.check_available()
        if not Path(path).exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        return self._load(Path(path), dict(options or {}))

    @abstractmethod
    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel: ...
