"""ONNX int8 on Hugging Face CLIP and SigLIP towers (tiny random checkpoints saved with
transformers' `save_pretrained`), run by ONNX Runtime on the bundled real photos.

The float graph around the quantised layers must be the fp32 tower: every float rewrite of the
int8 chain (SmoothQuant fold, attention packing, embedding fusion) is checked against the graph
it replaces and kept, or skipped with its reason in the passes."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgevl.compress import quantize as Q  # noqa: E402
from edgevl.compress.gate import gate_loop, measure  # noqa: E402
from edgevl.errors import ParityError  # noqa: E402
from edgevl.tolerances import tolerance_for  # noqa: E402

FAMILIES = [("clip", "image"), ("clip", "text"), ("siglip", "image"), ("siglip", "text")]

INT8_FLOOR = tolerance_for("onnx", "int8").cosine_min


@pytest.fixture(scope="module")
def towers(tiny_clip_dir, tiny_siglip_dir, tmp_path_factory):
    """(family, component) -> (spec, fp32 ONNX model, calibration feeds, gate data), built lazily."""
    import onnx

    from edgevl.calibration.datasets import load_calibration
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions

    folders = {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir}
    specs: dict = {}
    built: dict = {}
    out = tmp_path_factory.mktemp("int8-families")

    def get(family: str, component: str):
        if (family, component) not in built:
            if family not in specs:
                specs[family] = load_hf_clip(str(folders[family]), LoadOptions())
            spec = specs[family]
            path = out / f"{family}_{component}.onnx"
            export_tower_onnx(spec.tower(component), path)
            fp32 = onnx.load(str(path))
            feeds = load_calibration(None).feeds(spec, component, limit=16)
            built[(family, component)] = (spec, fp32, feeds, Q.build_gate_data(spec, component, fp32, INT8_FLOOR))
        return built[(family, component)]

    return get


def _linear_names(model) -> tuple[str, ...]:
    from edgevl.compress.qdq import linear_nodes, prepare

    return tuple(l.name for l in linear_nodes(prepare(model)[0]))


@pytest.fixture(scope="module")
def all_float(towers):
    """(family, component) -> the default int8 chain's result (quantised model, recipe, info)
    with every linear layer excluded from int8: SmoothQuant is still folded and packing and
    fusion still tried, so this is the float graph around the quantised layers."""
    done: dict = {}

    def get(family: str, component: str):
        if (family, component) not in done:
            _, fp32, feeds, gate = towers(family, component)
            names = _linear_names(fp32)
            done[(family, component)] = (names, *Q.quantize_model(
                fp32, Q.DynamicW8A8Config(exclude=names), feeds, component, gate, 0.9999))
        return done[(family, component)]

    return get


@pytest.mark.parametrize("family, component", FAMILIES)
def test_every_layer_float_reproduces_the_fp32_tower(towers, all_float, family, component):
    _, _, _, gate = towers(family, component)
    names, qmodel, recipe, info = all_float(family, component)
    assert len(names) >= 10
    assert not recipe.layers and len(recipe.float_layers) == len(names)
    assert not any(n.op_type in ("MatMulInteger", "QAttention", "DynamicQuantizeLinear") for n in qmodel.graph.node)
    figures = measure(gate, qmodel)
    assert figures["cosine_min"] >= 0.9999, figures
    # The smoothing really is in this float graph, not skipped: the figure above covers the fold.
    assert info["passes"]["smoothquant"]["smoothquant_check"]["kept"] >= 1


@pytest.mark.parametrize("family, component", FAMILIES)
def test_every_layer_int8_keeps_the_tower_close(towers, family, component):
    """No gate: every linear layer int8 (7-bit weights), judged on the gate split's inputs."""
    _, fp32, feeds, gate = towers(family, component)
    qmodel, recipe, _ = Q.quantize_model(fp32, Q.DynamicW8A8Config(), feeds, component, None, 0.0)
    assert not recipe.float_layers and len(recipe.layers) >= 10
    figures = measure(gate, qmodel)
    assert figures["cosine_min"] >= 0.99 and figures["sqnr_db"] >= 20, figures


@pytest.mark.parametrize("family, component", FAMILIES)
def test_each_rewrite_is_checked_and_kept_or_skipped_with_a_reason(all_float, family, component):
    _, _, _, info = all_float(family, component)
    passes = info["passes"]
    smooth = passes["smoothquant"]
    check = smooth["smoothquant_check"]
    kept = smooth["smoothquant_folded"] + smooth["smoothquant_into_v"] + smooth["smoothquant_mul"]
    assert check["kept"] == kept >= 1 and check["feeds"] >= 1
    assert check["max_relative_error"] <= check["tolerance"]
    assert all(isinstance(why, str) and why for why in smooth["smoothquant_skipped"].values())
    # Pre-LN towers: every block's LayerNorm outputs fold into gamma/beta, every block's attention
    # output into its V projection (the exporter shares zero biases and unit gammas between
    # layers; the fold gives the changed node its own copy).
    assert smooth["smoothquant_folded"] >= 4 and smooth["smoothquant_into_v"] >= 2
    assert smooth["smoothquant_unshared_initializers"] >= 1
    if family == "clip":
        assert smooth["smoothquant_mul"] >= 2  # quick-GELU outputs, smoothed on the fc2 branch
    for rewrite, skipped in (("qkv_packed", "qkv_packed_skipped"), ("embedding_fused", "embedding_fused_skipped")):
        assert passes[rewrite] or (isinstance(passes.get(skipped), str) and passes[skipped]), (rewrite, passes)


def test_the_fold_leaves_shared_initializers_alone(towers):
    """Freshly initialised towers hold one initializer for every unit gamma and zero bias; scaling
    it in place for one LayerNorm changed them all. The unchecked fold itself must be exact."""
    from collections import Counter

    from edgevl.compress.ort_graph import check_feeds, max_relative_error, session_with_outputs
    from edgevl.compress.qdq import prepare
    from edgevl.compress.smooth_fold import fold_smoothing

    _, fp32, feeds, _ = towers("clip", "image")
    model, _ = prepare(fp32)
    inits = {i.name for i in model.graph.initializer}
    readers = Counter(i for n in model.graph.node for i in n.input if i in inits)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert any(readers[n.input[1]] > 1 for n in norms), "precondition: LayerNorm gammas are shared"
    rng = np.random.default_rng(0)
    smooth = {}
    for n in norms:
        consumers = [c for c in model.graph.node if n.output[0] in c.input]
        if consumers and all(c.op_type == "MatMul" for c in consumers):
            k = next(i for i in model.graph.initializer if i.name == consumers[0].input[1]).dims[0]
            smooth[n.output[0]] = rng.uniform(0.2, 5.0, k).astype(np.float32)
    assert len(smooth) >= 3
    folded, report = fold_smoothing(model, smooth)
    assert report["smoothquant_folded"] == len(smooth) and report["smoothquant_unshared_initializers"] >= 1
    ref, _ = session_with_outputs(model, [])
    assert max_relative_error(ref, folded, check_feeds(feeds)) < 1e-5


def test_a_fold_that_changes_the_numbers_is_dropped_with_its_reason(towers):
    """A fold that forgets the producer side for one tensor (its consumers then see x*s and W*s)
    is caught by the check: that smoothing is dropped, named, with the measured error, the others
    stay, and the graph returned equals the original."""
    from onnx import numpy_helper

    from edgevl.compress.ort_graph import check_feeds, max_relative_error, session_with_outputs
    from edgevl.compress.qdq import prepare
    from edgevl.compress.smooth_fold import fold_smoothing
    from edgevl.compress.smooth_check import checked_fold_smoothing

    _, fp32, feeds, _ = towers("siglip", "text")
    model, _ = prepare(fp32)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    smooth = {}
    rng = np.random.default_rng(1)
    for n in norms:
        consumers = [c for c in model.graph.node if n.output[0] in c.input]
        if consumers and all(c.op_type == "MatMul" for c in consumers):
            k = next(i for i in model.graph.initializer if i.name == consumers[0].input[1]).dims[0]
            smooth[n.output[0]] = rng.uniform(0.5, 2.0, k).astype(np.float32)
    victim = sorted(smooth)[1]

    def broken_fold(m, factors):
        out, report = fold_smoothing(m, factors)
        if victim in factors:
            ln = next(n for n in out.graph.node if victim in n.output)
            inits = {i.name: i for i in out.graph.initializer}
            gamma = numpy_helper.to_array(inits[ln.input[1]]) * factors[victim]
            inits[ln.input[1]].CopyFrom(numpy_helper.from_array(gamma.astype(np.float32), ln.input[1]))
        return out, report

    result, report = checked_fold_smoothing(model, smooth, feeds, fold=broken_fold)
    assert set(report["smoothquant_skipped"]) == {victim}
    assert "changed its consumer" in report["smoothquant_skipped"][victim]
    assert report["smoothquant_check"]["kept"] == len(smooth) - 1 and report["smoothquant_check"]["dropped"] == 1
    ref, _ = session_with_outputs(model, [])
    assert max_relative_error(ref, result, check_feeds(feeds)) < 1e-4


def test_the_gate_search_stops_at_its_try_cap_with_a_clear_message(towers):
    from edgevl.compress.gate import GateLimits

    _, fp32, feeds, gate = towers("clip", "image")
    ctx = Q.QuantContext(fp32, feeds, gate, 1.01, "image")  # a cosine floor nothing can reach
    order = [f"layer{i}" for i in range(40)]
    builds = []

    def build(drop):
        builds.append(len(drop))
        return fp32, {}

    with pytest.raises(ParityError, match=r"search stopped after 1 tries \(cap 1\)") as err:
        gate_loop(ctx, order, {n: 0.0 for n in order}, 0.01, build, limits=GateLimits(max_tries=1))
    assert builds == [0]
    assert "--precision int8w" in str(err.value)
    with pytest.raises(ParityError, match="even with every layer float"):
        gate_loop(ctx, order, {n: 0.0 for n in order}, 0.01, build)
    assert builds == [0, 0, 40]


def test_ctrl_c_in_the_gate_is_not_swallowed_and_leaves_nothing_behind(towers, tmp_path, monkeypatch):
    _, fp32, feeds, gate = towers("siglip", "image")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Q.quantize_model(fp32, Q.DynamicW8A8Config(), feeds[:4], "image", gate, 0.99, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # reason: trains a tiny checkpoint (~20-60 s), then exports and quantises both towers on two runtimes
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_int8_export_passes_parity_with_most_layers_int8(kind, tiny_int8_exports):
    """Both towers, ONNX Runtime and OpenVINO, the default --max-drop: parity passes (min cosine
    >= 0.99, tie-aware agreement) with at least half the linear layers int8. The checkpoint is
    trained on the bundled photos (`edgevl.models.tiny`): random weights tie every zero-shot pick.
    The export is the session's (tests/conftest.py), shared with the apps' int8 tests."""
    out = tiny_int8_exports(kind)
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {(a["target"], a["component"]): a for a in manifest["artifacts"] if a["precision"] == "int8"}
    assert set(arts) == {(t, c) for t in ("onnx", "openvino") for c in ("image", "text")}
    for (target, component), art in arts.items():
        assert art["parity"]["passed"] and art["parity"]["cosine_min"] >= 0.99, (target, component, art["parity"])
        quant = art["passes"]["quantization"]
        if target == "onnx":
            n_int8, n_float = quant["quantized_layers"], len(quant["float_layers"])
            assert quant["passes"]["smoothquant"]["smoothquant_check"]["kept"] >= 1
        else:
            assert not quant["whole_tower_float"], (component, quant["gate"]["tried"])
            n_float = quant["float_layer_count"]
            n_int8 = quant["gate"]["ranked_layers"] - n_float
        assert n_int8 >= 10 and n_int8 >= n_float, (target, component, n_int8, n_float)


@pytest.mark.parametrize("family, component", FAMILIES)
@pytest.mark.parametrize("precision", ["int8w", "int4w"])
def test_weight_only_precisions_keep_the_tower_close(towers, family, component, precision):
    """int8w / int4w (MatMulNBits) through the gate on every family's towers: the graph holds the
    weight-only op and the gate split's figures meet the tolerance table's row."""
    from edgevl.tolerances import tolerance_for

    _, fp32, feeds, gate = towers(family, component)
    row = tolerance_for("onnx", precision)
    qmodel, recipe, _ = Q.quantize_model(fp32, Q.PRECISION_CONFIGS[precision](), feeds, component, gate, row.cosine_min,
                                        flavor="ort")
    assert sum(n.op_type == "MatMulNBits" for n in qmodel.graph.node) >= 10
    figures = measure(gate, qmodel)
    assert figures["cosine_min"] >= row.cosine_min, figures
