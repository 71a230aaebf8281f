"""TensorRT's availability check and its engine build from an engine-ready ONNX file, shared by the
runtime (which builds an engine when it is given an ONNX file and a profile) and the exporter
(which writes the engine next to the ONNX file, `edgevl.exporters.tensorrt_engine`). It lives on
the runtime's side so that both may import it: exporters import runtimes, never the reverse.

`build_serialized` needs `tensorrt` and a CUDA GPU, neither of which can be installed on the
machines edgevl is developed on: it follows NVIDIA's documentation (TensorRT 10/11 Python API) and
runs only where the engine tests run (they skip without TensorRT). The network is created strongly
typed (precision from the ONNX file's types and Q/DQ, as TensorRT 11 requires and TensorRT 10's
`--stronglyTyped` does), with one optimisation profile (`edgevl.exporters.trtexec.profiles` makes it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgevl.errors import ExportError


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
    """A serialised engine for `onnx_path` with the optimisation profile `profile` (input ->
    {"min", "opt", "max"} shapes); `plugin`: register edgevl's attention plugin first (a graph of
    the plugin flavour). Needs TensorRT and a GPU; ExportError names the file when TensorRT refuses."""
    import tensorrt as trt

    if plugin:
        from edgevl.runtimes.tensorrt_plugin import register_plugins

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
