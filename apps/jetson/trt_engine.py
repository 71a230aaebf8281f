"""A serialised TensorRT engine run on the GPU (TensorRT 10+ Python API; device buffers are torch
CUDA tensors, which JetPack's PyTorch wheels provide). Imported only when an engine runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Engine:
    def __init__(self, path: Path) -> None:
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialise it; rebuild it with this TensorRT (trtexec.sh)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = {n: self._engine.get_tensor_mode(n) for n in names}
        self.inputs = [n for n in names if mode[n] == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if mode[n] != trt.TensorIOMode.INPUT]
        self._np = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch; returns the first output as float32 numpy."""
        torch = self._torch
        held = []
        for name in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=self._np[name])).cuda()
            held.append(t)
            self._context.set_input_shape(name, tuple(t.shape))
            self._context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            dtype = torch.from_numpy(np.zeros(0, self._np[name])).dtype
            t = torch.empty(tuple(self._context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            outs.append(t)
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed; see its log")
        stream.synchronize()
        return outs[0].float().cpu().numpy()
