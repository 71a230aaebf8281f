"""OpenVINO target on tiny random CLIP / SigLIP checkpoints through the real CLI path (real
transformers model code, real OpenVINO CPU plugin, real photos for parity), plus the exporter's
contract: fused attention counts, static shapes, compressed precisions, a missing SDK."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from edgevl.calibration.samples import VIEWS_PER_PHOTO, bundled_samples  # noqa: E402
from edgevl.cli import main  # noqa: E402
from edgevl.errors import MissingBackendError, UnfusedAttentionError  # noqa: E402
from edgevl.exporters.base import ExportOptions  # noqa: E402
from edgevl.exporters.openvino import SDPA_OP, OpenVinoExporter  # noqa: E402
from edgevl.models.hf_clip import load_hf_clip  # noqa: E402
from edgevl.models.spec import LoadOptions, random_token_feeds  # noqa: E402
from edgevl.ops.attention import attention_blocks  # noqa: E402
from edgevl.runtimes.openvino import OpenVinoRuntime  # noqa: E402


def _ir_ops(xml: Path) -> dict[str, int]:
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(str(xml)).get_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_checkpoint_exports_fused_and_verified(kind, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    out = tmp_path / "out"
    code = main(["export", str(ckpt), "--target", "openvino", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    spec = load_hf_clip(str(ckpt), LoadOptions())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for art in manifest["artifacts"]:
        blocks = len(attention_blocks(spec.tower(art["component"]).module))
        # CLIP: 2 blocks per tower; SigLIP's vision tower adds its attention-pooling head.
        assert blocks == (3 if (kind, art["component"]) == ("siglip", "image") else 2)
        assert art["fused_attention"] == blocks and art["unfused_attention"] == 0
        xml = out / art["path"]
        assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
        ops = _ir_ops(xml)
        assert ops.get(SDPA_OP, 0) == blocks
        assert ops.get("Softmax", 0) == 0, "a decomposed attention would leave a Softmax behind"
        assert art["verified"] == "runtime"
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= 0.9999 and parity["top1_agreement"] == 1.0
        bench = (xml.parent / f"{xml.stem}.benchmark_app.txt").read_text()
        assert bench.startswith(f"benchmark_app -m {xml.name} -d CPU -shape ")
        assert "-hint latency" in bench and "-infer_precision f32" in bench


def test_dynamic_batch_and_sequence_and_int32_ids(tiny_clip_dir, tmp_path):
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    art = OpenVinoExporter().export(spec, "text", tmp_path, ExportOptions())
    assert art.runtime_options == {"INFERENCE_PRECISION_HINT": "f32"}
    model = OpenVinoRuntime().load(art.path, {**art.runtime_options, "threads": 1})
    assert model.input_names == ["input_ids", "attention_mask"] and model.output_names == ["text_embeds"]
    for batch, seq in [(1, 5), (3, 16)]:
        feeds = random_token_feeds(batch, seq, 99, spec.special_token_ids, ("input_ids", "attention_mask"), seed=batch)
        want = spec.text.forward_numpy(feeds)
        np.testing.assert_allclose(model.run(feeds)["text_embeds"], want, atol=1e-5)
        # Apps often tokenise to int32: the runtime casts to the IR's int64.
        as_int32 = {k: v.astype(np.int32) for k, v in feeds.items()}
        np.testing.assert_allclose(model.run(as_int32)["text_embeds"], want, atol=1e-5)


def test_static_shapes_give_static_ir_inputs(tiny_siglip_dir, tmp_path):
    import openvino as ov

    spec = load_hf_clip(str(tiny_siglip_dir), LoadOptions())
    options = ExportOptions(static_shapes={"batch": 1, "seq": 16})
    exporter = OpenVinoExporter()
    text = exporter.export(spec, "text", tmp_path, options)
    image = exporter.export(spec, "image", tmp_path, options)  # "seq" does not apply: ignored
    shapes = {
        p.get_any_name(): p.get_partial_shape()
        for art in (text, image)
        for p in ov.Core().read_model(str(art.path)).inputs
    }
    assert all(s.is_static for s in shapes.values())
    assert [list(s.to_shape()) for s in shapes.values()] == [[1, 16], [1, 3, 32, 32]]
    assert (text.fused_attention, image.fused_attention) == (2, 3)
    assert "input_ids[1,16]" in (tmp_path / "text_encoder.benchmark_app.txt").read_text()
    feeds = random_token_feeds(1, 16, 99, spec.special_token_ids, ("input_ids",))
    got = OpenVinoRuntime().load(text.path, text.runtime_options).run(feeds)["text_embeds"]
    np.testing.assert_allclose(got, spec.text.forward_numpy(feeds), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8", "int8w", "int4w"])
def test_precisions_keep_attention_fused(precision, tiny_clip_dir, tmp_path):
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    art = OpenVinoExporter().export(spec, "image", tmp_path, ExportOptions(precision=precision))
    assert art.path.name == f"image_encoder.{precision}.xml"
    assert [p.name for p in art.files] == [
        art.path.name, f"image_encoder.{precision}.bin", f"image_encoder.{precision}.benchmark_app.txt"
    ]
    ops = _ir_ops(art.path)
    assert ops.get(SDPA_OP, 0) == art.fused_attention == 2
    if precision == "int8":
        assert ops.get("FakeQuantize", 0) > 0 and art.passes["quantization"]["model_type"] == "transformer"
        # Every view of the bundled calibration split's photos, and nothing from gate or parity.
        calibration_views = len(bundled_samples("calibration")) * VIEWS_PER_PHOTO
        assert art.passes["quantization"]["calibration_samples"] == calibration_views
    if precision in ("int8w", "int4w"):
        assert ops.get("FakeQuantize", 0) == 0  # weight-only: activations stay float
    from edgevl.paritydata import build_parity_data

    feeds = build_parity_data(spec).image_feeds
    got = OpenVinoRuntime().load(art.path, art.runtime_options).run(feeds)["image_embeds"]
    assert _cos(got, spec.image.forward_numpy(feeds)).min() > 0.9


def _eager_block(spec):
    attn = spec.image.module.vision_model.encoder.layers[1].self_attn
    attn.config = copy.copy(attn.config)
    attn.config._attn_implementation = "eager"  # matmul + softmax: the realistic miss


def test_eager_block_fused_by_openvino_is_counted_and_noted(tiny_clip_dir, tmp_path):
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    _eager_block(spec)
    art = OpenVinoExporter().export(spec, "image", tmp_path, ExportOptions())
    # OpenVINO's frontend fuses the decomposed pattern too: the IR has one SDPA per block.
    assert (art.fused_attention, art.unfused_attention) == (2, 0)
    assert _ir_ops(art.path).get(SDPA_OP, 0) == 2
    assert any("vision_model.encoder.layers.1.self_attn" in n for n in art.notes)


def test_unfused_block_fails_with_its_name(tiny_clip_dir, tmp_path, monkeypatch):
    import edgevl.exporters.openvino as ovx

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    _eager_block(spec)
    # Simulate a frontend that leaves the eager block decomposed.
    monkeypatch.setattr(ovx, "count_sdpa", lambda model: 1)
    exporter = OpenVinoExporter()
    with pytest.raises(UnfusedAttentionError, match=r"vision_model\.encoder\.layers\.1\.self_attn"):
        exporter.export(spec, "image", tmp_path, ExportOptions())
    assert not list(tmp_path.glob("*.xml"))
    art = exporter.export(spec, "image", tmp_path, ExportOptions(allow_unfused=True))
    assert (art.fused_attention, art.unfused_attention) == (1, 1)
    assert art.unfused_blocks == ["vision_model.encoder.layers.1.self_attn"]


@pytest.mark.parametrize("module,precision", [("openvino", "fp32"), ("nncf", "int8")])
def test_missing_sdk_is_one_line_naming_the_extra(module, precision, tiny_clip_dir, tmp_path, monkeypatch):
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(MissingBackendError) as err:
        OpenVinoExporter().export(spec, "text", tmp_path, ExportOptions(precision=precision))
    message = str(err.value)
    assert "\n" not in message and module in message and "pip install 'edgevl[openvino]'" in message
    assert not list(tmp_path.glob("*.xml"))


@pytest.mark.slow
def test_default_model_text_tower_fp32_and_int8(tmp_path, capsys):
    """The embedded default model's MiniLM tower (real weights): 6/6 SDPA, fp32 exact, int8 within
    cosine 0.99 of the reference on real captions (agreement figures: benchmarks/openvino_int8)."""
    out = tmp_path / "out"
    code = main(["export", "--target", "openvino", "--precision", "fp32,int8", "--components", "text",
                 "--out", str(out), "-q", "--keep-failed"])
    assert code in (0, 3), capsys.readouterr().err
    arts = {a["precision"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    for art in arts.values():
        assert (art["fused_attention"], art["unfused_attention"]) == (6, 0)
        assert _ir_ops(out / art["path"]).get(SDPA_OP, 0) == 6
    assert arts["fp32"]["parity"]["passed"] and arts["fp32"]["parity"]["cosine_min"] >= 0.9999
    assert arts["int8"]["parity"]["cosine_min"] >= 0.99


@pytest.mark.slow
def test_default_model_image_int8_keeps_the_early_convs_float(tmp_path):
    """The CNN tower's int8 IR (real EfficientNet-Lite0 weights, real photos): exactly the first
    EARLY_FLOAT_CONVS convolutions stay float (the measured-sensitive ones), the rest carry
    FakeQuantize, and min cosine holds at 0.99. Agreement on this tower is the open part of
    issue 3 (see benchmarks/results/openvino_int8.md), so it is reported, not asserted."""
    import openvino as ov

    from edgevl.exporters.openvino import EARLY_FLOAT_CONVS, convert_tower, float_scope
    from edgevl.registry import MODELS

    spec = MODELS.get("effnet-minilm")(None, LoadOptions())
    names, types = float_scope(convert_tower(spec.tower("image")), transformer=False)
    assert len(names) == EARLY_FLOAT_CONVS and types == []
    out = tmp_path / "out"
    code = main(["export", "--target", "openvino", "--precision", "int8", "--components", "image",
                 "--out", str(out), "-q", "--keep-failed"])
    assert code in (0, 3)
    art = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    assert art["passes"]["quantization"]["float_layers"] == EARLY_FLOAT_CONVS
    assert art["parity"]["cosine_min"] >= 0.99
    model = ov.Core().read_model(str(out / art["path"]))
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    # A quantized conv reads its input through a FakeQuantize; the float prefix does not.
    fed_by_fq = [op.input_value(0).get_node().get_type_name() == "FakeQuantize" for op in convs]
    assert not any(fed_by_fq[:EARLY_FLOAT_CONVS]) and sum(fed_by_fq) >= len(convs) - EARLY_FLOAT_CONVS - 1
