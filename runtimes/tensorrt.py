"""TensorRT: where `tensorrt` imports and a CUDA GPU is present, the engine (a `.engine` file,
or one built from the engine-ready ONNX with the profile in the options) runs on the GPU
(`verified: "runtime"`); elsewhere ONNX Runtime's CPU provider runs the engine-ready ONNX
(`verified: "onnxruntime"`), so its numerics are still checked, never labelled as TensorRT's.

Options (all optional):
    engine          file name of a built engine next to the ONNX file (used where TensorRT runs).
    profile         input -> {"min", "opt", "max"} shapes, for building an engine from ONNX.
    qdq_as_written  ONNX Runtime runs the graph with optimisations off, so Q/DQ compute as
                    written (the float simulation of TensorRT's int8) rather than through the
                    CPU's integer kernels.
    threads         ONNX Runtime intra-op threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevl.errors import InputError
from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime
from edgevl.runtimes.onnxruntime import OrtModel


class _OrtFallback(OrtModel):
    """The engine-ready ONNX in ONNX Runtime, labelled as what ran it."""

    verified = "onnxruntime"


class TensorRTEngine(LoadedModel):
    """A deserialised engine run on the GPU through torch CUDA tensors (TensorRT 10 API)."""

    verified = "runtime"

    def __init__(self, engine_bytes: bytes) -> None:
        import tensorrt as trt
        import torch

        from edgevl.runtimes.tensorrt_plugin import register_plugins

        register_plugins()  # an engine of the plugin flavour needs them in this process
        self._torch = torch
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise InputError("TensorRT could not deserialise the engine; rebuild it with this TensorRT version")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: trt.nptype(self._engine.get_tensor_dtype(n)) for n in names}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])).cuda()
            keep.append(t)
            self._context.set_input_shape(name, tuple(t.shape))
            self._context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            t = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, self._dtypes[name])).dtype, device="cuda")
            outs[name] = t
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed; see its log")
        stream.synchronize()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}


@register_runtime("tensorrt")
class TensorRTRuntime(Runtime):
    name = "tensorrt"
    requires = ("onnxruntime",)
    extra = "tensorrt"

    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel:
        from edgevl.runtimes.tensorrt_build import build_serialized, tensorrt_available

        if path.suffix == ".engine":
            if not tensorrt_available():
                raise InputError(f"{path.name} is a TensorRT engine; running it needs TensorRT and a CUDA GPU")
            return TensorRTEngine(path.read_bytes())
        if path.suffix != ".onnx":
            raise InputError(f"{path} is neither an engine-ready .onnx file nor a .engine; pass one of them")
        if tensorrt_available():
            engine = path.with_name(str(options.get("engine", ""))) if options.get("engine") else None
            if engine is not None and engine.is_file():
                return TensorRTEngine(engine.read_bytes())
            if options.get("profile"):
                return TensorRTEngine(build_serialized(path, options["profile"]))
        return _OrtFallback(path, options)
