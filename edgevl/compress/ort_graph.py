"""ONNX graph helpers every quantisation scheme shares: one ONNX Runtime session factory, a
quiet ORT quantizer, and the map from ONNX node to the PyTorch module it came from."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator, Optional

def session(model: "object", threads: int = 2) -> "object":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet_ort_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice ("consider pre-processing") on the root logger at
    WARNING for every call; the CLI's output stays edgevl's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def layer_paths(model: "object") -> dict[str, str]:
    """ONNX node name -> the PyTorch module path it came from (the dynamo exporter's metadata)."""
    paths = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = [s for s in json.loads(prop.value.replace("'", '"')) if s]
                except ValueError:
                    scopes = []
                if scopes:
                    # Each scope is a full module path; the last one is the aten op itself.
                    paths[node.name] = scopes[-2] if len(scopes) > 1 else scopes[-1]
    return paths


def matches(name: str, path: str, patterns: tuple[str, ...]) -> Optional[str]:
    """The first pattern that names node `name` exactly or is a substring of its module `path`."""
    for p in patterns:
        if p and (p == name or p in path):
            return p
    return None
