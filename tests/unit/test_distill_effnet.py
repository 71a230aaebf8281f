"""The image student inherited from the default teacher's EfficientNet-Lite0 (`--student
effnet-lite0`): it starts from the teacher's weights, so before any training it already picks the
teacher's ImageNet class on the held-out parity photos far more often than a random student of the
same shape; and no parity photo is ever a distillation training photo."""

from __future__ import annotations

import hashlib

import pytest

from edgevl.cli import main

PRESET = "effnet-lite0"
# The blocks the preset keeps (12 of 16 at 160 px), as `block_importance` ranks them on the
# calibration photos (docs/distillation.md). Named here so the test does not spend its time
# re-measuring them (a minute of forward passes on two cores); the weights are the same either way.
PRESET_BLOCKS = "0+1+2+3+4+5+8+9+11+12+14+15"


@pytest.fixture(scope="module")
def teacher():  # noqa: ANN201 - ModelSpec
    from edgevl.models.resolve import resolve_model
    from edgevl.models.spec import LoadOptions

    return resolve_model(None, LoadOptions())


def _picks(image_embeds, text_embeds):  # noqa: ANN001, ANN202 - tensors
    return (image_embeds @ text_embeds.T).argmax(-1)


@pytest.mark.slow
def test_inherited_student_at_step_0_agrees_with_the_teacher_far_above_a_random_one(teacher):
    import torch

    from edgevl.distill import parse_student
    from edgevl.distill.data import student_preprocess
    from edgevl.distill.inherit import build_student
    from edgevl.distill.students import StudentPair, build_tower
    from edgevl.models.effnet_minilm import imagenet_class_names
    from edgevl.preprocess import preprocess_images

    preset = parse_student(PRESET)
    cfg = parse_student(f"{PRESET},keep_blocks={PRESET_BLOCKS}")
    inherited = build_student(cfg, teacher, seed=0).eval()
    arch = inherited.image.arch
    assert arch.resolution == preset.resolution < 224 and len(arch.blocks) == preset.blocks < 16
    # The teacher's own weights, copied: each kept block equals the teacher's block of that index.
    net = teacher.image.module.net
    for block, i in zip(inherited.image.net._blocks, arch.blocks):
        for (name, value), ref in zip(block.state_dict().items(), net._blocks[i].state_dict().values()):
            assert torch.equal(value, ref), (i, name)
    torch.manual_seed(0)
    random = StudentPair(build_tower(arch), build_tower(inherited.text.arch)).eval()

    from edgevl.distill.sources import load_heldout

    photos = load_heldout("bundled-parity", "bundled")  # held out: every view of each parity photo
    prompts = [f"a photo of a {name}." for name in imagenet_class_names()]
    feeds = {k: torch.from_numpy(v) for k, v in teacher.tokenize(prompts).items()}
    length = int(feeds["attention_mask"].sum(-1).max())  # padding past the longest prompt changes nothing
    feeds = {k: v[:, :length] for k, v in feeds.items()}
    teacher_px = torch.from_numpy(preprocess_images(photos.images, teacher.preprocess))
    student_px = torch.from_numpy(preprocess_images(photos.images, student_preprocess(teacher.preprocess,
                                                                                      cfg.resolution)))
    with torch.no_grad():
        teacher_text = teacher.text.module(**feeds)
        target = _picks(teacher.image.module(pixel_values=teacher_px), teacher_text)
        both, image_only = {}, {}
        for name, student in (("inherited", inherited), ("random", random)):
            image = student.image(student_px)
            both[name] = float((_picks(image, student.text(**feeds)) == target).float().mean())
            image_only[name] = float((_picks(image, teacher_text) == target).float().mean())
    assert len(photos.images) >= 50 and len(prompts) == 1000
    # Both towers of the student against both of the teacher's, and the image student alone
    # (scored against the teacher's text embeddings).
    assert both["random"] <= 0.05 and both["inherited"] >= 0.2, both
    assert image_only["random"] <= 0.05 and image_only["inherited"] >= 0.4, image_only

    # What `edgevl distill` prints: fewer parameters and FLOPs in both towers.
    from edgevl.distill.sizes import tower_sizes

    sizes = tower_sizes(teacher, inherited, cfg.resolution)
    assert 0.3 < sizes["image"]["flops_ratio"] < 0.45 and 0.45 < sizes["text"]["flops_ratio"] < 0.55, sizes
    assert all(s["student_params"] < s["teacher_params"] for s in sizes.values()), sizes


@pytest.mark.slow
@pytest.mark.parametrize("spec, message", [
    ("effnet-lite0,blocks=5", "choose 7..16"),
    ("effnet-lite0,keep_blocks=0+1+3+5+8+11", "lacks stage-first block(s) 15"),
    ("effnet-lite0,keep_blocks=0+1+3+5+8+11+15+16", "distinct block indices in 0..15"),
])
def test_a_student_the_teacher_cannot_give_is_refused_before_any_forward_pass(teacher, spec, message):
    from edgevl.distill import parse_student
    from edgevl.distill.inherit import check_student
    from edgevl.errors import InputError

    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_student(parse_student(spec), teacher)


def test_no_parity_photo_is_in_the_distillation_training_set():
    """Training (`--data bundled`) reads the calibration and gate splits of the whole pool, package
    photos and Tux Paint stamps; no parity photo or stamp is among them, by file hash or by pixels
    (every view), and the held-out evaluation is exactly the whole parity split."""
    import numpy as np

    from edgevl.calibration import tuxpaint
    from edgevl.calibration.samples import (bundled_samples, file_sha256, load_rgb, sample_views, split_samples,
                                            views)
    from edgevl.distill.sources import load_heldout, load_source

    def pixels(image) -> str:  # noqa: ANN001 - Pillow image
        return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()

    parity = split_samples("parity")
    parity_files = {file_sha256(s.path) for s in parity}
    parity_pixels = {pixels(v) for s in parity for v in sample_views(s)}
    training = load_source("bundled")  # what `edgevl distill --data bundled` trains on
    assert training.images and not parity_files & set(training.files)
    assert not parity_pixels & {pixels(image) for image in training.images}
    # Every calibration and gate sample is trained on, the stamps included where installed.
    trained = split_samples("calibration") + split_samples("gate")
    assert set(training.files) == {file_sha256(s.path) for s in trained}
    assert len(training.images) == sum(1 if s.is_stamp else 2 for s in trained)
    if tuxpaint.stamps():
        assert any(s.is_stamp for s in trained) and any(s.is_stamp for s in parity)
    # The photos that rank the EfficientNet blocks (the calibration split) are not parity photos either.
    assert not parity_files & {file_sha256(s.path) for s in bundled_samples("calibration")}
    # The held-out evaluation is exactly the parity split: every view of each package photo and
    # each stamp (220 images with the stamps installed); the photos that rank the blocks exactly
    # the calibration package photos' views.
    heldout = load_heldout(None, "bundled")
    assert {f.split("#")[0] for f in heldout.files} == parity_files
    assert {pixels(v) for v in heldout.images} == parity_pixels
    assert len(heldout.images) == sum(1 if s.is_stamp else 5 for s in parity)
    assert len(heldout.prompts) == len(heldout.classes) and max(heldout.labels) < len(heldout.classes)
    from edgevl.distill.sources import bundled_photo_views

    calibration = bundled_samples("calibration")
    assert [pixels(v) for v in bundled_photo_views("calibration")[1]] == [
        pixels(v) for s in calibration for v in views(load_rgb(s.path))]


@pytest.mark.parametrize("student, message", [
    ("effnet-lite0,resolution=150", "multiple of 32 for image=effnet"),
    ("vit-tiny,blocks=10", "need image=effnet"),
    ("effnet-lite0,keep_blocks=0+x", "needs an integer"),
    ("effnet-lite0,blocks=10,keep_blocks=0+1", "give one"),
])
def test_bad_effnet_student_spec_is_one_line_and_exit_2(student, message, tmp_path, capsys):
    code = main(["distill", "--student", student, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
