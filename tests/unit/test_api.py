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


# quantize_ on the other targets: applied as documented, or refused with an InputError (exit 2)
# naming the target and what it does instead (edgevl/compress/plan.py).
PLAN_TEXTS = ["a photo of a cat.", "a red car on a street", "two dogs on a beach", "a bowl of soup",
              "a city skyline at night", "a man riding a horse", "a boat on a lake"]


def test_openvino_applies_a_w8a8_plan_with_its_calibration_data(tiny_clip_dir, tmp_path):
    """The plan's calibration texts (5 of the 7 given: calib_limit), its cpu_isa ("vnni": full
    8-bit weights, where the command-line default would give 7), its exclude and its type all
    reach the IR and its manifest entry; --calib would still win over quantize_'s data."""
    pytest.importorskip("nncf")
    import openvino as ov

    from edgevl.compress.quantize import W8A8Config
    from edgevl.exporters.base import ExportOptions
    from edgevl.exporters.openvino import OpenVinoExporter, weight_levels

    spec = edgevl.load(str(tiny_clip_dir))
    config = W8A8Config(calib_limit=5, max_drop=0.5, cpu_isa="vnni", exclude=("layers.1.mlp.fc2",))
    edgevl.quantize_(spec, config, calib=PLAN_TEXTS, components=["text"])
    art = OpenVinoExporter().export(spec, "text", tmp_path, ExportOptions(precision="int8"))
    q = art.passes["quantization"]
    assert q["config"]["type"] == "W8A8Config" and q["preset"] == "mixed" and q["smooth_quant_alpha"] == 0.7
    assert q["calibration"] == {"source": "texts given in code", "images": 0, "texts": 7, "seed": 0}
    assert q["calibration_samples"] == 5 and q["cpu_isa"] == "vnni"
    assert [n.split("/")[0] for n in q["excluded_layers"]] == ["__module.text_model.encoder.layers.1.mlp.fc2"]
    model = ov.Core().read_model(str(art.path))
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 0 and not q["whole_tower_float"]
    levels = weight_levels(model)
    assert max(levels.values()) == 127 and not set(levels) & set(q["excluded_layers"])


@pytest.mark.parametrize("config,precision,named", [
    ("DynamicW8A8Config()", "int8", "W8A8Config, ConvW8A8Config"),
    ("W8A8Config(observer='entropy')", "int8", "observer='entropy'"),
    ("WeightOnlyConfig(bits=4)", "int4w", "compress_weights"),
])
def test_openvino_refuses_what_it_cannot_apply(config, precision, named, tiny_clip_dir, tmp_path):
    pytest.importorskip("nncf")
    from edgevl.compress import quantize as Q
    from edgevl.exporters.base import ExportOptions
    from edgevl.exporters.openvino import OpenVinoExporter

    spec = edgevl.quantize_(edgevl.load(str(tiny_clip_dir)), eval(config, vars(Q)), components=["text"])
    with pytest.raises(InputError, match="target openvino") as err:
        OpenVinoExporter().export(spec, "text", tmp_path, ExportOptions(precision=precision))
    assert named in str(err.value) and err.value.exit_code == 2 and "\n" not in str(err.value)


def test_coreml_refuses_a_weight_only_plan(tiny_clip_dir, tmp_path):
    pytest.importorskip("coremltools")
    from edgevl.exporters.base import ExportOptions
    from edgevl.exporters.coreml import CoreMLExporter

    spec = edgevl.quantize_(edgevl.load(str(tiny_clip_dir)), WeightOnlyConfig(bits=8), components=["image"])
    with pytest.raises(InputError, match="target coreml does not apply quantize_.WeightOnlyConfig.") as err:
        CoreMLExporter().export(spec, "image", tmp_path, ExportOptions(precision="int8w"))
    assert "--precision int8w" in str(err.value) and "palettize4" in str(err.value)


def test_tensorrt_refuses_an_int8_plan_and_nothing_is_written(tiny_clip_dir, tmp_path):
    from edgevl.compress.quantize import DynamicW8A8Config

    spec = edgevl.quantize_(edgevl.load(str(tiny_clip_dir)), DynamicW8A8Config(), calib=PLAN_TEXTS)
    with pytest.raises(InputError, match="target tensorrt does not apply quantize_.DynamicW8A8Config.") as err:
        edgevl.export(spec, tmp_path / "out", targets=["tensorrt"], precisions=["int8"], components=["text"])
    assert "--calib" in str(err.value) and err.value.exit_code == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_calibration_is_resolved_in_one_order(tmp_path):
    """--calib (or export(calibration=)) first, then quantize_'s data, then the bundled split."""
    from edgevl.compress.config import W8A8Config
    from edgevl.compress.plan import Plan, resolve_calibration

    given = tmp_path / "calib.jsonl"
    given.write_text(json.dumps({"text": "a small green frog"}) + "\n")
    plan = Plan(W8A8Config(), ["a plan caption"])
    assert resolve_calibration(str(given), plan).texts == ["a small green frog"]
    assert resolve_calibration(None, plan).texts == ["a plan caption"]
    assert resolve_calibration(None, Plan(W8A8Config())).source == "bundled real samples (calibration split)"


def test_targets_line_names_the_verification_this_machine_runs(monkeypatch):
    pytest.importorskip("coremltools")
    import platform

    from edgevl.exporters.coreml import CoreMLExporter

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert "Core ML itself" in CoreMLExporter().verification
    assert "interpreter" not in CoreMLExporter().verification
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert "reference interpreter here" in CoreMLExporter().verification


def test_manifest_records_the_calibration_data_quantize_was_given(tiny_clip_dir):
    """Without --calib, a tower whose quantize_ plan carries data calibrates on it: the
    manifest's data_splits say so per tower (the bundled split stays recorded for the rest)."""
    from edgevl.calibration.samples import split_record
    from edgevl.compress.quantize import W8A8Config
    from edgevl.pipeline import data_splits

    spec = edgevl.load(str(tiny_clip_dir))
    edgevl.quantize_(spec, W8A8Config(), calib=PLAN_TEXTS, components=["text"])
    splits = data_splits(None, spec, ("image", "text"))
    assert splits["calibration"] == split_record("calibration")
    planned = splits["quantize_calibration"]
    assert set(planned) == {"text"} and planned["text"]["precision"] == "int8"
    assert (planned["text"]["source"], planned["text"]["texts"]) == ("texts given in code", len(PLAN_TEXTS))
    assert "quantize_calibration" not in data_splits(_given(), spec, ("text",))  # --calib wins


def _given():
    """The same texts as --calib gives them."""
    from edgevl.calibration.datasets import load_calibration

    return load_calibration(PLAN_TEXTS)


def test_max_drop_is_offered_only_where_agreement_was_what_failed():
    """--max-drop loosens the agreement floor, never the cosine floor: the refusal of a tower the
    gate kept float offers it only when a compressed candidate met the cosine floor."""
    from edgevl.manifest import Compression

    def gate(*tries: tuple[int, float, bool]) -> dict:
        return {"ranked_layers": 10, "cosine_min": 0.995, "max_drop": 0.01,
                "tried": [{"float_layers": f, "cosine_min": c, "top1_agreement": 0.9, "passed": p} for f, c, p in tries]}

    cosine_short = Compression.from_gate(0, 10, gate((0, 0.93, False), (10, 1.0, True), (5, 0.99, False)), "int8")
    agreement_short = Compression.from_gate(0, 10, gate((0, 0.93, False), (10, 1.0, True), (5, 0.997, False)), "int8")
    unmeasured = Compression.from_gate(0, 10, None, "int8")
    assert (cosine_short.max_drop_helps, agreement_short.max_drop_helps, unmeasured.max_drop_helps) == (False, True, None)
    assert "best int8 candidate 5 of 10 ranked layers float: min cosine 0.9900" in cosine_short.best
