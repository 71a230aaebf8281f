"""Name -> object registries, filled where the object is defined (coremltools' pass registry).

Lookup by name imports the defining module lazily, so `edgevl --help` and `edgevl targets` never
import torch or an SDK they do not need.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from edgevl.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of `T`s. `lazy` maps each name to the module that registers it on import."""

    def __init__(self, kind: str, lazy: dict[str, str]) -> None:
        self.kind = kind
        self._lazy = dict(lazy)
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice; names must be unique")
            self._items[name] = obj
            return obj

        return decorate

    def names(self) -> list[str]:
        return sorted(set(self._lazy) | set(self._items))

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            )
        return self._items[name]


# Lazy tables: the name a user types -> the module whose import registers it.
MODELS: Registry = Registry(
    "model",
    {
        "effnet-minilm": "edgevl.models.effnet_minilm",
        "hf-clip": "edgevl.models.hf_clip",
        "edgevl-student": "edgevl.models.student",
    },
)
EXPORTERS: Registry = Registry(
    "target",
    {
        "onnx": "edgevl.exporters.onnx",
        "openvino": "edgevl.exporters.openvino",
        "coreml": "edgevl.exporters.coreml",
        "tensorrt": "edgevl.exporters.tensorrt",
        "executorch": "edgevl.exporters.executorch",
    },
)
RUNTIMES: Registry = Registry(
    "runtime",
    {
        "onnxruntime": "edgevl.runtimes.onnxruntime",
        "openvino": "edgevl.runtimes.openvino",
        "coreml": "edgevl.runtimes.coreml",
        "tensorrt": "edgevl.runtimes.tensorrt",
        "executorch": "edgevl.runtimes.executorch",
    },
)

register_model = MODELS.register
register_exporter = EXPORTERS.register
register_runtime = RUNTIMES.register
