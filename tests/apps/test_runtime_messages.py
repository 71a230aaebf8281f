"""When the runtime library cannot run an export, its message names what is actually missing: the
runtime to install (only one that is not installed), the precision to pick, or the targets it
does not run (Core ML, TensorRT) instead of "it has: none".

The manifests are written here in the form `edgevl export` writes (only the fields the choice
reads); the choice fails before any artifact file is opened. A runtime is "not installed" the way
importlib sees a missing package: its name set to None in sys.modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgevl_runtime import EdgeModel, MissingRuntime, NoArtifact


def _export(folder: Path, *entries: tuple[str, str, str]) -> Path:
    """An export folder whose manifest lists (target, precision, component) artifacts."""
    folder.mkdir()
    artifacts = [{"target": t, "precision": p, "component": c, "path": f"{t}/{p}/{c}_encoder", "sha256": "0" * 64,
                  "verified": "runtime", "parity": {"passed": True, "cosine_min": 1.0}} for t, p, c in entries]
    (folder / "manifest.json").write_text(json.dumps({"manifest_version": "1.0", "artifacts": artifacts}))
    return folder


def _hide(monkeypatch, *packages: str) -> None:
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_core_ml_export_says_it_is_for_other_apps(tmp_path):
    folder = _export(tmp_path / "coreml", ("coreml", "fp32", "image"), ("coreml", "fp32", "text"))
    with pytest.raises(NoArtifact) as err:
        EdgeModel(folder)
    message = str(err.value)
    assert message == ("the export has no artifact edgevl-runtime runs; coreml/fp32/image, coreml/fp32/text are "
                       "for other apps (edgevl-runtime runs onnx and openvino artifacts); re-export with --target "
                       "onnx or openvino")
    assert "none" not in message and "install" not in message
    with pytest.raises(NoArtifact, match=r"^the export has no verified image artifact for onnxruntime; it has no "
                       r"image artifact edgevl-runtime runs; coreml/fp32/image is for other apps"):
        EdgeModel(folder, runtime="onnxruntime")


def test_a_missing_runtime_is_named_only_when_it_is_missing(tmp_path, monkeypatch):
    folder = _export(tmp_path / "onnx", ("onnx", "fp32", "image"), ("onnx", "fp32", "text"))
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingRuntime, match=r"^this export runs on onnxruntime, which is not installed; "
                       r"pip install 'edgevl-runtime\[onnx\]'$"):
        EdgeModel(folder)
    both = _export(tmp_path / "both", *[(t, "fp32", c) for t in ("onnx", "openvino") for c in ("image", "text")])
    _hide(monkeypatch, "openvino")
    with pytest.raises(MissingRuntime, match=r"onnxruntime or openvino, which are not installed; "
                       r"pip install 'edgevl-runtime\[onnx\]' or 'edgevl-runtime\[openvino\]'$"):
        EdgeModel(both)


def test_with_onnx_runtime_installed_a_missing_precision_suggests_a_precision_not_an_install(tmp_path):
    folder = _export(tmp_path / "onnx", ("onnx", "fp32", "image"), ("onnx", "fp32", "text"),
                     ("onnx", "int8", "text"), ("coreml", "int8", "image"))
    with pytest.raises(NoArtifact) as err:
        EdgeModel(folder, precision="int8")
    assert str(err.value) == (
        "no runtime has both towers at int8 in this export (it has: onnxruntime/fp32/image, onnxruntime/fp32/text, "
        "onnxruntime/int8/text); coreml/int8/image is for other apps (edgevl-runtime runs onnx and openvino "
        "artifacts); pick --precision fp32")
    half = _export(tmp_path / "half", ("onnx", "fp32", "text"))
    with pytest.raises(NoArtifact, match=r"\(it has: onnxruntime/fp32/text\); re-export with both towers "
                       r"\(--components image,text\)$"):
        EdgeModel(half)


def test_an_executorch_export_says_why_this_torch_free_library_does_not_run_it(tmp_path):
    folder = _export(tmp_path / "et", ("executorch", "fp32", "image"), ("executorch", "fp32", "text"))
    with pytest.raises(NoArtifact) as err:
        EdgeModel(folder)
    message = str(err.value)
    assert "\n" not in message and "executorch/fp32/image, executorch/fp32/text are for other apps" in message
    assert "ExecuTorch's Python runtime needs torch" in message and "apps/android" in message
    assert message.endswith("re-export with --target onnx or openvino")
