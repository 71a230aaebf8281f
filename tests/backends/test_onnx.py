"""ONNX target on tiny random CLIP / SigLIP checkpoints, in both attention flavours, through the
real CLI path: real transformers model code, real ONNX Runtime, real photos for parity."""

from __future__ import annotations

import copy
import shutil
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgevl.calibration.samples import split_record
from edgevl.cli import main
from edgevl.errors import UnfusedAttentionError
from edgevl.exporters.onnx import export_tower_onnx
from edgevl.exporters.onnx_attention import count_fused_attention, lower_attention_to_ort_mha
from edgevl.models.hf_clip import load_hf_clip
from edgevl.models.spec import LoadOptions
from edgevl.ops.attention import attention_blocks

FUSED_OP = {"standard": ("", "Attention"), "ort": ("com.microsoft", "MultiHeadAttention")}
STANDARD_DOMAINS = {"", "ai.onnx"}


def _ops(path: Path) -> Counter:
    return Counter((n.domain, n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tiny_checkpoint_graph_holds_one_attention_op_per_block(kind, flavor, tiny_clip_dir, tiny_siglip_dir, tmp_path, capsys):
    """Beyond the contract test (test_contract.py): each ONNX flavour's own attention op in the
    graph, parity on both flavours, and the preprocessing each family declares."""
    ckpt = tiny_clip_dir if kind == "clip" else tiny_siglip_dir
    out = tmp_path / "out"
    code = main(["export", str(ckpt), "--target", "onnx", "--onnx-flavor", flavor, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    spec = load_hf_clip(str(ckpt), LoadOptions())
    assert {a["component"] for a in manifest["artifacts"]} == {"image", "text"}
    for art in manifest["artifacts"]:
        blocks = len(attention_blocks(spec.tower(art["component"]).module))
        # CLIP: 2 blocks per tower; SigLIP's vision tower adds its attention-pooling head.
        assert blocks == (3 if (kind, art["component"]) == ("siglip", "image") else 2)
        assert art["fused_attention"] == blocks and art["unfused_attention"] == 0
        ops = _ops(out / art["path"])
        assert ops[FUSED_OP[flavor]] == blocks
        if flavor == "standard":
            assert {domain for domain, _ in ops} <= STANDARD_DOMAINS, ops
        assert ops[("", "Softmax")] == 0, "a decomposed attention would leave a Softmax behind"
        assert art["verified"] == "runtime"
        parity = art["parity"]
        assert parity["passed"] and parity["cosine_min"] >= 0.9999 and parity["top1_agreement"] == 1.0
        # Image parity runs on every view of the held-out parity split's photos and stamps.
        parity_views = split_record("parity")["images"]
        assert parity["n_samples"] == (parity_views if art["component"] == "image" else 24)
    assert manifest["parity_set"]["text_source"].startswith("random token ids")
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["crop"] == 32 and pre["resize_mode"] == ("squash" if kind == "siglip" else "shortest_edge")


def test_dynamic_batch_and_sequence(tiny_clip_dir, tmp_path):
    import onnxruntime as ort

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    path = tmp_path / "text.onnx"
    export_tower_onnx(spec.text, path)
    session = ort.InferenceSession(str(path))
    from edgevl.models.spec import random_token_feeds

    for batch, seq in [(1, 5), (3, 16)]:
        feeds = random_token_feeds(batch, seq, 99, spec.special_token_ids, ("input_ids", "attention_mask"), seed=batch)
        got = session.run(None, feeds)[0]
        np.testing.assert_allclose(got, spec.text.forward_numpy(feeds), atol=1e-5)


def test_exported_graph_holds_no_source_paths(tiny_clip_dir, tmp_path):
    """The same export must not differ by where edgevl is installed: the exporter's stack traces
    (absolute source paths) are dropped; the module scopes edgevl reads stay."""
    import edgevl

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    path = tmp_path / "image.onnx"
    export_tower_onnx(spec.image, path)
    model = onnx.load(str(path))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys and "pkg.torch.onnx.name_scopes" in keys
    assert str(Path(edgevl.__file__).resolve().parents[1]).encode() not in path.read_bytes()


def test_unrouted_attention_block_fails_with_its_name(tiny_clip_dir, tmp_path):
    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    # One block left on transformers' eager path (matmul + softmax): the realistic miss.
    attn = spec.image.module.vision_model.encoder.layers[1].self_attn
    attn.config = copy.copy(attn.config)
    attn.config._attn_implementation = "eager"
    with pytest.raises(UnfusedAttentionError, match=r"vision_model\.encoder\.layers\.1\.self_attn"):
        export_tower_onnx(spec.image, tmp_path / "image.onnx")
    assert not (tmp_path / "image.onnx").exists()
    report = export_tower_onnx(spec.image, tmp_path / "image.onnx", allow_unfused=True)
    assert (report.fused, report.unfused) == (1, 1)
    assert report.unfused_blocks == ["vision_model.encoder.layers.1.self_attn"]


def test_ort_pass_reports_its_count_and_leaves_other_nodes(tiny_siglip_dir, tmp_path):
    spec = load_hf_clip(str(tiny_siglip_dir), LoadOptions())
    path = tmp_path / "image.onnx"
    export_tower_onnx(spec.image, path)
    model = onnx.load(str(path))
    before = Counter(n.op_type for n in model.graph.node)
    assert lower_attention_to_ort_mha(model) == 3
    assert count_fused_attention(model) == 3
    after = Counter(n.op_type for n in model.graph.node)
    assert after["Attention"] == 0 and after["MultiHeadAttention"] == 3
    assert after["MatMul"] == before["MatMul"]
    assert lower_attention_to_ort_mha(model) == 0  # nothing left to rewrite


def test_checkpoint_with_tokenizer_is_verified_on_real_captions(tiny_clip_dir, tmp_path):
    """A checkpoint that ships tokenizer.json: its files travel with the export and text parity
    runs on the real captions and label prompts, tokenised without torch."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from edgevl.calibration.samples import bundled_parity_set

    ckpt = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_clip_dir, ckpt)
    words = sorted({w for t in bundled_parity_set().texts for w in t.lower().replace(".", " ").split()})
    vocab = {"<unk>": 0, "<pad>": 1, **{w: i + 2 for i, w in enumerate(words[:90])}}
    vocab.update({"<bos>": 97, "<eos>": 98})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 97), ("<eos>", 98)])
    tok.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    out = tmp_path / "out"
    assert main(["export", str(ckpt), "--components", "text", "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity_set"]["text_source"] == "real captions and label prompts"
    assert manifest["artifacts"][0]["parity"]["n_samples"] == len(bundled_parity_set().texts)
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "preprocess.json").read_text())["pad_token_id"] == 1


def test_static_shapes_fix_the_named_axes_and_are_verified(tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(tiny_clip_dir), "--static-shapes", "batch=4,seq=12", "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = {}
    for art in manifest["artifacts"]:
        assert art["parity"]["passed"]
        for i in onnx.load(str(out / art["path"])).graph.input:
            inputs[i.name] = [d.dim_value for d in i.type.tensor_type.shape.dim]
    assert inputs == {"pixel_values": [4, 3, 32, 32], "input_ids": [4, 12], "attention_mask": [4, 12]}
    capsys.readouterr()
    assert main(["export", str(tiny_clip_dir), "--static-shapes", "sequence=77", "--out", str(tmp_path / "o2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown axis sequence; the axes edgevl can fix are: batch, seq" in err
    assert not (tmp_path / "o2").exists()


def _reference_evaluator_matches_ort(path: Path, feeds: dict) -> float:
    """Max |ONNX reference evaluator - ONNX Runtime| on `feeds` (ORT at exact float accuracy for
    weight-only blocks, which it otherwise computes with int8 activations)."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return float(np.abs(ReferenceEvaluator(str(path)).run(None, feeds)[0] - got).max())


@pytest.mark.slow  # reads the session's tiny int8 exports (trained checkpoints) and quantizes three more
def test_standard_flavour_holds_only_ai_onnx_ops_at_every_precision(tiny_int8_exports, tiny_clip_dir, tmp_path):
    """int8 (the session's trained tiny CLIP export) and int4w (the tiny random CLIP):
    every node in an ai.onnx domain, ONNX's own reference evaluator runs each graph and agrees
    with ONNX Runtime, and every path the manifests name lies inside the export. The ort flavour
    of int4w is where com.microsoft ops may appear."""
    from manifest_paths import check_manifest_paths

    from edgevl.models.spec import random_token_feeds

    spec = load_hf_clip(str(tiny_clip_dir), LoadOptions())
    out = tmp_path / "weight-only"
    assert main(["export", str(tiny_clip_dir), "--precision", "int4w", "--components", "text",
                 "--out", str(out), "-q"]) == 0
    ort_out = tmp_path / "ort"
    assert main(["export", str(tiny_clip_dir), "--precision", "int4w", "--components", "text",
                 "--onnx-flavor", "ort", "--out", str(ort_out), "-q"]) == 0
    int8 = tiny_int8_exports("clip")
    seen = set()
    for folder in (out, int8, ort_out):
        assert not check_manifest_paths(folder), check_manifest_paths(folder)
        for art in json.loads((folder / "manifest.json").read_text())["artifacts"]:
            if art["target"] != "onnx" or art["precision"] == "fp32":
                continue
            quant = art["passes"]["quantization"]
            assert quant["recipe"] in art["files"] and (folder / quant["recipe"]).is_file()
            domains = {domain for domain, _ in _ops(folder / art["path"])}
            if folder == ort_out:
                assert "com.microsoft" in domains  # MatMulNBits / GatherBlockQuantized
                continue
            assert domains <= STANDARD_DOMAINS, (art["precision"], art["component"], domains)
            assert quant["quantized_layers"] >= 10, quant
            seen.add(art["precision"])
            if art["component"] == "text":
                feeds = random_token_feeds(1, 7, 99, spec.special_token_ids, ("input_ids", "attention_mask"), seed=0)
                assert _reference_evaluator_matches_ort(folder / art["path"], feeds) < 1e-4
    assert seen == {"int8", "int4w"}
