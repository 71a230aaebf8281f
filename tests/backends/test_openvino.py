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

from edgevl.calibration.samples import split_record  # noqa: E402
from edgevl.cli import main  # noqa: E402
from edgevl.errors import MissingBackendError, UnfusedAttentionError  # noqa: E402
from edgevl.exporters.base import ExportOptions  # noqa: E402
from edgevl.exporters.openvino import SDPA_OP, OpenVinoExporter, weight_levels  # noqa: E402
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


# The largest |int8 weight| with which a u8 x s8 pair sum fits int16: 2 * 255 * 64 = 32640.
SATURATION_SAFE_LEVEL = 64


def _read(xml: Path):
    import openvino as ov

    return ov.Core().read_model(str(xml))


def _check_gate(q: dict, max_drop: float = 0.01) -> None:
    """The accuracy gate's report: every try recorded, the chosen try passing with every try of
    fewer float layers failing, and the float layers it chose named with a reason. The IR is not
    the whole float tower (a gate that needs it fails the export, as the pipeline's tests show)."""
    gate = q["gate"]
    tried = gate["tried"]
    assert gate["passed"] and gate["cosine_min"] == 0.995 and gate["max_drop"] == max_drop
    for t in tried:
        assert {"cosine_min", "sqnr_db", "top1_agreement", "top1_agreement_strict", "seconds"} <= set(t)
    assert tried[0]["float_layers"] == 0
    chosen = [t for t in tried if t["passed"] and t["cosine_min"] == gate["figures"]["cosine_min"]]
    assert chosen and chosen[0]["cosine_min"] >= 0.995
    assert not q["whole_tower_float"]
    k = q["float_layer_count"]
    assert q["float_layer_count"] == len(q["float_layers"]) == chosen[0]["float_layers"]
    assert all(not t["passed"] for t in tried if isinstance(t["float_layers"], int) and t["float_layers"] < k)
    for rank, (name, entry) in enumerate(q["float_layers"].items(), start=1):
        # NNCF's ranks (MatMul towers) or the conv scheme's depth order (convolutional towers).
        assert name and entry["why"].startswith((f"kept float by the accuracy gate (rank {rank}: ",
                                                 f"kept float by the accuracy gate (conv {rank} of "))


def test_int8_for_vnni_uses_full_8_bit_weights(tiny_clip_dir, tmp_path):
    """--cpu-isa vnni switches NNCF's overflow fix off: the weights use all 8 bits (the largest
    weight of each channel maps to level 127), and the manifest says so. (A loose --max-drop: the
    random tiny tower's zero-shot near-ties are not what this test is about.)"""
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    options = ExportOptions(precision="int8", cpu_isa="vnni", max_drop=0.5)
    art = OpenVinoExporter().export(spec, "image", tmp_path, options)
    q = art.passes["quantization"]
    assert (q["cpu_isa"], q["overflow_fix"]) == ("vnni", "disable")
    _check_gate(q, max_drop=0.5)
    assert not q["whole_tower_float"]
    levels = weight_levels(_read(art.path))
    assert levels and max(levels.values()) == 127 == q["weight_levels_max"]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_checkpoint_ir_holds_one_sdpa_per_block(kind, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    """What the contract test (test_contract.py) cannot see from the manifest: the IR's own ops,
    and the benchmark_app command beside each IR."""
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
        q = art.passes["quantization"]
        assert ops.get("FakeQuantize", 0) > 0 and q["model_type"] == "transformer"
        # Every view of the bundled calibration split's photos and stamps, and nothing from gate or parity.
        assert q["calibration_samples"] == split_record("calibration")["images"]
        _check_gate(q)
        # --cpu-isa any (the default): every int8 weight of a dot product within 7 bits.
        assert (q["cpu_isa"], q["overflow_fix"]) == ("any", "enable")
        levels = weight_levels(_read(art.path))
        assert levels and max(levels.values()) <= SATURATION_SAFE_LEVEL == q["weight_levels_max"]
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


# The default text tower's layers left int8 by the gate at the default --max-drop (the measured
# share is in docs/compression-and-gate.md: 38 of 43). The floor is issue 25's 80 % line (35),
# which leaves room for the bisection to land a few steps away; 7-bit weights make the figures the
# same on every x86 CPU, and a tower the gate left with none would be refused (exit 3,
# tests/unit/test_bad_input.py).
OV_INT8_TEXT_FLOOR = 35


@pytest.mark.slow
def _openvino_int8(default_int8_exports, component: str) -> tuple[Path, dict, str]:
    """The run's shared default int8 export of `component` (ONNX and OpenVINO in one command,
    each through its own gate; tests/conftest.py): its folder, OpenVINO artifact and printed
    summary."""
    out, printed = default_int8_exports(component)
    (art,) = [a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["target"] == "openvino"]
    return out, art, printed


def test_default_model_text_tower_fp32_and_int8(default_export_fp32, default_int8_exports):
    """The embedded default model's MiniLM tower (real weights): 6/6 SDPA, fp32 exact (the run's
    shared fp32 export), int8 through the accuracy gate with 7-bit weights and at least the
    measured share of its ranked layers int8, which the summary line shows, parity passing on the
    held-out split's texts."""
    fp32 = [a for a in json.loads((default_export_fp32 / "manifest.json").read_text())["artifacts"]
            if a["target"] == "openvino" and a["component"] == "text"]
    out, int8, printed = _openvino_int8(default_int8_exports, "text")
    arts = {"fp32": fp32[0], "int8": int8}
    for art, root in ((arts["fp32"], default_export_fp32), (arts["int8"], out)):
        assert (art["fused_attention"], art["unfused_attention"]) == (6, 0)
        assert _ir_ops(root / art["path"]).get(SDPA_OP, 0) == 6
        assert art["parity"]["passed"]
    assert arts["fp32"]["parity"]["cosine_min"] >= 0.9999 and "compression" not in arts["fp32"]
    q = arts["int8"]["passes"]["quantization"]
    _check_gate(q)
    # Ranked: the 37 weighted MatMuls and the 6 attention ops (NNCF quantizes their Q and K inputs).
    assert arts["int8"]["parity"]["cosine_min"] >= 0.99 and q["gate"]["ranked_layers"] == 37 + 6
    share = arts["int8"]["compression"]
    assert share == {"compressed_layers": 43 - q["float_layer_count"], "compressible_layers": 43, "float_fallback": False}
    assert share["compressed_layers"] >= OV_INT8_TEXT_FLOOR and q["fake_quantize"] > 0
    assert f"text openvino int8 {share['compressed_layers']}/43 layers  attention fused 6/6" in printed
    levels = weight_levels(_read(out / arts["int8"]["path"]))
    assert set(levels).isdisjoint(q["float_layers"]) and max(levels.values(), default=0) <= SATURATION_SAFE_LEVEL


# The default image tower's convs left int8 by the gate at the default --max-drop: the ONNX
# target's equalized, bias-corrected Q/DQ graph read by OpenVINO (measured share:
# benchmarks/results/openvino_int8.md: 40 of 49), held at issue 25's 80 % line.
OV_INT8_IMAGE_FLOOR = 40


@pytest.mark.slow
def test_default_model_image_int8_keeps_a_float_prefix_chosen_by_the_gate(default_int8_exports):
    """The CNN tower's int8 IR (real EfficientNet-Lite0 weights, real photos): the gate keeps the
    first k convolutions float (depth order), the rest read their input through a FakeQuantize,
    weights within 7 bits, parity passes, and the summary's share is at least the measured floor."""
    out, art, _ = _openvino_int8(default_int8_exports, "image")
    q = art["passes"]["quantization"]
    _check_gate(q)
    assert art["parity"]["passed"] and art["parity"]["cosine_min"] >= 0.99
    model = _read(out / art["path"])
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert q["gate"]["ranked_layers"] == len(convs)
    k = q["float_layer_count"]
    assert art["compression"] == {"compressed_layers": len(convs) - k, "compressible_layers": len(convs),
                                  "float_fallback": False}
    assert len(convs) - k >= OV_INT8_IMAGE_FLOOR
    # OpenVINO names a conv read from ONNX after its ONNX node ("<node>/WithoutBiases").
    assert list(q["float_layers"]) == [op.get_friendly_name().split("/")[0] for op in convs[:k]]
    # A quantized conv reads its input through a FakeQuantize; the float prefix does not.
    fed_by_fq = [op.input_value(0).get_node().get_type_name() == "FakeQuantize" for op in convs]
    assert not any(fed_by_fq[:k]) and sum(fed_by_fq) >= len(convs) - k - 1
    levels = weight_levels(model)
    assert len(levels) >= len(convs) - k - 1 and max(levels.values()) <= SATURATION_SAFE_LEVEL
