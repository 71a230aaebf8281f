"""A campaign of bad inputs (options, output folders, malformed checkpoints, a full disk): each is
refused with exit code 2 (3 for a parity failure) and ONE line naming the thing, leaves no output
and no staging folder behind, and changes nothing outside --out (the edgevl cache included)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from edgevl.cli import main


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and mtime (ns)."""
    if not folder.exists():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


class Guard:
    """Runs `edgevl export ... -q` in-process and checks what a refused run must leave behind."""

    def __init__(self, tmp_path: Path, cache: Path, capsys) -> None:
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.cache = cache
        self.capsys = capsys

    def run(self, *args: str, out: Path | None = None, publishes: bool = False) -> tuple[int, str]:
        """Run; unless the run `publishes` (--keep-failed), nothing beside or in --out may change."""
        out = out or self.out
        cache_before = _snapshot(self.cache)
        parent = out.parent if out.parent.exists() else self.tmp
        before = _snapshot(parent)
        self.capsys.readouterr()  # drop what set-up printed
        code = main(["export", *args, "--out", str(out), "-q"])
        captured = self.capsys.readouterr()
        err = captured.err.strip()
        assert _snapshot(self.cache) == cache_before, "the edgevl cache changed"
        if code != 0:
            assert captured.out == "", captured.out  # a refused run prints no result
            after = _snapshot(parent)
            if publishes:
                after = {k: v for k, v in after.items() if k.split(os.sep)[0] != out.name}
            changed = sorted(set(after.items()) ^ set(before.items()))
            assert not changed, f"files beside --out changed: {changed}"
        return code, err

    def refused(self, *args: str, needles: tuple[str, ...], code: int = 2, out: Path | None = None) -> str:
        existed = (out or self.out).exists()
        got, err = self.run(*args, out=out)
        assert got == code, err
        assert err.startswith("edgevl: error: ") and "\n" not in err, err
        for needle in needles:
            assert needle in err, err
        if not existed:
            assert not (out or self.out).exists()
        return err


@pytest.fixture()
def guard(tmp_path, edgevl_cache, capsys) -> Guard:
    return Guard(tmp_path, edgevl_cache, capsys)


def _no_staging(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if ".edgevl-" in p.name], "staging folder left behind"


# ---------------------------------------------------------------------------------------------
# Options: refused before the model loads (the default model is never loaded by these).


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--max-drop", "1.0"], ("--max-drop", "[0, 1)")),
        (["--max-drop", "-0.1"], ("--max-drop", "[0, 1)")),
        (["--max-drop", "nan"], ("--max-drop", "[0, 1)")),
        (["--max-drop", "lots"], ("--max-drop", "not a number")),
        (["--palette-tune-steps", "-3"], ("--palette-tune-steps", "0 (no tuning) or more")),
        (["--static-shapes", "width=4"], ("--static-shapes", "width", "batch, seq")),
        (["--static-shapes", "batch=0"], ("--static-shapes", "positive integer")),
        (["--static-shapes", "batch=-1"], ("--static-shapes", "positive integer")),
        (["--static-shapes", "batch=1,batch=2"], ("--static-shapes", "given twice")),
        (["--static-shapes", "batch"], ("--static-shapes", "AXIS=N")),
        (["--precision", "int8", "--onnx-flavor", "ort"], ("--onnx-flavor ort", "int8", "--onnx-flavor standard")),
        (["--components", ""], ("--components", "empty list")),
        (["--components", ","], ("--components", "empty list")),
        (["--components", "audio"], ("unknown component 'audio'", "image, text")),
        (["--components", "image,image"], ("--components", "image", "more than once")),
        (["--target", ""], ("--target", "empty list")),
        (["--target", "onnx,onnx"], ("--target", "onnx", "more than once")),
        (["--precision", ""], ("--precision", "empty list")),
        (["--precision", "fp32,fp32"], ("--precision", "fp32", "more than once")),
        (["--onnx-flavor", "fast"], ("--onnx-flavor", "fast", "standard")),
        (["--trt-attention", "plugin"], ("--trt-attention", "tensorrt target only")),
        (["--target", "tensorrt", "--trt-attention", "fused"], ("--trt-attention", "fused", "native")),
        (["--frobnicate"], ("unrecognized arguments", "--frobnicate")),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_option_is_refused_before_the_model_loads(guard, args, needles):
    import edgevl.pipeline as pipeline

    loads: list[str] = []
    real = pipeline.resolve_model
    pipeline.resolve_model = lambda *a, **k: loads.append("load") or real(*a, **k)
    try:
        guard.refused(*args, needles=needles)
    finally:
        pipeline.resolve_model = real
    assert not loads, "the model was loaded before the option was refused"
    _no_staging(guard.tmp)


def test_missing_out_is_one_line(capsys):
    assert main(["export", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgevl: error: ") and "\n" not in err and "--out" in err, err


def test_static_axis_the_requested_tower_lacks(guard, tiny_clip_dir):
    guard.refused(str(tiny_clip_dir), "--components", "image", "--static-shapes", "seq=8",
                  needles=("--static-shapes", "unknown axis seq", "dynamic axes are: batch"))
    _no_staging(guard.tmp)


def test_static_seq_longer_than_the_context(guard, tiny_clip_dir):
    guard.refused(str(tiny_clip_dir), "--components", "text", "--static-shapes", "seq=64",
                  needles=("seq=64", "context length 16", "seq=16"))
    _no_staging(guard.tmp)


# ---------------------------------------------------------------------------------------------
# Output folders: a user's files are never replaced, an unusable place is refused up front.


def test_force_refuses_a_folder_with_a_stray_file_and_keeps_it(guard):
    guard.out.mkdir()
    (guard.out / "thesis.tex").write_text("years of work")
    guard.refused("--force", needles=("thesis.tex", "did not write", "--force replaces only"))
    assert (guard.out / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in guard.out.iterdir()] == ["thesis.tex"]
    _no_staging(guard.tmp)


def test_force_refuses_a_manifest_edgevl_did_not_write(guard):
    guard.out.mkdir()
    (guard.out / "manifest.json").write_text(json.dumps({"name": "someone else's"}))
    guard.refused("--force", needles=("manifest.json", "did not write"))
    assert json.loads((guard.out / "manifest.json").read_text()) == {"name": "someone else's"}


def test_force_replaces_an_earlier_edgevl_export(tiny_clip_dir, tmp_path, capsys):
    from edgevl import __version__

    out = tmp_path / "out"
    (out / "onnx").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"edgevl_version": __version__, "artifacts": []}))
    (out / "onnx" / "stale.txt").write_text("left from an earlier export")
    capsys.readouterr()
    code = main(["export", str(tiny_clip_dir), "--components", "image", "--out", str(out), "-q", "--force"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == "", f"-q let progress through: {captured.err!r}"
    assert not (out / "onnx" / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["artifacts"][0]["component"] == "image"
    _no_staging(tmp_path)


def test_out_below_a_file(guard):
    (guard.tmp / "afile").write_text("x")
    out = guard.tmp / "afile" / "sub" / "out"
    guard.refused(needles=("afile", "is a file, not a folder"), out=out)
    assert (guard.tmp / "afile").read_text() == "x"


def test_unwritable_output_parent(guard):
    parent = guard.tmp / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            # root ignores the mode bits; test_out_below_a_file covers an unusable parent there.
            pytest.skip("running as root: chmod does not deny writing, so the folder cannot be made unwritable")
        guard.refused(needles=("locked", "not writable"), out=parent / "out")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


_FSIZE_CHILD = """
import resource, signal, sys
# Without this the kernel kills the process at the limit; ignored, the write raises EFBIG.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from edgevl.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE and SIGXFSZ are POSIX only")
def test_disk_full_while_writing_leaves_nothing(tiny_clip_dir, tmp_path, edgevl_cache):
    """A file-size limit makes every write past 64 bytes fail with EFBIG, as a full disk fails
    with ENOSPC: the export must stop with one line naming the file, exit 2, no staging folder."""
    out = tmp_path / "out"
    cache_before = _snapshot(edgevl_cache)
    proc = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, "64", "export", str(tiny_clip_dir), "--components", "image",
         "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.startswith("edgevl: error: ") and "\n" not in err, err
    assert "File too large" in err and "EFBIG" in err and "writing preprocess.json" in err and "free disk space" in err, err
    assert not out.exists()
    _no_staging(tmp_path)
    assert _snapshot(edgevl_cache) == cache_before


# ---------------------------------------------------------------------------------------------
# Malformed checkpoints: exit 2 with the file and the fix, never a traceback.


@pytest.fixture()
def broken(tiny_clip_dir, tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_clip_dir, folder)
    return folder


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rewrite_weights(folder: Path, edit: Callable[[dict], dict]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file(edit(load_file(str(path))), str(path), metadata={"format": "pt"})


CONFIG_CASES = {
    "not json": (lambda p: p.write_text('{"model_type": "clip",'), ("config.json", "not valid JSON")),
    "binary": (lambda p: p.write_bytes(b"\xff\xfe\x00\x81garbage"), ("config.json", "not valid JSON")),
    "json list": (lambda p: p.write_text("[1, 2]"), ("config.json", "JSON list, not an object")),
    "no model_type": (
        lambda p: _edit_json(p, lambda d: d.pop("model_type")), ("config.json", "no model_type", "'clip'")),
    "model_type not a string": (
        lambda p: _edit_json(p, lambda d: d.update(model_type=["clip"])), ("model_type must be a string",)),
    "size as string": (
        lambda p: _edit_json(p, lambda d: d["text_config"].update(hidden_size="32")),
        ("text_config.hidden_size", "positive integer", "'32'")),
    "negative size": (
        lambda p: _edit_json(p, lambda d: d["vision_config"].update(num_hidden_layers=-2)),
        ("vision_config.num_hidden_layers", "positive integer")),
    "vision_config not an object": (
        lambda p: _edit_json(p, lambda d: d.update(vision_config="ViT-B/32")), ("vision_config must be an object",)),
    "architectures not a list": (
        lambda p: _edit_json(p, lambda d: d.update(architectures="CLIPModel")), ("architectures must be a list",)),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_malformed_config(guard, broken, case):
    corrupt, needles = CONFIG_CASES[case]
    corrupt(broken / "config.json")
    guard.refused(str(broken), needles=needles)
    _no_staging(guard.tmp)


@pytest.mark.parametrize("content, needles", [
    ("{not json", ("preprocessor_config.json", "not valid JSON")),
    (json.dumps({"image_std": [0.5, 0.5]}), ("preprocessor_config.json", "image_std", "3 numbers")),
    (json.dumps({"image_std": [0.5, 0.0, 0.5]}), ("preprocessor_config.json", "image_std", "above 0")),
    (json.dumps({"image_mean": "imagenet"}), ("preprocessor_config.json", "image_mean")),
], ids=["not-json", "two-stds", "zero-std", "mean-string"])
def test_malformed_preprocessor_config(guard, broken, content, needles):
    (broken / "preprocessor_config.json").write_text(content)
    guard.refused(str(broken), needles=needles)


def _word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A real `tokenizers` WordLevel tokenizer with `vocab_size` entries, saved as tokenizer.json."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "<unk>": 1} | {f"w{i}": i for i in range(2, vocab_size)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))


def test_truncated_tokenizer_json(guard, broken):
    _word_tokenizer(broken, 50)
    path = broken / "tokenizer.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    guard.refused(str(broken), needles=("tokenizer.json", "not a readable tokenizer", "re-save the tokenizer"))


def test_tokenizer_json_without_its_vocab(guard, broken):
    _word_tokenizer(broken, 50)
    _edit_json(broken / "tokenizer.json", lambda d: d["model"].pop("vocab"))
    guard.refused(str(broken), needles=("tokenizer.json", "not a readable tokenizer"))


def test_tokenizer_with_an_empty_vocab(guard, broken):
    _word_tokenizer(broken, 50)
    _edit_json(broken / "tokenizer.json", lambda d: d["model"].update(vocab={}))
    # tokenizers refuses an unk token outside the vocabulary or accepts an empty one: both refused.
    guard.refused(str(broken), needles=("tokenizer.json",))


def test_tokenizer_from_a_bigger_model(guard, broken):
    _word_tokenizer(broken, 500)  # the tiny text tower has 99 embeddings
    guard.refused(str(broken), needles=("tokenizer.json", "token ids up to 499", "vocab_size is 99"))


def test_malformed_tokenizer_config(guard, broken):
    _word_tokenizer(broken, 50)
    (broken / "tokenizer_config.json").write_text('{"pad_token": ')
    guard.refused(str(broken), needles=("tokenizer_config.json", "not valid JSON"))


def test_safetensors_cut_inside_its_header(guard, broken):
    path = broken / "model.safetensors"
    path.write_bytes(path.read_bytes()[:12])
    guard.refused(str(broken), needles=("model.safetensors", "not a readable safetensors file"))


def test_safetensors_with_integer_weights(guard, broken):
    import torch

    _rewrite_weights(broken, lambda sd: {k: (v.to(torch.int32) if "visual_projection" in k else v) for k, v in sd.items()})
    guard.refused(str(broken), needles=("visual_projection.weight", "dtype I32", "F32"))


def test_safetensors_with_a_wrong_shape(guard, broken):
    _rewrite_weights(broken, lambda sd: {k: (v[:, :-1].contiguous() if k == "text_projection.weight" else v)
                                         for k, v in sd.items()})
    guard.refused(str(broken), needles=("text_projection.weight", "config.json"))


def test_safetensors_missing_a_weight(guard, broken):
    _rewrite_weights(broken, lambda sd: {k: v for k, v in sd.items() if k != "text_projection.weight"})
    guard.refused(str(broken), needles=("lacks 1 weights", "text_projection.weight"))


def test_safetensors_with_nan_weights(guard, broken):
    def poison(sd: dict) -> dict:
        sd["visual_projection.weight"][0, 0] = float("nan")
        return sd

    _rewrite_weights(broken, poison)
    guard.refused(str(broken), needles=("visual_projection.weight", "NaN or Inf"))


def test_sharded_index_names_a_missing_shard(guard, broken):
    (broken / "model.safetensors").rename(broken / "model-00001-of-00002.safetensors")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    guard.refused(str(broken), needles=("model-00002-of-00002.safetensors", "missing"))


def test_towers_whose_widths_differ(guard, tmp_path):
    """SigLIP has no shared projection: a text tower narrower than the image tower cannot be
    compared with it (zero-shot scores are dot products)."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from tests.conftest import TEXT, VISION

    torch.manual_seed(0)
    folder = tmp_path / "siglip-mixed"
    SiglipModel(SiglipConfig(text_config=TEXT, vision_config=dict(VISION, hidden_size=48))).save_pretrained(folder)
    guard.refused(str(folder), needles=("image tower's embeddings are 48 wide", "text tower's are 32"))
    _no_staging(guard.tmp)


# ---------------------------------------------------------------------------------------------
# An artifact whose outputs hold NaN: parity fails (exit 3) naming the tower, nothing published.


def _export_then_poison(real_export):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    def export(self, spec, component, out_dir, options):
        # A real export, then the largest float weight of the real artifact set to NaN (as a
        # broken conversion or an overflowing kernel would leave it); ONNX Runtime then computes
        # NaN embeddings.
        artifact = real_export(self, spec, component, out_dir, options)
        model = onnx.load(str(artifact.path))
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == 1 else 0)
        values = numpy_helper.to_array(init).copy()
        values.flat[0] = np.nan
        init.CopyFrom(numpy_helper.from_array(values, init.name))
        onnx.save_model(model, str(artifact.path))
        return artifact

    return export


def test_artifact_with_nan_outputs_fails_parity(guard, tiny_clip_dir, monkeypatch):
    from edgevl.exporters.onnx import OnnxExporter

    monkeypatch.setattr(OnnxExporter, "_export", _export_then_poison(OnnxExporter._export))
    guard.refused(str(tiny_clip_dir), "--components", "image", code=3,
                  needles=("parity failed", "onnx/fp32/image", "NaN/Inf", "nothing was written"))
    _no_staging(guard.tmp)
    # Kept on request: the manifest (JSON has no NaN) holds null figures and the failure.
    kept = guard.tmp / "kept"
    code, err = guard.run(str(tiny_clip_dir), "--components", "image", "--keep-failed", out=kept, publishes=True)
    assert code == 3 and "\n" not in err and "NaN/Inf" in err and "artifacts kept" in err, err
    parity = json.loads((kept / "manifest.json").read_text())["artifacts"][0]["parity"]
    assert parity["passed"] is False and parity["cosine_min"] is None and parity["sqnr_db"] is None
    assert any("NaN/Inf" in f for f in parity["failures"])


def test_sharded_index_without_a_weight_map(guard, broken):
    (broken / "model.safetensors").rename(broken / "model-00001-of-00001.safetensors")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    guard.refused(str(broken), needles=("model.safetensors.index.json", "no weight_map"))


@pytest.mark.slow
def test_pinned_static_sizes_run_and_refuse_other_sizes(tiny_clip_dir, tmp_path):
    """A quantized artifact is built on the dynamic graph and its --static-shapes sizes pinned
    afterwards: the pinned graph runs at those sizes in ONNX Runtime, equal to the dynamic one,
    and refuses any other batch."""
    import numpy as np
    import onnxruntime as ort

    from edgevl.exporters.onnx import export_tower_onnx, pin_static_dims
    from edgevl.models.spec import LoadOptions
    from edgevl.registry import MODELS

    spec = MODELS.get("hf-clip")(str(tiny_clip_dir), LoadOptions())
    path = tmp_path / "text.onnx"
    export_tower_onnx(spec.text, path)
    dynamic = ort.InferenceSession(str(path))
    pinned_sizes = pin_static_dims(path, spec.text, {"batch": 2, "seq": 16})
    assert pinned_sizes == {"batch": 2, "seq": 16}
    pinned = ort.InferenceSession(str(path))
    assert [i.shape for i in pinned.get_inputs()] == [[2, 16], [2, 16]]
    assert pinned.get_outputs()[0].shape[0] == 2
    feeds = {k: v.numpy()[:2] for k, v in spec.text.example_inputs.items()}
    np.testing.assert_allclose(pinned.run(None, feeds)[0], dynamic.run(None, feeds)[0], atol=1e-6)
    with pytest.raises(Exception, match="input_ids|attention_mask"):
        pinned.run(None, {k: np.concatenate([v, v[:1]]) for k, v in feeds.items()})
