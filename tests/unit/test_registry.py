from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgevl.errors import UnknownNameError
from edgevl.registry import EXPORTERS, MODELS, RUNTIMES, Registry

REPO = Path(__file__).resolve().parents[2]


def test_duplicate_name_is_an_error():
    registry: Registry = Registry("thing", {})
    registry.register("a")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())


def test_unknown_name_lists_the_valid_ones():
    valid = ", ".join(sorted(EXPORTERS.names()))
    assert {"coreml", "executorch", "onnx", "openvino", "tensorrt"} <= set(EXPORTERS.names())
    with pytest.raises(UnknownNameError, match=re.escape(f"unknown target 'tflite'; choose one of: {valid}")):
        EXPORTERS.get("tflite")


def test_every_lazy_entry_registers_itself():
    for registry in (MODELS, EXPORTERS, RUNTIMES):
        for name in registry.names():
            assert registry.get(name) is not None


def test_all_backends_tested():
    """optimum's test_all_models_tested: a registered target without a backend test fails."""
    for name in EXPORTERS.names():
        assert (REPO / "tests" / "backends" / f"test_{name}.py").is_file(), f"target {name!r} has no backend test"
    for name in EXPORTERS.names():
        runtime = EXPORTERS.get(name).runtime
        assert runtime in RUNTIMES.names(), f"target {name!r} names unknown runtime {runtime!r}"
