"""Token reduction (`--tokens`, `reduce_tokens_`): config parsing, the per-layer plan, identity at
r=0 / keep=1.0 (in PyTorch and on every target), fewer tokens and FLOPs otherwise, and real
exports with static shapes and every attention block fused, verified by ONNX Runtime, OpenVINO
and ExecuTorch's runtime."""

from __future__ import annotations

import json

import pytest

from edgevl.compress.tokens_config import TokenConfig, parse_tokens
from edgevl.compress.tokens_plan import make_plan, tome_schedule
from edgevl.errors import InputError


@pytest.mark.parametrize("text, method, r, keep, schedule, auto", [
    ("tome:r=8", "tome", 8, None, "constant", False),
    ("tome:r=4,schedule=decreasing", "tome", 4, None, "decreasing", False),
    ("tome:r=auto", "tome", None, None, "constant", True),
    ("evit:keep=0.7", "evit", None, 0.7, "constant", False),
    ("evit:keep=auto", "evit", None, None, "constant", True),
])
def test_parse_tokens(text, method, r, keep, schedule, auto):
    config = parse_tokens(text)
    assert (config.method, config.r, config.keep, config.schedule, config.auto) == (method, r, keep, schedule, auto)
    assert parse_tokens(config.label()) == config


@pytest.mark.parametrize("bad", ["tome", "tome:", "foo:r=2", "tome:r=-1", "tome:r=x", "tome:keep=0.5", "evit:r=2",
                                 "evit:keep=0", "evit:keep=1.5", "evit:keep=nan", "tome:r=2,r=3",
                                 "tome:r=2,schedule=zigzag", "evit:keep=0.5,schedule=decreasing", "tome:r"])
def test_bad_tokens_strings_exit_2_with_one_line(bad, capsys, tmp_path):
    from edgevl.cli import main

    with pytest.raises(InputError):
        parse_tokens(bad)
    assert main(["export", "--tokens", bad, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgevl: error: argument --tokens:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_plan_counts_are_static_and_capped():
    plan = make_plan(TokenConfig("tome", r=16), depth=12, tokens=197, protect=1)
    counts = plan.per_layer_tokens
    assert counts[0] == 197 and all(isinstance(c, int) for c in counts)
    assert all(b == a - min(16, (a - 1) // 2) for a, b in zip(counts, counts[1:]))
    assert tome_schedule(8, 12, "decreasing")[0] == 12 and tome_schedule(8, 12, "decreasing")[-1] == 4
    evit = make_plan(TokenConfig("evit", keep=0.7), depth=12, tokens=197, protect=1)
    assert [p.keep >= 0 for p in evit.layers].count(True) == 3 and evit.per_layer_tokens[-1] < 197
    assert not make_plan(TokenConfig("tome", r=0), 12, 197, 1).reduces
    assert not make_plan(TokenConfig("evit", keep=1.0), 12, 197, 1).reduces


@pytest.mark.parametrize("n, good", [(1, 0), (5, 4), (5, 0), (11, 3), (11, 9), (2, 0)])
def test_last_passing_bisects_to_the_most_reduction_that_passes(n, good):
    from edgevl.compress.tokens_gate import last_passing

    tried = []
    assert last_passing(n, lambda i: tried.append(i) or i <= good) == good
    assert len(tried) <= 1 + max(1, n - 1).bit_length() and (n == 1 or tried[0] == n - 1)


def _spec(folder):
    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions

    return load_hf_clip(str(folder), LoadOptions())


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_identity_configs_reproduce_and_reduction_reduces(kind, tiny_clip_dir, tiny_siglip_dir):
    import torch

    from edgevl.compress.tokens import reduce_tokens_

    spec = _spec(tiny_clip_dir if kind == "clip" else tiny_siglip_dir)
    x = spec.image.example_inputs["pixel_values"]
    with torch.no_grad():
        ref = spec.image.module(pixel_values=x)
        identities = ["tome:r=0"] + (["evit:keep=1.0"] if kind == "clip" else [])
        for text in identities:
            record = reduce_tokens_(spec, parse_tokens(text))
            torch.testing.assert_close(spec.image.module(pixel_values=x), ref, rtol=0, atol=1e-6)
            assert record["flops_ratio"] == 1.0
        record = reduce_tokens_(spec, parse_tokens("tome:r=4"))
        out = spec.image.module(pixel_values=x)
    tokens = record["per_layer_tokens"]
    assert tokens == [tokens[0], tokens[0] - 4, tokens[0] - 8]
    assert record["encoder_flops_after"] < record["encoder_flops_before"]
    assert out.shape == ref.shape and not torch.allclose(out, ref, atol=1e-6)
    assert spec.derived["tokens"] is record


def test_evit_refused_on_siglip_and_cnn_tower_refused(tiny_siglip_dir):
    from edgevl.compress.tokens import reduce_tokens_
    from edgevl.distill.students import ConvArch, build_tower

    spec = _spec(tiny_siglip_dir)
    with pytest.raises(InputError, match="SigLIP has no class token"):
        reduce_tokens_(spec, parse_tokens("evit:keep=0.7"))
    spec.image.module = build_tower(ConvArch(width=8, depth=1, resolution=32, embed_dim=24))
    with pytest.raises(InputError, match="has no tokens: drop --tokens"):
        reduce_tokens_(spec, parse_tokens("tome:r=2"))


@pytest.mark.slow
def test_tome_export_onnx_openvino_static_fused(tiny_clip_dir, tmp_path, capsys):
    import onnx

    from edgevl.cli import main

    out = tmp_path / "out"
    # r=auto with a drop of up to 0.99 accepted: every candidate passes, so the gate settles on the
    # most reduction this 17-token, 2-layer tower allows (r=8, capped to 4 in the second layer).
    assert main(["export", str(tiny_clip_dir), "--tokens", "tome:r=auto", "--max-drop", "0.99",
                 "--target", "onnx,openvino", "--components", "image", "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = manifest["tokens"]
    assert tokens["gate"]["chosen"] == tokens["config"] == "tome:r=8" and tokens["gate"]["tries"][0]["passed"]
    assert tokens["per_layer_tokens"] == [17, 9, 5] and tokens["encoder_flops_after"] < tokens["encoder_flops_before"]
    assert 0.0 <= tokens["agreement_with_unreduced"]["cosine_min"] <= 1.0
    for a in manifest["artifacts"]:
        assert (a["fused_attention"], a["unfused_attention"], a["parity"]["passed"]) == (2, 0, True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / manifest["artifacts"][0]["path"])))
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    attn = [n for n in model.graph.node if n.op_type == "Attention"]
    seqs = [shapes[n.input[0]][2] for n in attn]
    assert seqs == [17, 9]  # static token counts, fewer in the second layer


@pytest.mark.slow
def test_tokens_on_cnn_tower_exit_2_one_line(tmp_path, capsys):
    from edgevl.cli import main

    assert main(["export", "--tokens", "tome:r=8", "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no tokens: drop --tokens" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_vit_student_identity_and_reduction(tiny_clip_dir):
    import torch

    from edgevl.compress.tokens import reduce_tokens_
    from edgevl.distill.students import ViTArch, build_tower

    spec = _spec(tiny_clip_dir)
    torch.manual_seed(0)
    spec.image.module = build_tower(ViTArch(width=32, depth=3, heads=4, patch=8, resolution=32, embed_dim=24)).eval()
    x = spec.image.example_inputs["pixel_values"]
    with torch.no_grad():
        ref = spec.image.module(x)
        reduce_tokens_(spec, parse_tokens("evit:keep=1.0"))
        torch.testing.assert_close(spec.image.module(x), ref, rtol=0, atol=1e-6)
        record = reduce_tokens_(spec, parse_tokens("tome:r=3"))
        assert spec.image.module(x).shape == ref.shape
    assert record["tower"] == "student" and record["per_layer_tokens"] == [17, 14, 11, 8]


def test_mil_topk_and_argmax_kernels():
    import numpy as np

    from edgevl.runtimes.mil_ops import TENSOR_OPS, ELEMENTWISE_OPS

    kernels = {**TENSOR_OPS, **ELEMENTWISE_OPS}
    x = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, -1.0, 2.0, 0.0]], np.float32)
    values, index = kernels["topk"]({"x": x, "k": 2, "axis": -1})
    assert index.tolist() == [[1, 3], [0, 2]] and np.array_equal(values, x[[[0], [1]], index])
    assert kernels["reduce_argmax"]({"x": x, "axis": -1}).tolist() == [1, 0]
    assert kernels["topk"]({"x": x, "k": 1, "axis": -1, "ascending": True})[1].tolist() == [[0], [1]]


@pytest.fixture(scope="module")
def identity_setup(tiny_clip_dir):
    """The tiny CLIP spec, four real photos of the held-out parity split as the image tower's
    inputs, and the UNREDUCED tower's outputs on them (computed before any reduction)."""
    from edgevl.calibration.samples import bundled_split
    from edgevl.preprocess import preprocess_images

    spec = _spec(tiny_clip_dir)
    images = bundled_split("parity", max_photos=4, stamps=False).images[:4]
    feeds = {"pixel_values": preprocess_images(images, spec.preprocess)}
    return spec, feeds, spec.image.forward_numpy(feeds)


def _export_and_run(spec, target, feeds, out_dir, static=None):
    """Export `spec`'s image tower to `target` and run it on `feeds` with the target's runtime
    (in chunks of the static batch, if one is given); returns (artifact, outputs, what ran it)."""
    import numpy as np

    from edgevl.exporters.base import ExportOptions
    from edgevl.registry import EXPORTERS, RUNTIMES

    artifact = EXPORTERS.get(target)().export(spec, "image", out_dir, ExportOptions(static_shapes=static))
    loaded = RUNTIMES.get(artifact.runtime)().load(artifact.path, artifact.runtime_options)
    name = loaded.output_names[0]
    n = len(feeds["pixel_values"])
    step = (static or {}).get("batch", n)
    parts = [loaded.run({k: v[i:i + step] for k, v in feeds.items()})[name] for i in range(0, n, step)]
    return artifact, np.concatenate(parts), loaded.verified


def _assert_fp32_close(reference, out):
    import numpy as np

    from edgevl.parity import cosine_per_row
    from edgevl.tolerances import tolerance_for

    fp32 = tolerance_for("onnx", "fp32")  # every target's fp32 row is the same
    assert out.shape == reference.shape
    assert cosine_per_row(reference, out).min() >= fp32.cosine_min
    assert np.abs(reference - out).max() <= fp32.max_abs


# What runs each target here: ONNX Runtime (onnx), OpenVINO's CPU plugin (openvino), ONNX Runtime
# standing in for TensorRT on the engine-ready ONNX where TensorRT and a CUDA GPU are absent
# (tensorrt), edgevl's MIL reference interpreter off macOS (coreml, static batch as --tokens
# requires there), ExecuTorch's runtime (executorch).
IDENTITY_CASES = [("onnx", "tome:r=0"), ("onnx", "evit:keep=1.0"), ("openvino", "tome:r=0"),
                  ("tensorrt", "tome:r=0"), ("coreml", "tome:r=0"), ("executorch", "tome:r=0")]
RAN_BY = {"onnx": {"runtime"}, "openvino": {"runtime"}, "tensorrt": {"onnxruntime", "runtime"},
          "coreml": {"reference-interpreter", "runtime"}, "executorch": {"runtime"}}


@pytest.mark.slow
@pytest.mark.parametrize("target, config", IDENTITY_CASES)
def test_identity_configs_reproduce_unreduced_outputs_on_every_target(target, config, identity_setup, tmp_path):
    from edgevl.compress.tokens import reduce_tokens_

    spec, feeds, unreduced = identity_setup
    reduce_tokens_(spec, parse_tokens(config))
    static = {"batch": 1} if target == "coreml" else None
    artifact, out, verified = _export_and_run(spec, target, feeds, tmp_path, static)
    assert verified in RAN_BY[target]
    assert (artifact.fused_attention, artifact.unfused_attention) == (2, 0)
    _assert_fp32_close(unreduced, out)


def test_identity_configs_trace_to_the_same_graph(tiny_clip_dir):
    """keep=1.0 and r=0 plan no step: the exported programs are the same graph, so what the
    targets show for one (above) holds for the other."""
    import torch

    from edgevl.compress.tokens import reduce_tokens_

    spec = _spec(tiny_clip_dir)
    x = spec.image.example_inputs["pixel_values"]
    graphs = []
    for text in ("tome:r=0", "evit:keep=1.0", "tome:r=2"):
        reduce_tokens_(spec, parse_tokens(text))
        with torch.no_grad():
            graphs.append(str(torch.export.export(spec.image.module.eval(), (), {"pixel_values": x}).graph))
    assert graphs[0] == graphs[1] != graphs[2]


@pytest.mark.slow
@pytest.mark.parametrize("config, tokens", [("tome:r=2", [17, 15, 13]), ("evit:keep=0.5", [17, 17, 10])])
def test_reduced_tower_on_executorch_is_fused_and_matches_it(config, tokens, identity_setup, tmp_path):
    """At a static batch of 2 (the default dynamic batch is exported in the identity case above):
    each block runs whole inside XNNPACK, and two images per call show the per-image TopK /
    Gather steps keep the images apart."""
    from edgevl.compress.tokens import reduce_tokens_

    spec, feeds, _ = identity_setup
    assert reduce_tokens_(spec, parse_tokens(config))["per_layer_tokens"] == tokens
    reduced = spec.image.forward_numpy(feeds)
    artifact, out, verified = _export_and_run(spec, "executorch", feeds, tmp_path, {"batch": 2})
    assert verified == "runtime" and (artifact.fused_attention, artifact.unfused_attention) == (2, 0)
    blocks = artifact.passes["lowering"]["attention"]
    assert {name: b["lowered_to"] for name, b in blocks.items()} == {
        f"vision_model.encoder.layers.{i}.self_attn": "xnnpack" for i in (0, 1)}
    _assert_fp32_close(reduced, out)
