"""Engine building with TensorRT's Python API, where `tensorrt` is importable (never here: it
cannot be installed on the machines edgevl is developed on, so this code follows NVIDIA's
documentation and is exercised only by the tests that skip without TensorRT).

The network is created strongly typed (precision from the ONNX file's types and Q/DQ, as
TensorRT 11 requires and TensorRT 10's `--stronglyTyped` does), with one optimisation profile
from `exporters/trtexec.profiles`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

NO_TENSORRT = ("TensorRT with a CUDA GPU is not available on this machine: no engine was built "
               "(the engine-ready ONNX and trtexec lines were written)")


def tensorrt_available() -> bool:
    """TensorRT imports and a CUDA device is present (an engine needs both)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def build_serialized(onnx_path: Path, profile: dict[str, dict[str, list[int]]], plugin: bool = False) -> bytes:
    """A serialised engine for `onnx_path` (needs TensorRT and a GPU)."""
    import tensorrt as trt

    from edgevl.errors import ExportError

    if plugin:
        from edgevl.exporters.tensorrt_plugin import register_plugins

        register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(opt)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name}; see its log above")
    return bytes(engine)


def build_engine(onnx_path: Path, engine_path: Path, profile: dict[str, dict[str, list[int]]],
                 plugin: bool = False) -> Path:
    """Build and write `engine_path` next to the ONNX file (written whole, then renamed)."""
    data = build_serialized(onnx_path, profile, plugin)
    tmp = engine_path.with_name(engine_path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(engine_path)
    return engine_path
