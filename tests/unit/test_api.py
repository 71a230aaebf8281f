"""The Python API (`edgevl.load`, `edgevl.quantize_`, `edgevl.export`) on a real (tiny, random)
Hugging Face CLIP checkpoint, verified by ONNX Runtime."""

from __future__ import annotations

import json

import pytest

import edgevl
from edgevl.compress.quantize import WeightOnlyConfig
from edgevl.errors import InputError


def test_quantize_plan_is_what_export_applies(tiny_clip_dir, tmp_path):
    spec = edgevl.load(str(tiny_clip_dir))
    config = WeightOnlyConfig(bits=8, group_size=16, embeddings=False)
    assert edgevl.quantize_(spec, config, components=["image"]) is spec
    assert spec.image.quant_config is config and spec.text.quant_config is None
    manifest = edgevl.export(spec, tmp_path / "out", precisions=["int8w"], components=["image"])
    (art,) = manifest.artifacts
    assert art.precision == "int8w" and art.parity["passed"]
    quant = art.extra["passes"]["quantization"]
    assert quant["config"]["type"] == "WeightOnlyConfig" and quant["config"]["group_size"] == 16
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["artifacts"][0]["sha256"] == art.sha256


def test_quantize_refuses_what_is_not_a_config(tiny_clip_dir):
    spec = edgevl.load(str(tiny_clip_dir))
    with pytest.raises(InputError, match="QuantConfig"):
        edgevl.quantize_(spec, {"bits": 8})
