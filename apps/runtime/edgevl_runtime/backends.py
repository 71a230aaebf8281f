"""One tower's artifact loaded into its runtime (ONNX Runtime or OpenVINO, imported only when
used), with the manifest's runtime options applied:

    threads                   both: intra-op threads (ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS)
    device                    OpenVINO device name (default "CPU")
    UPPER_CASE keys           OpenVINO properties, e.g. INFERENCE_PRECISION_HINT "f32" for an fp32
                              artifact on a CPU whose OpenVINO default is bf16; ONNX Runtime ignores them

Any other option is refused: the library would otherwise run the artifact differently from how
it was verified."""

from __future__ import annotations

import importlib.util
from typing import Any, Optional

import numpy as np

from edgevl_runtime.errors import MissingRuntime, RefusedExport
from edgevl_runtime.manifest import RUNTIME_EXTRA, Artifact

KNOWN_OPTIONS = {"onnxruntime": {"threads"}, "openvino": {"threads", "device"}}


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(runtime) is not None


class Session:
    """`run(feeds) -> first output` for one artifact. `batch` / `seq` are the sizes of a static
    axis (None when dynamic)."""

    input_names: list[str]
    batch: Optional[int]
    seq: Optional[int]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def check_options(artifact: Artifact, threads: Optional[int]) -> dict[str, Any]:
    options = dict(artifact.runtime_options)
    unknown = sorted(k for k in options if not k.isupper() and k not in KNOWN_OPTIONS[artifact.runtime])
    if unknown:
        raise RefusedExport(
            f"{artifact.path}: runtime option(s) {', '.join(unknown)} are unknown to edgevl-runtime; upgrade it"
        )
    if threads is not None:
        options["threads"] = int(threads)
    return options


def load(artifact: Artifact, threads: Optional[int] = None) -> Session:
    options = check_options(artifact, threads)
    if not installed(artifact.runtime):
        raise MissingRuntime(
            f"{artifact.runtime} is not installed; pip install 'edgevl-runtime[{RUNTIME_EXTRA[artifact.runtime]}]'"
        )
    if artifact.runtime == "onnxruntime":
        return OrtSession(artifact, options)
    return OpenVinoSession(artifact, options)


def _static(dim: Any) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


class OrtSession(Session):
    def __init__(self, artifact: Artifact, options: dict[str, Any]) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if "threads" in options:
            so.intra_op_num_threads = int(options["threads"])
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(artifact.path), so, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.batch = _static(inputs[0].shape[0])
        self.seq = _static(inputs[0].shape[1]) if len(inputs[0].shape) == 2 else None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(None, {n: feeds[n] for n in self.input_names})[0]


class OpenVinoSession(Session):
    def __init__(self, artifact: Artifact, options: dict[str, Any]) -> None:
        import openvino as ov

        device = str(options.pop("device", "CPU"))
        config = {k: v for k, v in options.items() if k.isupper() and v is not None}
        if "threads" in options:
            config["INFERENCE_NUM_THREADS"] = int(options["threads"])
        core = ov.Core()
        model = core.read_model(str(artifact.path))
        self.input_names = [_port_name(p) for p in model.inputs]
        self._types = [p.get_element_type().get_type_name() for p in model.inputs]
        shape = model.inputs[0].get_partial_shape()
        self.batch = shape[0].get_length() if shape[0].is_static else None
        self.seq = shape[1].get_length() if len(shape) == 2 and shape[1].is_static else None
        self._compiled = core.compile_model(model, device, config)
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        dtypes = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32}
        values = [np.ascontiguousarray(feeds[n], dtype=dtypes.get(t)) for n, t in zip(self.input_names, self._types)]
        results = self._request.infer(values)
        return np.array(results[self._compiled.outputs[0]], copy=True)


def _port_name(port: Any) -> str:
    readable = sorted(n for n in port.get_names() if not n.isdigit())
    return (readable or sorted(port.get_names()) or [port.get_node().get_friendly_name()])[0]
