"""ExecuTorch target on tiny random CLIP / SigLIP checkpoints through the real CLI (real
transformers model code, real ExecuTorch runtime with the XNNPACK delegate, real photos for
parity). fp32 of both towers of both checkpoints is the contract's (test_contract.py); here: int8
(PT2E, whole-tower gate) with runtime parity, the per-block attention lowering, static shapes,
and a malformed .pte / missing runtime failing in one line with exit 2."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'edgevl[executorch]'")

from edgevl.cli import main  # noqa: E402
from edgevl.errors import InputError, MissingBackendError  # noqa: E402
from edgevl.runtimes.executorch import ExecuTorchRuntime  # noqa: E402


def _export(ckpt, out, capsys, *extra: str) -> dict:
    code = main(["export", str(ckpt), "--target", "executorch", "--out", str(out), "-q", *extra])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("kind,component", [("clip", "text"), ("siglip", "image")])
def test_int8_is_quantized_gated_and_verified_by_the_runtime(kind, component, tiny_clip_dir, tiny_siglip_dir,
                                                             tmp_path, capsys):
    """One tower each (the other tower's int8 path is the same code): every linear / conv op
    int8, the gate's whole-tower try recorded and passed, parity by ExecuTorch's runtime."""
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    out = tmp_path / "out"
    manifest = _export(ckpt, out, capsys, "--precision", "int8", "--components", component)
    (art,) = manifest["artifacts"]
    assert (art["precision"], art["component"], art["verified"]) == ("int8", component, "runtime")
    q = art["passes"]["quantization"]
    assert not q["whole_tower_float"] and q["quantized_ops"] == q["weighted_ops"] > 0
    gate = q["gate"]
    assert gate["passed"] and gate["tried"][0]["float_layers"] == 0 and gate["tried"][0]["passed"]
    assert gate["cosine_min"] == 0.995 and gate["tried"][0]["cosine_min"] >= 0.995
    parity = art["parity"]
    assert parity["passed"] and 0.99 <= parity["cosine_min"] < 0.9999  # quantized, not float
    lowering = art["passes"]["lowering"]
    assert lowering["delegated_nodes"] > 0 and art["unfused_attention"] == 0
    assert art["fused_attention"] == art["passes"]["attention_blocks"] == len(lowering["attention"]) >= 2
    assert all(how["lowered_to"] != "portable" for how in lowering["attention"].values())
    if component == "text":  # dynamic batch and seq: only the symbolic reshapes stay portable
        for how in lowering["attention"].values():
            assert how["lowered_to"] == "xnnpack, split by portable reshapes"
            assert set(how["portable_nodes"]) <= {"view_copy", "mul"} and how["portable_nodes"]["view_copy"] > 0
        assert art["passes"]["dynamic"] is True and lowering["sdpa_ops"] == 0


def test_static_shapes_keep_every_attention_block_whole_in_the_delegate(tiny_clip_dir, tmp_path, capsys):
    manifest = _export(tiny_clip_dir, tmp_path / "out", capsys, "--components", "image",
                       "--static-shapes", "batch=2")
    (art,) = manifest["artifacts"]
    lowering = art["passes"]["lowering"]
    assert art["passes"]["dynamic"] is False and art["passes"]["shapes"]["pixel_values"][0] == 2
    assert {how["lowered_to"] for how in lowering["attention"].values()} == {"xnnpack"}
    assert art["parity"]["passed"] and art["parity"]["cosine_min"] >= 0.9999
    # The program takes only its static batch: another size is refused in one line.
    loaded = ExecuTorchRuntime().load(tmp_path / "out" / art["path"], art["runtime_options"])
    pixels = np.zeros((3, 3, 32, 32), np.float32)
    with pytest.raises(InputError) as err:
        loaded.run({"pixel_values": pixels})
    assert "\n" not in str(err.value) and "static-shape" in str(err.value)


def test_malformed_pte_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "image_encoder.pte"
    bad.write_bytes(b"not a program" * 10)
    with pytest.raises(InputError) as err:
        ExecuTorchRuntime().load(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and "not a valid ExecuTorch program" in message
    assert err.value.exit_code == 2


def test_missing_runtime_is_one_line_naming_the_extra(tmp_path, monkeypatch, tiny_clip_dir, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(MissingBackendError) as err:
        ExecuTorchRuntime().load(tmp_path / "x.pte")
    assert "\n" not in str(err.value) and "pip install 'edgevl[executorch]'" in str(err.value)
    assert err.value.exit_code == 2
    capsys.readouterr()
    code = main(["export", str(tiny_clip_dir), "--target", "executorch", "--out", str(tmp_path / "o"), "-q"])
    err_line = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err_line and "edgevl[executorch]" in err_line, err_line
    assert not (tmp_path / "o").exists()
