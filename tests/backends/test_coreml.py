"""Core ML target on tiny real CLIP / SigLIP checkpoints (fp32 is in the backend contract): fp16
packages with one `scaled_dot_product_attention` per attention block in each tower's program,
parity on the held-out split through the reference interpreter (never "runtime" off macOS),
the fp16 guard on a planted overflow, and int8 refused with its reason."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools")

from edgevl.calibration.samples import split_record  # noqa: E402
from edgevl.cli import main  # noqa: E402
from edgevl.runtimes.coreml import INTERPRETER_PARITY_IMAGES  # noqa: E402
from edgevl.models.hf_clip import load_hf_clip  # noqa: E402
from edgevl.models.spec import LoadOptions  # noqa: E402
from edgevl.ops.attention import attention_blocks  # noqa: E402

VERIFIED = "runtime" if platform.system() == "Darwin" else "reference-interpreter"


def sdpa_count(package: Path) -> int:
    from edgevl.runtimes.mil_interpreter import load_interpreter

    return load_interpreter(package).op_types().count("scaled_dot_product_attention")


def package_sha256(package: Path) -> str:
    """The manifest's folder hash, computed here independently (see edgevl.manifest.sha256_of)."""
    files = sorted((p for p in package.rglob("*") if p.is_file()), key=lambda p: p.relative_to(package).as_posix())
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(package).as_posix()}\n"
                     for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.mark.parametrize("kind", ["clip", pytest.param("siglip", marks=pytest.mark.slow)])
def test_fp16_packages_fuse_every_block_and_pass_parity(kind, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    out = tmp_path / "out"
    code = main(["export", str(ckpt), "--target", "coreml", "--precision", "fp16", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    spec = load_hf_clip(str(ckpt), LoadOptions())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for art in manifest["artifacts"]:
        package = out / art["path"]
        assert package.suffix == ".mlpackage" and package.is_dir()
        blocks = len(attention_blocks(spec.tower(art["component"]).module))
        assert blocks > 0 and sdpa_count(package) == blocks == art["fused_attention"]
        assert art["unfused_attention"] == 0
        assert art["verified"] == VERIFIED
        assert art["sha256"] == package_sha256(package)
        guard = art["passes"]["fp16_guard"]
        # CLIP's text mask fills with float32's minimum, which overflows fp16: those mask ops
        # may be kept fp32; nothing beyond the overflow rule is needed on these towers.
        assert guard["gate_passed"] and guard["reason"] in ("none needed", "fp16 overflow (|value| > 65504 on the gate split)")
        assert set(guard["overflowing_ops"]) <= set(guard["kept_fp32"])
        if kind == "siglip" or art["component"] == "image":
            assert guard["overflowing_ops"] == [] and guard["kept_fp32_count"] == 0
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= 0.999 and parity["top1_agreement"] == 1.0
        # Off macOS the interpreter judges the image tower on the parity split's first images only,
        # and the manifest says so; the text tower on every text.
        images = split_record("parity")["images"]
        if art["component"] == "image" and VERIFIED == "reference-interpreter" and images > INTERPRETER_PARITY_IMAGES:
            assert parity["n_samples"] == INTERPRETER_PARITY_IMAGES
            assert {k: parity["parity_images"][k] for k in ("judged", "of")} == {"judged": INTERPRETER_PARITY_IMAGES,
                                                                               "of": images}
        else:
            assert "parity_images" not in parity


def test_int8_is_refused_with_the_reason_before_loading(tiny_clip_dir, tmp_path, capsys):
    capsys.readouterr()
    code = main(["export", str(tiny_clip_dir), "--target", "coreml", "--precision", "int8",
                 "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "'int8'" in err and "macOS" in err and "int8w" in err, err
    assert not (tmp_path / "out").exists()


def test_fp16_guard_keeps_a_planted_overflow_fp32(tiny_clip_dir, tmp_path):
    """Layer 0's MLP output of the image tower scaled by 1e6: on the real gate / parity photos its
    values pass fp16's 65504. Without the guard the fp16 program gives inf/NaN and fails parity;
    with it those ops stay fp32 (listed in the report) and parity passes."""
    import torch

    from edgevl.exporters.coreml_convert import convert_tower
    from edgevl.exporters.coreml_fp16 import guarded_fp16
    from edgevl.paritydata import build_parity_data, run_batched, verify_outputs
    from edgevl.runtimes.coreml import CoreMLRuntime
    from edgevl.tolerances import tolerance_for

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    fc2 = next(m for n, m in spec.image.module.named_modules() if n.endswith("layers.0.mlp.fc2"))
    with torch.no_grad():
        fc2.weight.mul_(1e6)
        fc2.bias.mul_(1e6)
    data = build_parity_data(spec)
    assert np.all(np.isfinite(data.reference["image"]))

    def parity(model, name: str):  # noqa: ANN001, ANN202
        path = tmp_path / f"{name}.mlpackage"
        model.save(str(path))
        loaded = CoreMLRuntime().load(path, {"interpreter": True})
        out = run_batched(lambda f: loaded.run(f)["image_embeds"], data.feeds("image"), 16)
        return verify_outputs(data, "image", out, tolerance_for("coreml", "fp16"), name)

    unguarded = parity(convert_tower(spec.image, fp16=True), "unguarded")
    assert not unguarded.passed

    model, report = guarded_fp16(spec, spec.image, None, tmp_path)
    assert report["overflowing_ops"] and report["reason"].startswith("fp16 overflow")
    assert set(report["overflowing_ops"]) <= set(report["kept_fp32"])
    guarded = parity(model, "guarded")
    assert guarded.passed and guarded.cosine_min >= 0.999 and guarded.top1_agreement == 1.0


def test_targets_says_how_core_ml_is_verified(capsys):
    assert main(["targets"]) == 0
    assert "exports; verified by the reference interpreter here, by Core ML on macOS" in capsys.readouterr().out


# Floors on the layers stored compressed (the measured shares are in docs/coreml.md): one layer
# below each, for the gate's search to land elsewhere on another CPU.
COMPRESSED_FLOOR = {
    ("clip", "int8w", "image"): 11, ("clip", "int8w", "text"): 12,
    ("clip", "palettize4", "image"): 11, ("clip", "palettize4", "text"): 3,
    ("siglip", "int8w", "image"): 13, ("siglip", "int8w", "text"): 12,
    ("siglip", "palettize4", "image"): 13, ("siglip", "palettize4", "text"): 7,
}


@pytest.mark.slow  # four tiny towers converted, compressed and tuned: about a minute per family
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_compressed_precisions_hold_compressed_weights_and_are_judged_by_their_rows(
        kind, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    """int8w and palettize4 packages carry the decompression ops the interpreter runs and store at
    least the measured share of their layers compressed (none is a float fallback: that would be
    refused, and nothing written); each is judged by its own tolerance row (palettize4's 16 values
    per table are coarse for these tiny random towers, so its verdict is whatever the row says and
    the exit code follows it; int8w passes)."""
    from edgevl.exporters.coreml_compress import candidates
    from edgevl.runtimes.mil_interpreter import load_interpreter
    from edgevl.tolerances import tolerance_for

    out = tmp_path / "out"
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    spec = load_hf_clip(str(ckpt), LoadOptions())
    code = main(["export", str(ckpt), "--target", "coreml", "--precision", "int8w,palettize4",
                 "--out", str(out), "--keep-failed", "-q"])
    captured = capsys.readouterr()
    assert (out / "manifest.json").is_file(), captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == (0 if all(a["parity"]["passed"] for a in manifest["artifacts"]) else 3), captured.err
    decompress = {"int8w": "constexpr_blockwise_shift_scale", "palettize4": "constexpr_lut_to_dense"}
    for art in manifest["artifacts"]:
        ops = load_interpreter(out / art["path"]).op_types()
        assert ops.count(decompress[art["precision"]]) >= 4 and art["verified"] == VERIFIED
        compression = art["passes"]["compression"]
        # The tower's last Linear (CLIP's projection, SigLIP's head) stays fp16.
        assert compression["kept_fp16_always"][0] == candidates(spec.tower(art["component"]))[1]
        assert compression["gate_passed"] and compression["compressed_layers"] >= 4
        share = art["compression"]
        assert share["compressed_layers"] == compression["compressed_layers"] and not share["float_fallback"]
        assert share["compressed_layers"] >= COMPRESSED_FLOOR[kind, art["precision"], art["component"]]
        assert share["compressible_layers"] == len(candidates(spec.tower(art["component"]))[0])
        row, parity = tolerance_for("coreml", art["precision"], 0.01), art["parity"]
        assert parity["cosine_min"] is not None and art["bytes"] > 0
        assert parity["passed"] == (parity["cosine_min"] >= row.cosine_min
                                    and parity["top1_agreement"] >= row.top1_agreement
                                    and parity["sqnr_db"] >= row.sqnr_db)
        if art["precision"] == "int8w":
            assert parity["passed"]


@pytest.mark.slow  # the default model's two towers, interpreted: a minute or more on 2 cores
def test_default_model_fp16(tmp_path, capsys):
    """What only the real default model shows on Core ML: MiniLM's six blocks convert to fused
    SDPA and EfficientNet-Lite0 converts, in fp16 under the overflow guard, passing parity on
    the held-out split (fp32 packages are covered on the CLIP and SigLIP checkpoints above)."""
    out = tmp_path / "out"
    code = main(["export", "--target", "coreml", "--precision", "fp16", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for art in manifest["artifacts"]:
        assert art["verified"] == VERIFIED
        blocks = 6 if art["component"] == "text" else 0  # MiniLM's six layers; a CNN has none
        assert art["fused_attention"] == sdpa_count(out / art["path"]) == blocks
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= 0.999
        assert parity["top1_agreement"] == 1.0


def test_image_input_folds_the_normalisation_and_matches_the_tensor_input(tiny_clip_dir, tmp_path, capsys):
    """The default image input is a Core ML image (RGB 0-255) whose program normalises it as
    edgevl's preprocessing does: a real photo's pixels through it give the tensor-input
    package's embedding of the preprocessed photo."""
    import coremltools as ct
    from PIL import Image
    from skimage import data as photos

    from edgevl.preprocess import preprocess_image
    from edgevl.runtimes.mil_interpreter import load_interpreter

    packages = {}
    for kind in ("image", "tensor"):
        out = tmp_path / kind
        code = main(["export", str(tiny_clip_dir), "--target", "coreml", "--precision", "fp32", "--components",
                     "image", "--coreml-input", kind, "--out", str(out), "-q"])
        assert code == 0, capsys.readouterr().err
        (art,) = json.loads((out / "manifest.json").read_text())["artifacts"]
        assert art["parity"]["passed"] and art["parity"]["cosine_min"] >= 0.9999
        packages[kind] = out / art["path"]
        described = ct.models.MLModel(str(packages[kind]), skip_model_load=True).get_spec().description.input[0]
        assert described.type.WhichOneof("Type") == ("imageType" if kind == "image" else "multiArrayType")
        assert ("image_input" in art.get("runtime_options", {})) == (kind == "image")
    art_options = json.loads((tmp_path / "image" / "manifest.json").read_text())["artifacts"][0]
    folded = art_options["runtime_options"]["image_input"]
    assert folded["color_layout"] == "RGB" and folded["pixel_range"] == [0, 255]

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    size = spec.preprocess.crop
    photo = Image.fromarray(photos.chelsea()).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(photo, dtype=np.float32).transpose(2, 0, 1)[None]
    normalised = preprocess_image(photo, spec.preprocess)[None]
    from_pixels = load_interpreter(packages["image"]).run({"pixel_values": pixels})["image_embeds"]
    from_tensor = load_interpreter(packages["tensor"]).run({"pixel_values": normalised})["image_embeds"]
    np.testing.assert_allclose(from_pixels, from_tensor, rtol=1e-4, atol=1e-5)
    ops = load_interpreter(packages["image"]).op_types()
    assert ops[:4].count("mul") >= 1 and "add" in ops[:4], ops[:6]
