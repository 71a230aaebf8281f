"""The TensorRT exporter's engine file: built from the engine-ready ONNX and written next to it,
where TensorRT and a CUDA GPU are present (never on the machines edgevl is developed on: the
tests that build engines skip there with the reason).

The build itself and the availability check live with the runtime (`edgevl.runtimes.tensorrt_build`),
which also builds engines; this module imports them from there and re-exports `tensorrt_available`
for its callers.
"""

from __future__ import annotations

from pathlib import Path

from edgevl.runtimes.tensorrt_build import build_serialized, tensorrt_available

__all__ = ["NO_TENSORRT", "build_engine", "tensorrt_available"]

NO_TENSORRT = ("TensorRT with a CUDA GPU is not available on this machine: no engine was built "
               "(the engine-ready ONNX and trtexec lines were written)")


def build_engine(onnx_path: Path, engine_path: Path, profile: dict[str, dict[str, list[int]]],
                 plugin: bool = False) -> Path:
    """Build and write `engine_path` next to the ONNX file (written whole, then renamed); needs
    TensorRT and a GPU (`tensorrt_available()`)."""
    data = build_serialized(onnx_path, profile, plugin)
    tmp = engine_path.with_name(engine_path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(engine_path)
    return engine_path
