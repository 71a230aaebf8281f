"""OpenVINO (CPU plugin by default).

Options (all optional):
    INFERENCE_PRECISION_HINT  "f32" / "bf16" / "f16"; this CPU's default is bf16, so an fp32
                              artifact is only verified as fp32 with "f32" (exporters say so in
                              the artifact's runtime_options).
    threads                   INFERENCE_NUM_THREADS.
    device                    OpenVINO device name, default "CPU".
    PERFORMANCE_HINT          e.g. "LATENCY" (any other upper-case OpenVINO property passes through).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgevl.errors import InputError
from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime

_NUMPY = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "boolean": np.bool_}


def _name(port: Any) -> str:
    names = port.get_names()
    # The exporter sets exactly one name; for other IRs prefer a readable one.
    readable = sorted(n for n in names if not n.isdigit())
    return (readable or sorted(names) or [port.get_node().get_friendly_name()])[0]


class _OvModel(LoadedModel):
    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        import openvino as ov

        options = dict(options)
        device = str(options.pop("device", "CPU"))
        config: dict[str, Any] = {}
        threads = options.pop("threads", None)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        for key, value in options.items():
            # Upper-case keys are OpenVINO properties; lower-case ones belong to other runtimes.
            if key.isupper() and value is not None:
                config[key] = value
        core = ov.Core()
        model = core.read_model(str(path))
        # Names come from the IR: the CPU plugin's graph transformations can merge other tensor
        # names ("34", "input_ids_1") into the compiled ports, and get_any_name() may pick those.
        self.input_names = [_name(port) for port in model.inputs]
        self.output_names = [_name(port) for port in model.outputs]
        self._dtypes = {
            name: _NUMPY.get(port.get_element_type().get_type_name())
            for name, port in zip(self.input_names, model.inputs)
        }
        self._compiled = core.compile_model(model, device, config)
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(
                f"OpenVINO model needs inputs {', '.join(missing)}; it takes: {', '.join(self.input_names)}"
            )
        inputs = {}
        for name in self.input_names:
            value = np.asarray(feeds[name])
            want = self._dtypes.get(name)
            # Tokenizers often give int32 ids (or Python ints); the IR takes int64 (and vice versa).
            if want is not None and value.dtype != want:
                value = value.astype(want)
            inputs[name] = np.ascontiguousarray(value)
        results = self._request.infer([inputs[name] for name in self.input_names])
        return {
            name: np.array(results[port], copy=True)
            for name, port in zip(self.output_names, self._compiled.outputs)
        }


@register_runtime("openvino")
class OpenVinoRuntime(Runtime):
    name = "openvino"
    requires = ("openvino",)
    extra = "openvino"

    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel:
        if path.suffix != ".xml":
            raise InputError(f"{path} is not an OpenVINO IR; pass the .xml file (its .bin lies beside it)")
        return _OvModel(path, options)
