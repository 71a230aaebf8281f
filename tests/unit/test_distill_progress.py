"""`edgevl distill` says how far the teacher embeddings are (minutes on a CPU for real data)."""

from __future__ import annotations

from edgevl.distill.data import _teacher_embeddings
from edgevl.models.resolve import resolve_model
from edgevl.models.spec import LoadOptions


def test_teacher_embeddings_report_progress_and_the_end():
    from PIL import Image
    from skimage import data

    teacher = resolve_model(None, LoadOptions())  # the default model: real weights, a tokenizer
    images = [Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee", "rocket")]
    texts = ["a cat.", "a cup of coffee.", "a rocket.", "a dog.", "a red car."]
    lines: list[str] = []
    image, text = _teacher_embeddings(teacher, images, texts, chunk=2, log=lines.append, every=0.0)
    assert image.shape == (3, 1280) and text.shape == (5, 1280)
    # One line per chunk here (images 2+1, texts 2+2+1), each with the count done and the time left.
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["2/8", "3/8", "5/8", "7/8", "8/8"], lines
    assert all("s left" in line for line in lines[:-1]) and "left" not in lines[-1]
    # At the default pace the lines are seconds apart; a run this short prints the end only.
    ended: list[str] = []
    _teacher_embeddings(teacher, images, texts, chunk=2, log=ended.append, what=" (held out)", every=60.0)
    assert len(ended) == 1 and ended[0].startswith("teacher embeddings (held out): 8/8 images+texts, "), ended
