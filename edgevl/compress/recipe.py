"""QuantRecipe: what calibration decided, as data (tensor -> scale / zero point), saved as JSON
next to the ONNX target's quantized graph (`<tower>_encoder.<precision>.recipe.json`, named by
the manifest's `passes.quantization.recipe`). Within the ONNX quantizer `edgevl.compress.qdq`
turns a recipe into a Q/DQ graph (the static W8A8 gate rebuilds candidates from it); the file
is a record for people and tools. No exporter reads it: OpenVINO (NNCF), Core ML and TensorRT
(`exporters/tensorrt_qdq.py`) calibrate and choose their own scales.

Layout (version 1):

    {
      "version": 1, "component": "text", "precision": "int8", "scheme": {...config...},
      "layers": {                       # one entry per MatMul/Gemm that is quantised
        "<node name>": {
          "weight": "<initializer>", "activation": "<tensor>",
          "act": {"scale", "zero_point", "qmin", "qmax", "range", "observer"},
          "weight_q": {"axis": 1, "bits": 8, "scales": [...], "symmetric": true},
          "smooth": [...] | null        # SmoothQuant per-input-channel factors, if applied
        }
      },
      "float_layers": {"<node name>": "<why it stayed float>"},
      "calibration": {"source": ..., "samples": n, "seed": s}
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

RECIPE_VERSION = 1


@dataclass
class LayerRecipe:
    node: str
    weight: str
    activation: str
    act: dict[str, Any]
    weight_q: dict[str, Any]
    smooth: Optional[list[float]] = None

    def to_json(self) -> dict:
        return {
            "weight": self.weight,
            "activation": self.activation,
            "act": self.act,
            "weight_q": self.weight_q,
            "smooth": self.smooth,
        }

    @classmethod
    def from_json(cls, node: str, data: dict) -> "LayerRecipe":
        return cls(node, data["weight"], data["activation"], data["act"], data["weight_q"], data.get("smooth"))


@dataclass
class QuantRecipe:
    component: str
    precision: str
    scheme: dict[str, Any]
    layers: dict[str, LayerRecipe] = field(default_factory=dict)
    float_layers: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    version: int = RECIPE_VERSION

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "component": self.component,
            "precision": self.precision,
            "scheme": self.scheme,
            "layers": {name: layer.to_json() for name, layer in self.layers.items()},
            "float_layers": dict(self.float_layers),
            "calibration": self.calibration,
        }

    @classmethod
    def from_json(cls, data: dict) -> "QuantRecipe":
        version = data.get("version")
        if version != RECIPE_VERSION:
            raise ValueError(
                f"quantisation recipe version {version!r} is not supported (expected {RECIPE_VERSION}); "
                "re-run calibration to write a new recipe"
            )
        return cls(
            component=data["component"],
            precision=data["precision"],
            scheme=data.get("scheme", {}),
            layers={n: LayerRecipe.from_json(n, d) for n, d in data.get("layers", {}).items()},
            float_layers=dict(data.get("float_layers", {})),
            calibration=data.get("calibration", {}),
        )

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> "QuantRecipe":
        return cls.from_json(json.loads(Path(path).read_text()))

    def without(self, nodes: dict[str, str]) -> "QuantRecipe":
        """A copy where `nodes` (name -> reason) stay float."""
        layers = {n: l for n, l in self.layers.items() if n not in nodes}
        floats = dict(self.float_layers)
        floats.update({n: r for n, r in nodes.items() if n in self.layers})
        return QuantRecipe(self.component, self.precision, dict(self.scheme), layers, floats, dict(self.calibration))
