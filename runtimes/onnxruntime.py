"""ONNX Runtime (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime


class _OrtModel(LoadedModel):
    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if "threads" in options:
            so.intra_op_num_threads = int(options["threads"])
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(None, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))


@register_runtime("onnxruntime")
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    requires = ("onnxruntime",)
    extra = "onnx"

    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel:
        return _OrtModel(path, options)
