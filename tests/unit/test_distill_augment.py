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
    top1 = top5 = caption = 0
    with torch.no_grad():
        t_text, s_text = spec.text.module(**feeds), student.text(**feeds)
        t_cap, s_cap = spec.text.module(**cap_feeds), student.text(**cap_feeds)
        for i, image in enumerate(heldout.images):
            t_img = spec.image.module(pixel_values=torch.from_numpy(preprocess_images([image], spec.preprocess)))
            s_img = student.image(torch.from_numpy(preprocess_images([image], pre)))
            t_pick = int((t_img @ t_text.T).argmax())
            s_scores = (s_img @ s_text.T)[0]
            top1 += int(int(s_scores.argmax()) == t_pick)
            top5 += int(t_pick in s_scores.topk(5).indices.tolist())
            caption += int(int((s_img @ s_cap.T).argmax()) == heldout.caption_of[i])
    n = len(heldout.images)
    assert got["imagenet_top1"] == pytest.approx(top1 / n, abs=1e-9)
    assert got["imagenet_top5"] == pytest.approx(top5 / n, abs=1e-9)
    assert got["student_caption_accuracy"] == pytest.approx(caption / n, abs=1e-9)
    assert got["imagenet_text_cosine"] == pytest.approx(float((s_text * t_text).sum(-1).mean()), abs=1e-5)
    assert 0 <= got["imagenet_top1"] <= got["imagenet_top5"] <= 1
    # The teacher's own caption accuracy on the parity photos, from its cached embeddings.
    assert 0 <= got["teacher_caption_accuracy"] <= 1 and len(heldout.captions) == len(set(heldout.captions))
