"""What the runtime library refuses, each with one line naming the file and the fix: a manifest of
a newer major version, a listed file that is missing, an artifact whose bytes differ from the
manifest's sha256, preprocessing or runtime options it does not implement, a precision the export
lacks; and the CLI's exit code 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgevl_runtime import EdgeModel, NoArtifact, RefusedExport
from edgevl_runtime.cli import main

pytestmark = pytest.mark.slow  # uses the default model's export (shared with the other apps tests)


def _copy(export: Path, dst: Path) -> Path:
    """The export's small files copied, its artifacts symlinked (the library accepts both)."""
    def link_or_copy(src: str, target: str) -> None:
        if src.endswith((".onnx", ".bin", ".data")):
            os.symlink(src, target)
        else:
            shutil.copy2(src, target)

    shutil.copytree(export, dst, copy_function=link_or_copy)
    return dst


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _artifact(folder: Path, target: str, component: str) -> dict:
    data = json.loads((folder / "manifest.json").read_text())
    return next(a for a in data["artifacts"] if (a["target"], a["component"], a["precision"]) == (target, component, "fp32"))


def test_a_symlinked_copy_opens(default_export_fp32, tmp_path):
    model = EdgeModel(_copy(default_export_fp32, tmp_path / "copy"))
    assert model.runtime == "onnxruntime" and model.artifacts["image"].precision == "fp32"


@pytest.mark.parametrize("version,accepted", [("1.0", True), ("1.7", True), ("2.0", False), ("x", False)])
def test_manifest_version(default_export_fp32, tmp_path, version, accepted):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    _edit_manifest(folder, lambda d: d.update(manifest_version=version))
    if accepted:
        EdgeModel(folder)
    else:
        with pytest.raises(RefusedExport, match="manifest_version") as err:
            EdgeModel(folder)
        assert "\n" not in str(err.value)


def test_the_export_writes_a_manifest_version_this_library_reads(default_export_fp32):
    version = json.loads((default_export_fp32 / "manifest.json").read_text())["manifest_version"]
    assert version.split(".")[0] == "1"


def test_missing_file_is_refused(default_export_fp32, tmp_path):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    (folder / _artifact(folder, "openvino", "text")["path"]).with_suffix(".bin").unlink()
    EdgeModel(folder, runtime="onnxruntime")  # the ONNX artifacts are whole
    with pytest.raises(RefusedExport, match=r"text_encoder\.bin is listed in the manifest but missing"):
        EdgeModel(folder, runtime="openvino")


def test_changed_bytes_are_refused(default_export_fp32, tmp_path):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    path = folder / _artifact(folder, "onnx", "image")["path"]
    data = bytearray(path.read_bytes())
    path.unlink()
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RefusedExport, match="sha256 differs from the manifest"):
        EdgeModel(folder)
    EdgeModel(folder, verify_sha256=False)  # the caller may opt out; the bytes still load


def test_a_path_outside_the_folder_is_refused(default_export_fp32, tmp_path):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    _edit_manifest(folder, lambda d: d["artifacts"][0].update(path="../../etc/passwd"))
    with pytest.raises(RefusedExport, match="outside the export folder"):
        EdgeModel(folder)


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p.update(interpolation="box"), "interpolation 'box'"),
    (lambda p: p.update(center_crop_ratio=0.9), "does not implement: center_crop_ratio"),
])
def test_unknown_preprocessing_is_refused(default_export_fp32, tmp_path, edit, needle):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    data = json.loads((folder / "preprocess.json").read_text())
    edit(data)
    (folder / "preprocess.json").write_text(json.dumps(data))
    with pytest.raises(RefusedExport, match=needle):
        EdgeModel(folder)


def test_unknown_runtime_option_is_refused(default_export_fp32, tmp_path):
    folder = _copy(default_export_fp32, tmp_path / "copy")

    def edit(d):
        for a in d["artifacts"]:
            a.setdefault("runtime_options", {})["graph_optimization"] = "none"
    _edit_manifest(folder, edit)
    with pytest.raises(RefusedExport, match="graph_optimization are unknown"):
        EdgeModel(folder, runtime="onnxruntime")


def test_missing_precision_names_what_there_is(default_export_fp32):
    with pytest.raises(NoArtifact, match=r"no image artifact for onnxruntime/int8; it has: onnxruntime/fp32, openvino/fp32"):
        EdgeModel(default_export_fp32, runtime="onnxruntime", precision="int8")
    with pytest.raises(NoArtifact,
                       match=r"no runtime has both towers at int8 .*onnxruntime/fp32/image.*; pick --precision fp32"):
        EdgeModel(default_export_fp32, precision="int8")


def test_cli_bad_input_is_one_line_and_exit_2(default_export_fp32, tmp_path, capsys):
    folder = _copy(default_export_fp32, tmp_path / "copy")
    _edit_manifest(folder, lambda d: d.update(manifest_version="2.1"))
    assert main(["classify", str(folder), "x.png", "--labels", "cat,dog"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgevl-runtime: ") and "upgrade edgevl-runtime" in err and err.count("\n") == 1
    assert main(["classify", str(default_export_fp32), str(tmp_path / "none.png"), "--labels", "cat,dog"]) == 2
    assert "none.png is not a readable image" in capsys.readouterr().err
    assert main(["classify", str(default_export_fp32), str(tmp_path), "--labels", "cat"]) == 2
    assert "two or more distinct" in capsys.readouterr().err
    assert main(["search", str(default_export_fp32), str(tmp_path / "nofolder"), "cat"]) == 2
    assert "is not a folder of images" in capsys.readouterr().err
