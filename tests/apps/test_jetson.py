"""apps/jetson: the parts that run without TensorRT (argument parsing, manifest reading, the
missing-engine message, preprocessing of a real photo and a camera frame, tokenizing, ranking)
on a real tiny tensorrt export, with ONNX Runtime running the engine-ready ONNX where the app
would run the engine. The engine part runs only where TensorRT and a GPU are present."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevl.exporters.tensorrt_engine import tensorrt_available

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "apps" / "jetson"))

import zero_shot_trt as app  # noqa: E402

LABELS = ["cat", "coffee", "rocket"]


@pytest.fixture(scope="module")
def trt_folder(tiny_clip_dir, tmp_path_factory) -> Path:
    from edgevl.cli import main
    from edgevl.models.tiny import word_tokenizer

    ckpt = tmp_path_factory.mktemp("jetson") / "ckpt"
    shutil.copytree(tiny_clip_dir, ckpt)
    word_tokenizer(ckpt, bos=97, eos=98, pad=1, size=97)
    out = ckpt.parent / "out"
    assert main(["export", str(ckpt), "--target", "tensorrt", "--out", str(out), "-q"]) == 0
    return out


def test_arguments_are_parsed_and_refused():
    args = app.parse_args(["OUT", "x.jpg", "--labels", "cat, dog"])
    assert args.labels == ["cat", "dog"] and args.precision == "fp16" and args.camera is None
    for bad in (["OUT", "--labels", "cat,dog"], ["OUT", "x.jpg", "--camera", "0", "--labels", "cat,dog"],
                ["OUT", "x.jpg", "--labels", "cat"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)


def test_plan_reads_the_manifest_and_names_the_missing_engine(trt_folder, capsys):
    plan = app.plan(trt_folder, "fp32")
    assert {c: p.name for c, p in plan.onnx.items()} == {"image": "image_encoder.fp32.onnx", "text": "text_encoder.fp32.onnx"}
    assert all(p.is_file() for p in plan.onnx.values())
    with pytest.raises(app.NoArtifact, match="fp16"):
        app.plan(trt_folder, "fp16")
    if tensorrt_available():
        pytest.skip("TensorRT is present: engines may exist; the missing-engine path is not this machine's")
    photo = REPO / "tests"  # any path: the app fails on the missing engine before reading it
    code = app.main([str(trt_folder), str(photo), "--labels", "cat,dog", "--precision", "fp32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not built" in err and "trtexec.sh" in err and "\n" not in err


def test_preprocessing_tokenizer_and_ranking_match_the_towers(trt_folder):
    """The app's feeds, run by ONNX Runtime on the engine-ready graphs (where the app runs the
    engines), rank like edgevl's reference preprocessing + tokenizer would: same embeddings."""
    import onnxruntime as ort
    from skimage import data as skdata

    from edgevl_runtime.preprocess import Preprocess
    from edgevl_runtime.tokenize import Tokenizer

    plan = app.plan(trt_folder, "fp32")
    config = Preprocess.load(trt_folder / "preprocess.json")
    tokenizer = Tokenizer(trt_folder / "tokenizer" / "tokenizer.json", config.context_length,
                          config.pad_token_id, config.text_inputs)
    sessions = {c: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for c, p in plan.onnx.items()}

    def runner(component):  # noqa: ANN001, ANN202
        return lambda feeds: sessions[component].run(None, feeds)[0]

    frame_rgb = skdata.chelsea()
    from_frame = app.image_feeds([app.frame_to_image(frame_rgb[:, :, ::-1].copy())], config)
    from PIL import Image

    from_file = app.image_feeds([Image.fromarray(frame_rgb)], config)
    assert from_frame["pixel_values"].shape == (1, 3, config.crop, config.crop)
    assert np.array_equal(from_frame["pixel_values"], from_file["pixel_values"])
    feeds = tokenizer([app.TEMPLATE.format(label) for label in LABELS])
    assert set(feeds) == {i.name for i in sessions["text"].get_inputs()}
    texts = app.embed(runner("text"), feeds)
    image = app.embed(runner("image"), from_file)
    ranking = app.rank(image, texts, LABELS)
    scores = [s for _, s in ranking]
    assert sorted(l for l, _ in ranking) == sorted(LABELS) and scores == sorted(scores, reverse=True)
    want = image[0] @ texts.T
    assert np.allclose(sorted(want, reverse=True), scores, atol=1e-6)


@pytest.mark.hardware
@pytest.mark.skipif(not tensorrt_available(), reason="TensorRT and a CUDA GPU are needed to run the engines; neither is installable here")
def test_app_classifies_a_photo_with_the_engines(trt_folder, capsys):
    from skimage import data as skdata
    from PIL import Image

    from edgevl.exporters.tensorrt_engine import build_engine
    import json

    manifest = json.loads((trt_folder / "manifest.json").read_text())
    plan = app.plan(trt_folder, "fp32")
    for art in manifest["artifacts"]:
        build_engine(trt_folder / art["path"], plan.engines[art["component"]], art["passes"]["profiles"])
    photo = trt_folder / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(photo)
    assert app.main([str(trt_folder), str(photo), "--labels", ",".join(LABELS), "--precision", "fp32"]) == 0
    assert any(label in capsys.readouterr().out for label in LABELS)
