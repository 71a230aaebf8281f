"""Quantisation handlers, found by the config's type (torchao's `quantize_` habit).

Each scheme module registers its handler where it defines it; `handler_for` imports the scheme
modules on first use, so importing a config never pulls in ONNX Runtime.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgevl.compress.config import QuantConfig
from edgevl.compress.gate_data import GateData
from edgevl.errors import InputError

# The modules that register handlers, imported on the first lookup.
SCHEME_MODULES = (
    "edgevl.compress.w8a8_static",
    "edgevl.compress.w8a8_dynamic",
    "edgevl.compress.weight_only",
    "edgevl.compress.conv_int8",
)

Handler = Callable[["QuantContext", QuantConfig], tuple["object", dict]]
_HANDLERS: dict[type, Handler] = {}


@dataclass
class QuantContext:
    """What a handler gets: the float graph, calibration feeds, gate data and tolerance, and the
    ONNX flavour the result must hold: "standard" (ai.onnx ops only) or "ort" (ONNX Runtime's
    com.microsoft ops allowed)."""

    model: "object"  # prepared float graph
    feeds: list[dict[str, np.ndarray]]
    gate: Optional[GateData]
    cosine_min: float
    component: str
    calibration: dict = field(default_factory=dict)
    progress: Optional[Callable[[str], None]] = None
    flavor: str = "standard"
    # How the gate runs a candidate graph: model -> (feeds -> output). None: ONNX Runtime. A
    # target that ships the ONNX graph through another runtime (OpenVINO reads the Q/DQ graph)
    # passes that runtime, so the gate judges what the artifact will execute.
    runner: Optional[Callable[["object"], Callable[[dict], np.ndarray]]] = None


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        if config_type in _HANDLERS:
            raise ValueError(f"a quantisation handler for {config_type.__name__} is already registered")
        _HANDLERS[config_type] = fn
        return fn

    return deco


def handler_for(config: QuantConfig) -> Handler:
    for module in SCHEME_MODULES:
        importlib.import_module(module)
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        names = ", ".join(t.__name__ for t in _HANDLERS)
        raise InputError(f"no quantisation handler for {type(config).__name__}; use one of: {names}") from None
