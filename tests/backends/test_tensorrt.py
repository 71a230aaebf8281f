"""TensorRT target on a tiny real CLIP checkpoint (fp32 is in the backend contract): the CLI's
fp16 + int8 export with the plugin flavour passes parity (run by ONNX Runtime here, and labelled
so), Q/DQ sit where `exporters/tensorrt_qdq.py` documents, every attention block is in the form
TensorRT >= 10.14 imports as IAttention (and a broken rule fails naming the block), the plugin
graph carries what TensorRT's parser needs, the plugin's reference equals edgevl's attention op,
the fp16 guard keeps a planted overflow fp32, and `polygraphy check lint` passes. Engine tests
run only where TensorRT and a GPU are present."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from edgevl.cli import main  # noqa: E402
from edgevl.errors import ExportError  # noqa: E402
from edgevl.exporters.tensorrt_attention import PLUGIN_DOMAIN, attention_rule_breaks, check_iattention  # noqa: E402
from edgevl.exporters.tensorrt_engine import NO_TENSORRT, tensorrt_available  # noqa: E402
from edgevl.exporters.tensorrt_plugin import MASKED, PLUGINS, UNMASKED, attention_reference  # noqa: E402
from edgevl.models.hf_clip import load_hf_clip  # noqa: E402
from edgevl.models.spec import LoadOptions  # noqa: E402
from edgevl.ops.attention import attention_blocks  # noqa: E402

NO_ENGINE = "TensorRT and a CUDA GPU are needed to build and run engines; neither is installable here"
# Ops that must never read a dequantized tensor (TensorRT's fusions and NVIDIA's guidance).
FLOAT_ONLY = {"LayerNormalization", "Gelu", "Erf", "Softmax", "Attention", "Add"}


@pytest.fixture(scope="module")
def trt_export(tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", str(tiny_clip_dir), "--target", "tensorrt", "--precision", "fp16,int8",
                     "--trt-attention", "plugin", "--out", str(out), "-q"])
    assert code == 0
    return out, json.loads((out / "manifest.json").read_text()), stdout.getvalue()


def _graphs(out: Path, manifest: dict, precision: str) -> dict:
    return {a["component"]: (onnx.load(str(out / a["path"])), a) for a in manifest["artifacts"]
            if a["precision"] == precision}


def test_cli_fp16_int8_pass_parity_verified_by_onnxruntime(trt_export, tiny_clip_dir):
    out, manifest, stdout = trt_export
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    assert {(a["precision"], a["component"]) for a in manifest["artifacts"]} == {
        (p, c) for p in ("fp16", "int8") for c in ("image", "text")}
    floors = {"fp16": 0.999, "int8": 0.99}
    for art in manifest["artifacts"]:
        assert art["verified"] == ("runtime" if tensorrt_available() else "onnxruntime")
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= floors[art["precision"]], parity
        blocks = len(attention_blocks(spec.tower(art["component"]).module))
        assert (art["fused_attention"], art["unfused_attention"]) == (blocks, 0)
        profile = art["passes"]["profiles"]
        for shapes in profile.values():
            assert shapes["min"][0] == 1 and shapes["max"][0] >= shapes["opt"][0] >= 1
        script = out / art["passes"]["trtexec"]["script"]
        text = script.read_text()
        assert "--stronglyTyped" in art["passes"]["trtexec"]["tensorrt10"]
        t11 = art["passes"]["trtexec"]["tensorrt11"]
        assert not any(f in t11 for f in ("--stronglyTyped", "--fp16", "--int8", "--best"))
        for flag in ("--timingCacheFile=", "--saveEngine=", "--dumpLayerInfo", "--profilingVerbosity=detailed"):
            assert flag in t11 and flag in text
    if not tensorrt_available():
        assert manifest["tensorrt_engine"] == NO_TENSORRT
        assert stdout.count(NO_TENSORRT) == 1
        assert stdout.count("verified by ONNX Runtime standing in for TensorRT") == len(manifest["artifacts"])
        assert all(a["passes"]["engine"] is None for a in manifest["artifacts"])
        assert not list(out.rglob("*.engine"))
    from manifest_paths import check_manifest_paths

    assert not check_manifest_paths(out), check_manifest_paths(out)


def _producer(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_qdq_placement_follows_the_documented_rules(trt_export):
    out, manifest, _ = trt_export
    for component, (model, art) in _graphs(out, manifest, "int8").items():
        inits = {i.name: i for i in model.graph.initializer}
        made_by = _producer(model)
        floated = set(art["passes"]["quantization"]["float_layers"])
        quantized = 0
        for node in model.graph.node:
            if node.op_type not in ("MatMul", "Conv"):
                continue
            w = made_by.get(node.input[1])
            if node.name in floated:
                assert node.input[1] in inits, f"{node.name} kept float but its weight is not a float constant"
                continue
            if w is None and node.input[1] not in inits:
                continue  # an activation x activation MatMul (none outside attention in these towers)
            assert w is not None and w.op_type == "DequantizeLinear", f"{component}: {node.name} weight not DQ"
            codes = onnx.numpy_helper.to_array(inits[w.input[0]])
            scales = onnx.numpy_helper.to_array(inits[w.input[1]])
            axis = next(a.i for a in w.attribute if a.name == "axis")
            assert codes.dtype == np.int8 and axis == (1 if node.op_type == "MatMul" else 0)
            assert scales.shape == (codes.shape[axis],) and np.abs(codes).max() <= 127
            assert not onnx.numpy_helper.to_array(inits[w.input[2]]).any()
            a = made_by[node.input[0]]
            assert a.op_type == "DequantizeLinear" and made_by[a.input[0]].op_type == "QuantizeLinear"
            zp = onnx.numpy_helper.to_array(inits[a.input[2]])
            assert zp.dtype == np.int8 and zp.ndim == 0 and zp == 0  # per tensor, symmetric
            quantized += 1
        assert quantized == art["passes"]["quantization"]["quantized_layers"] > 0
        for node in model.graph.node:
            if node.op_type in FLOAT_ONLY:
                bad = [i for i in node.input if i in made_by and made_by[i].op_type == "DequantizeLinear"]
                assert not bad, f"{component}: {node.op_type} {node.name} reads a dequantized tensor"
        # Nothing between the projections and the fused op: walk back from Q/K/V to the MatMul.
        for node in (n for n in model.graph.node if n.op_type == "Attention"):
            todo = list(node.input[:3])
            while todo:
                n = made_by.get(todo.pop())
                if n is None or n.op_type in ("MatMul", "Add"):
                    continue
                assert n.op_type not in ("QuantizeLinear", "DequantizeLinear"), f"Q/DQ inside attention {node.name}"
                todo += [i for i in n.input if i]


def test_every_block_is_iattention_ready_and_the_plugin_graph_names_the_plugin(trt_export):
    out, manifest, _ = trt_export
    for art in manifest["artifacts"]:
        model = onnx.load(str(out / art["path"]))
        breaks = attention_rule_breaks(model)
        assert len(breaks) == art["fused_attention"] > 0 and not any(breaks.values()), breaks
        natives = [n for n in model.graph.node if n.op_type == "Attention"]
        plugin = onnx.load(str(out / art["passes"]["plugin"]["file"]))
        assert not [n for n in plugin.graph.node if n.op_type == "Attention"]
        nodes = [n for n in plugin.graph.node if n.domain == PLUGIN_DOMAIN]
        assert len(nodes) == len(natives)
        for native, node in zip(natives, nodes):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            want = MASKED if len(native.input) > 3 and native.input[3] else UNMASKED
            assert node.op_type == want.name and list(node.input) == [i for i in native.input[:4] if i]
            assert attrs["plugin_namespace"].decode() == want.namespace and attrs["plugin_version"].decode() == want.version
            scale = next(a.f for a in native.attribute if a.name == "scale")
            assert attrs["scale"] == pytest.approx(scale)
        assert any(o.domain == PLUGIN_DOMAIN for o in plugin.opset_import)


def test_a_block_breaking_an_iattention_rule_fails_naming_it(trt_export):
    out, manifest, _ = trt_export
    art = next(a for a in manifest["artifacts"] if a["component"] == "text" and a["precision"] == "fp16")
    model = onnx.load(str(out / art["path"]))
    check_iattention(model, "text")
    node = [n for n in model.graph.node if n.op_type == "Attention"][1]
    next(a for a in node.attribute if a.name == "softcap").f = 30.0
    breaks = attention_rule_breaks(model)
    block = next(b for b, why in breaks.items() if why)
    with pytest.raises(ExportError, match="softcap") as err:
        check_iattention(model, "text")
    assert block in str(err.value) and "text tower" in str(err.value)
    assert sum(bool(w) for w in breaks.values()) == 1


@pytest.mark.parametrize("mask", ["none", "additive", "bool"])
def test_plugin_reference_equals_edgevl_attention(mask):
    import torch

    from edgevl.ops.attention import edgevl_attention

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 5, 8)).astype(np.float32) for _ in range(3))
    m = None
    if mask == "bool":
        m = rng.random((2, 1, 5, 5)) > 0.3
        m[..., 0] = True
    elif mask == "additive":
        m = np.where(rng.random((2, 1, 5, 5)) > 0.3, 0.0, np.finfo(np.float32).min).astype(np.float32)
        m[..., 0] = 0.0
    want = edgevl_attention(None, *(torch.from_numpy(a) for a in (q, k, v)),
                            None if m is None else torch.from_numpy(m), 0.3).numpy()
    got = attention_reference(q, k, v, m, 0.3)
    assert np.abs(got - want).max() < 1e-5 and {p.name for p in PLUGINS} == {UNMASKED.name, MASKED.name}


def test_fp16_guard_keeps_a_planted_overflow_fp32(tiny_clip_dir, tmp_path):
    """Layer 0's MLP output of the image tower scaled by 1e6 passes fp16's 65504 on the real
    gate / parity photos: plain fp16 conversion gives inf/NaN and fails parity; the guard keeps
    the overflowing nodes fp32 (named in its report) and parity passes."""
    import torch

    from edgevl.compress.gate import ort_run
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.exporters.tensorrt import fp16_graph
    from edgevl.exporters.tensorrt_fp16 import convert_fp16
    from edgevl.paritydata import build_parity_data, run_batched, verify_outputs
    from edgevl.tolerances import tolerance_for

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    fc2 = next(m for n, m in spec.image.module.named_modules() if n.endswith("layers.0.mlp.fc2"))
    with torch.no_grad():
        fc2.weight.mul_(1e6)
        fc2.bias.mul_(1e6)
    export_tower_onnx(spec.image, tmp_path / "image.onnx")
    fp32 = onnx.load(str(tmp_path / "image.onnx"))
    data = build_parity_data(spec)

    def parity(model, name: str):  # noqa: ANN001, ANN202
        out = run_batched(ort_run(model), data.feeds("image"))
        return verify_outputs(data, "image", out, tolerance_for("tensorrt", "fp16"), name)

    unguarded, _ = convert_fp16(fp32, set(), {})
    assert not parity(unguarded, "unguarded").passed
    model, report = fp16_graph(spec, "image", fp32)
    assert report["overflowing_nodes"] and report["reason"].startswith("fp16 overflow")
    assert set(report["overflowing_nodes"]) <= set(report["kept_fp32"]) and report["fp16_nodes"] > report["fp32_nodes"]
    guarded = parity(model, "guarded")
    assert guarded.passed and guarded.cosine_min >= 0.999 and guarded.top1_agreement == 1.0
    assert check_iattention(model, "image")["attention_nodes"] == len(attention_blocks(spec.image.module))


def test_polygraphy_lint_reports_no_errors(trt_export):
    polygraphy = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    if not Path(polygraphy).exists():
        pytest.skip("polygraphy is not installed (pip install 'edgevl[dev]')")
    out, manifest, _ = trt_export
    for art in manifest["artifacts"]:
        report = out.parent / f"lint_{art['precision']}_{art['component']}.json"
        run = subprocess.run([polygraphy, "check", "lint", str(out / art["path"]), "-o", str(report)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        lint = json.loads(report.read_text())
        assert not lint["summary"].get("failing"), lint
        assert not [e for e in lint.get("lint_entries", []) if e.get("level") in ("exception", "error")], lint


def test_trt_attention_without_the_tensorrt_target_is_refused(tiny_clip_dir, tmp_path, capsys):
    code = main(["export", str(tiny_clip_dir), "--target", "onnx", "--trt-attention", "plugin",
                 "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--trt-attention" in err and "\n" not in err


def test_runtime_labels_what_ran_it(trt_export):
    from edgevl.registry import RUNTIMES

    out, manifest, _ = trt_export
    art = manifest["artifacts"][0]
    loaded = RUNTIMES.get("tensorrt")().load(out / art["path"], art["runtime_options"])
    assert loaded.verified == ("runtime" if tensorrt_available() else "onnxruntime")


@pytest.mark.hardware
@pytest.mark.skipif(not tensorrt_available(), reason=NO_ENGINE)
def test_engines_build_and_match_the_onnx(trt_export, tmp_path):
    """Where TensorRT runs: each graph builds strongly typed, the engine runs and agrees with the
    engine-ready ONNX on ONNX Runtime at the precision's tolerance."""
    from edgevl.exporters.tensorrt_engine import build_engine
    from edgevl.exporters.tensorrt_qdq import qdq_session_runner
    from edgevl.parity import cosine_per_row
    from edgevl.runtimes.tensorrt import TensorRTEngine

    out, manifest, _ = trt_export
    for art in manifest["artifacts"]:
        path = out / art["path"]
        engine = build_engine(path, tmp_path / (path.stem + ".engine"), art["passes"]["profiles"])
        loaded = TensorRTEngine(engine.read_bytes())
        feeds = {n: np.ones([s["opt"][0], *s["opt"][1:]], np.float32 if n == "pixel_values" else np.int64)
                 for n, s in art["passes"]["profiles"].items()}
        got = loaded.run(feeds)[loaded.output_names[0]]
        want = qdq_session_runner(onnx.load(str(path)))(feeds)
        floor = {"fp16": 0.999, "int8": 0.99}[art["precision"]]
        assert got.shape == want.shape and cosine_per_row(want, got).min() >= floor


def _attention_graph(variant: str):
    """One opset-23 `Attention` node named "blk" in the form `variant` says."""
    from onnx import TensorProto, helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    q_shape, q_type, kv_type = [2, 3, 5, 8], f32, f32
    attrs: dict = {}
    if variant == "rank":
        q_shape = [5, 8]
    elif variant in ("3d", "3d_no_heads"):
        q_shape = [2, 5, 24]
        attrs = {"q_num_heads": 3, "kv_num_heads": 3} if variant == "3d" else {}
    elif variant == "dtype":
        q_type = f16
    kv_shape = q_shape if variant != "rank" else [2, 3, 5, 8]
    inputs = [helper.make_tensor_value_info("q", q_type, q_shape),
              helper.make_tensor_value_info("k", kv_type, kv_shape),
              helper.make_tensor_value_info("v", kv_type, kv_shape)]
    names = ["q", "k", "v"]
    if variant in ("mask", "mask_type"):
        inputs.append(helper.make_tensor_value_info("m", TensorProto.INT64 if variant == "mask_type" else f32, [5, 5]))
        names.append("m")
    if variant == "past":
        inputs += [helper.make_tensor_value_info(n, f32, [2, 3, 4, 8]) for n in ("pk", "pv")]
        names += ["", "pk", "pv"]  # no mask, then past_key and past_value
    outputs = ["y", "present_k", "present_v"] if variant in ("outputs", "past") else ["y"]
    node = helper.make_node("Attention", names, outputs, name="blk", **attrs)
    graph_outputs = [helper.make_tensor_value_info("y", q_type, None)]
    if variant == "outputs":
        graph_outputs.append(helper.make_tensor_value_info("present_k", f32, None))
    graph = helper.make_graph([node], "g", inputs, graph_outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


@pytest.mark.parametrize("variant, words", [
    ("4d", None), ("3d", None), ("mask", None),
    ("rank", "ranks"), ("3d_no_heads", "q_num_heads"), ("dtype", "element types"),
    ("past", "past_key"), ("outputs", "outputs used"), ("mask_type", "attn_mask type"),
])
def test_iattention_rules_each_variant(variant, words):
    breaks = attention_rule_breaks(_attention_graph(variant))
    assert list(breaks) == ["blk"]
    if words is None:
        assert breaks["blk"] == [], breaks
    else:
        assert len(breaks["blk"]) >= 1 and any(words in why for why in breaks["blk"]), breaks
        with pytest.raises(ExportError, match="blk"):
            check_iattention(_attention_graph(variant), "image")
