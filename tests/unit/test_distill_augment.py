"""`edgevl distill`'s held-out evaluation over the 1000 ImageNet class prompts, and function
matching (`--augment function-matching`): teacher and student see the same fresh view of each
training photo every step. On a small CLIP teacher trained on the bundled photos."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    from edgevl.models.tiny import tiny_checkpoint

    return str(tiny_checkpoint(
        "clip", tmp_path_factory.mktemp("teacher") / "tiny-clip", steps=60,
        text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32)))


@pytest.fixture(scope="module")
def spec(teacher):  # noqa: ANN201 - ModelSpec
    from edgevl.models.spec import LoadOptions
    from edgevl.pipeline import resolve_model

    return resolve_model(teacher, LoadOptions())


def test_1000_prompt_agreement_equals_a_direct_computation(spec, tmp_path):
    """`evaluate` ranks every held-out image against the 1000 prompts with each model's prompt
    embeddings computed once; a plain per-image loop over fresh forward passes gives the same."""
    import torch

    from edgevl.distill import parse_student
    from edgevl.distill.data import build_data, evaluate, imagenet_prompts, student_preprocess
    from edgevl.distill.inherit import build_student
    from edgevl.distill.sources import load_heldout, load_source
    from edgevl.preprocess import preprocess_images

    heldout = load_heldout(None, "bundled")
    data = build_data(spec, load_source("bundled"), heldout, 32, 1, 0, "data", tmp_path)
    student = build_student(parse_student("vit-micro,text=inherit,text_layers=0+2"), spec, seed=0).eval()
    got = evaluate(student, data, chunk=7, text_chunk=300)

    prompts = imagenet_prompts()
    assert len(prompts) == 1000 and len(heldout.images) >= 50
    feeds = {k: torch.from_numpy(v) for k, v in spec.tokenize(prompts).items()}
    cap_feeds = {k: torch.from_numpy(v) for k, v in spec.tokenize(heldout.captions).items()}
    pre = student_preprocess(spec.preprocess, 32)
    top1 = top5 = caption = image_tower = text_tower = 0
    with torch.no_grad():
        t_text, s_text = spec.text.module(**feeds), student.text(**feeds)
        t_cap, s_cap = spec.text.module(**cap_feeds), student.text(**cap_feeds)
        for i, image in enumerate(heldout.images):
            t_img = spec.image.module(pixel_values=torch.from_numpy(preprocess_images([image], spec.preprocess)))
            s_img = student.image(torch.from_numpy(preprocess_images([image], pre)))
            t_pick = int((t_img @ t_text.T).argmax())
            s_scores = (s_img @ s_text.T)[0]
            top1 += int(int(s_scores.argmax()) == t_pick)
            image_tower += int(int((s_img @ t_text.T).argmax()) == t_pick)
            text_tower += int(int((t_img @ s_text.T).argmax()) == t_pick)
            top5 += int(t_pick in s_scores.topk(5).indices.tolist())
            caption += int(int((s_img @ s_cap.T).argmax()) == heldout.caption_of[i])
    n = len(heldout.images)
    assert got["imagenet_top1"] == pytest.approx(top1 / n, abs=1e-9)
    assert got["imagenet_top5"] == pytest.approx(top5 / n, abs=1e-9)
    # float32 means: within 1e-6, far below one image's 1/n
    assert got["imagenet_top1_image_tower"] == pytest.approx(image_tower / n, abs=1e-6)
    assert got["imagenet_top1_text_tower"] == pytest.approx(text_tower / n, abs=1e-6)
    assert got["student_caption_accuracy"] == pytest.approx(caption / n, abs=1e-9)
    assert got["imagenet_text_cosine"] == pytest.approx(float((s_text * t_text).sum(-1).mean()), abs=1e-5)
    assert 0 <= got["imagenet_top1"] <= got["imagenet_top5"] <= 1
    # The teacher's own caption accuracy on the parity photos, from its cached embeddings.
    assert 0 <= got["teacher_caption_accuracy"] <= 1 and len(heldout.captions) == len(set(heldout.captions))


def _fm_config(teacher: str, out: Path, **kw):  # noqa: ANN202 - DistillConfig
    from edgevl.distill import parse_student
    from edgevl.distill.config import DistillConfig

    base = dict(teacher=teacher, student=parse_student("vit-micro,text=inherit,text_layers=0+2"), data="bundled",
                out=out, steps=3, batch=8, text_batch=4, views=1, text_corpus="data", checkpoint_every=0,
                eval_every=0, augment="function-matching", cache_dir=out.parent / "cache")
    return DistillConfig(**{**base, **kw})


def _pixels(image) -> str:  # noqa: ANN001 - Pillow image
    import numpy as np

    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def _recorded_run(teacher: str, out: Path, monkeypatch, **kw) -> dict:  # noqa: ANN001
    """One function-matching run; records each step's views and model inputs (the trainer's
    hook), every pixel tensor the teacher's and the student's image towers were given, and the
    photos function matching drew from."""
    import edgevl.distill.trainer as trainer
    import edgevl.models.resolve
    from edgevl.distill.trainer import distill_run

    rec = {"views": [], "teacher_in": [], "student_in": [], "photos": []}
    resolve, build, matching = edgevl.models.resolve.resolve_model, trainer.build_student, trainer.FunctionMatching

    def resolve_hooked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        spec = resolve(*args, **kwargs)
        spec.image.module.register_forward_pre_hook(
            lambda _m, args, kwargs: rec["teacher_in"].append(kwargs.get("pixel_values", args[0] if args else None)),
            with_kwargs=True)
        return spec

    def build_hooked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        student = build(*args, **kwargs)
        student.image.register_forward_pre_hook(lambda _m, args: rec["student_in"].append(args[0]))
        return student

    class Recorded(matching):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            rec["photos"] = list(args[-1])

    monkeypatch.setattr(edgevl.models.resolve, "resolve_model", resolve_hooked)
    monkeypatch.setattr(trainer, "build_student", build_hooked)
    monkeypatch.setattr(trainer, "FunctionMatching", Recorded)
    result = distill_run(_fm_config(teacher, out, **kw), quiet=True,
                         on_views=lambda step, views, t_px, s_px: rec["views"].append((step, views, t_px, s_px)))
    monkeypatch.undo()
    rec["result"] = result
    return rec


def test_function_matching_shows_teacher_and_student_the_same_view_deterministically_without_parity(
        teacher, tmp_path, monkeypatch):
    import torch

    from edgevl.calibration.samples import sample_views, split_samples

    first = _recorded_run(teacher, tmp_path / "a", monkeypatch)
    assert [step for step, *_ in first["views"]] == [0, 1, 2]
    for step, view, t_px, s_px in first["views"]:
        assert view.shape == (8, 3, 32, 32) and 0 <= float(view.min()) and float(view.max()) <= 1
        # Teacher (32 px) and student (32 px): one tensor, the very one each tower was given.
        assert s_px is t_px
        assert any(x is t_px for x in first["teacher_in"]) and any(x is s_px for x in first["student_in"])
    # Fresh views every step: no two steps' views alike.
    assert not torch.equal(first["views"][0][1], first["views"][1][1])

    # The same seed gives the same views and the same student; another seed other views.
    again = _recorded_run(teacher, tmp_path / "b", monkeypatch)
    for (_, va, *_), (_, vb, *_) in zip(first["views"], again["views"]):
        assert torch.equal(va, vb)
    for name, value in first["result"].student.state_dict().items():
        assert torch.equal(value, again["result"].student.state_dict()[name]), name
    other = _recorded_run(teacher, tmp_path / "c", monkeypatch, seed=1, steps=1)
    assert not torch.equal(other["views"][0][1], first["views"][0][1])

    # The photos the views are drawn from: the calibration and gate photos and stamps, no parity
    # photo or stamp (a package photo's first view is the photo as it is).
    parity = {_pixels(v) for s in split_samples("parity") for v in sample_views(s)}
    allowed = {_pixels(sample_views(s)[0]) for s in split_samples("calibration") + split_samples("gate")}
    drawn = {_pixels(p) for p in first["photos"]}
    assert drawn and drawn <= allowed and not drawn & parity
    # The held-out evaluation ran on the parity photos: before training and after.
    assert [m["step"] for m in first["result"].metrics] == [0, 3] and "imagenet_top1" in first["result"].evaluation


def test_function_matching_at_two_sizes_resizes_one_view(spec):
    """A student smaller than the teacher gets the teacher's view resized, not another view."""
    import torch

    from edgevl.distill.augment import model_input
    from edgevl.distill.data import student_preprocess
    from edgevl.distill.sources import load_source
    from edgevl.distill.trainer import FunctionMatching

    photos = load_source("bundled").images
    pre = student_preprocess(spec.preprocess, 16)
    fm = FunctionMatching(spec, pre, 0, photos)
    seen = []
    fm.seen = lambda *a: seen.append(a)
    teacher_in = []
    handle = spec.image.module.register_forward_pre_hook(
        lambda _m, args, kwargs: teacher_in.append(kwargs["pixel_values"]), with_kwargs=True)
    try:
        t_img, s_px = fm.inputs(torch.tensor([0, 5, 9, 3]), range(1, 3), step=7)
    finally:
        handle.remove()
    (_, views, t_px, s_seen), = seen
    assert views.shape == (2, 3, 32, 32) and s_px is s_seen and s_px.shape == (2, 3, 16, 16)
    assert teacher_in[0] is t_px and torch.equal(t_px, model_input(views, spec.preprocess))
    assert torch.equal(s_px, model_input(views, pre)) and t_img.shape[0] == 2


def test_extra_data_folder_skips_a_copy_of_a_parity_photo_before_decoding(tmp_path, monkeypatch):
    import shutil

    import edgevl.calibration.samples as samples
    from edgevl.distill.sources import load_heldout, training_source

    folder = tmp_path / "photos" / "dog"
    folder.mkdir(parents=True)
    parity = samples.bundled_samples("parity")[0].path
    gate = samples.bundled_samples("gate")[0].path
    shutil.copy(parity, folder / f"copy{parity.suffix}")
    shutil.copy(gate, folder / f"mine{gate.suffix}")
    heldout = load_heldout(None, "bundled")
    read, load = [], samples.load_rgb
    monkeypatch.setattr(samples, "load_rgb", lambda path: read.append(Path(path)) or load(path))
    lines = []
    source = training_source("bundled", str(tmp_path / "photos"), heldout, lines.append)
    parity_files = {s.path for s in samples.bundled_samples("parity")} | {folder / f"copy{parity.suffix}"}
    assert read and not parity_files & set(read)
    bundled = samples.split_samples("calibration") + samples.split_samples("gate")
    assert source.texts[-1] == "a photo of a dog."
    assert len(source.images) == sum(1 if s.is_stamp else 2 for s in bundled) + 1
    assert lines == ["training data: skipped 1 file(s) that are held-out photos"]


@pytest.mark.parametrize("argv, message", [
    (["--augment", "crops"], "invalid choice: 'crops'"),
    (["--extra-data", "/nonexistent/folder"], "--extra-data /nonexistent/folder does not exist"),
    (["--extra-data", "bundled"], "give an image folder or a .jsonl file"),
])
def test_bad_augment_options_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    from edgevl.cli import main

    code = main(["distill", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_eval_line_names_each_student_tower_alone():
    """The printed evaluation line says which tower holds agreement back, when it is measured."""
    from edgevl.distill.trainer import eval_summary

    m = {"imagenet_top1": 0.4, "imagenet_top5": 0.7, "imagenet_top1_image_tower": 0.455,
         "imagenet_top1_text_tower": 0.545, "agreement": 0.5, "image_cosine": 0.8, "text_cosine": 0.9}
    line = eval_summary(m)
    assert "top-1 0.400 top-5 0.700 (student image tower alone 0.455, text tower alone 0.545)" in line
    assert "tower alone" not in eval_summary({k: v for k, v in m.items() if "tower" not in k})
