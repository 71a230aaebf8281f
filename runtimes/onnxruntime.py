"""ONNX Runtime (CPU execution provider).

Options (all optional):
    threads         intra-op threads.
    qdq_as_written  graph optimisations off, so QuantizeLinear / DequantizeLinear compute as
                    written (a float simulation) rather than through the CPU's integer kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime


class OrtModel(LoadedModel):
    """One ONNX file in an ONNX Runtime CPU session (options: see the module doc)."""

    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if "threads" in options:
            so.intra_op_num_threads = int(options["threads"])
        if options.get("qdq_as_written"):
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
        return OrtModel(path, options)
