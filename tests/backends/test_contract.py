"""One contract every registered exporter meets, parametrised over the registry, so a target is
tested the moment it is registered (optimum's habit): each tower of a tiny real CLIP and SigLIP
checkpoint exports with every attention block fused, verified by the target's own runtime, with
the manifest's fields, sizes and sha256 right; an unsupported precision is refused in one line.
A failing case names the target in its test id."""

from __future__ import annotations

import hashlib
import json
import platform

import pytest

from edgevl.cli import main
from edgevl.exporters.tensorrt_engine import tensorrt_available
from edgevl.manifest import sha256_of
from edgevl.models.hf_clip import load_hf_clip
from edgevl.models.spec import LoadOptions
from edgevl.ops.attention import attention_blocks
from edgevl.registry import EXPORTERS

TARGETS = [t for t in EXPORTERS.names() if not EXPORTERS.get(t)().missing_modules()]
# Off macOS, Core ML artifacts are run by edgevl's reference interpreter, and say so.
# TensorRT's engine-ready ONNX is run by ONNX Runtime where TensorRT and a GPU are absent.
VERIFIED_BY = {"coreml": "runtime" if platform.system() == "Darwin" else "reference-interpreter",
               "tensorrt": "runtime" if tensorrt_available() else "onnxruntime"}
ENTRY_FIELDS = {"target", "precision", "component", "path", "sha256", "bytes", "fused_attention",
                "unfused_attention", "verified", "parity", "files", "passes"}


# SigLIP's cases run in `make test` only (slow): `make test-fast` keeps one family per target.
@pytest.mark.parametrize("kind", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
@pytest.mark.parametrize("target", TARGETS)
def test_exporter_contract(target, kind, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    out = tmp_path / "out"
    code = main(["export", str(ckpt), "--target", target, "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"edgevl_version", "model", "artifacts", "data_splits", "parity_set"} <= set(manifest)
    spec = load_hf_clip(str(ckpt), LoadOptions())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for art in manifest["artifacts"]:
        assert ENTRY_FIELDS <= set(art) and art["target"] == target and art["precision"] == "fp32"
        blocks = len(attention_blocks(spec.tower(art["component"]).module))
        assert blocks > 0 and (art["fused_attention"], art["unfused_attention"]) == (blocks, 0)
        assert art["passes"]["attention_fused"] == blocks
        path = out / art["path"]
        if path.is_dir():  # a Core ML package: the manifest hashes its files (sha256_of's doc)
            assert art["sha256"] == sha256_of(path) and len(art["sha256"]) == 64
            assert {str(p.relative_to(out)) for p in path.rglob("*") if p.is_file()} <= set(art["files"])
        else:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"]
        assert art["bytes"] == sum((out / f).stat().st_size for f in art["files"])
        assert art["verified"] == VERIFIED_BY.get(target, "runtime")
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= 0.9999 and not parity["failures"]
        assert parity["top1_agreement"] == 1.0 and parity["top1_agreement_strict"] is not None


@pytest.mark.parametrize("target", TARGETS)
def test_unsupported_precision_is_refused_naming_the_target(target, tiny_clip_dir, tmp_path, capsys):
    capsys.readouterr()
    code = main(["export", str(tiny_clip_dir), "--target", target, "--precision", "fp8", "--out",
                 str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "'fp8'" in err and target in err, err
    assert not (tmp_path / "out").exists()


def test_every_registered_target_is_in_the_contract():
    """An SDK missing here would silently drop its target from the contract: say so instead."""
    missing = {t: EXPORTERS.get(t)().missing_modules() for t in EXPORTERS.names() if t not in TARGETS}
    assert not missing, f"targets not covered on this machine (SDK not installed): {missing}"
