"""Calibration sets, observers and readers: known distributions, real photos, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevl.calibration import datasets
from edgevl.calibration.observers import (
    EntropyObserver, MinMaxObserver, MSEObserver, PercentileObserver, make_observer, qparams_for_range,
)
from edgevl.errors import CalibrationError


def _normal_with_outlier(n=200_000, outlier=100.0):
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    x[0] = outlier
    return x


def test_minmax_uniform_is_exact():
    obs = MinMaxObserver()
    for chunk in np.array_split(np.linspace(-2.0, 3.0, 1001, dtype=np.float32), 7):
        obs.update(chunk)
    assert obs.compute_range() == pytest.approx((-2.0, 3.0))
    q = obs.qparams()
    assert q.scale == pytest.approx(5.0 / 255) and 0 <= q.zero_point <= 255


def test_percentile_normal_matches_quantiles():
    x = np.random.default_rng(1).standard_normal(400_000).astype(np.float32)
    obs = PercentileObserver(99.0)
    for chunk in np.array_split(x, 4):  # the range grows between chunks: re-binning is exercised
        obs.update(chunk)
    lo, hi = obs.compute_range()
    # 0.5 % in each tail of N(0, 1): +-2.576
    assert lo == pytest.approx(-2.576, abs=0.05) and hi == pytest.approx(2.576, abs=0.05)


def test_histogram_rebinning_keeps_every_count():
    obs = PercentileObserver()
    obs.update(np.zeros(10, np.float32) + 0.5)
    obs.update(np.arange(-50, 50, dtype=np.float32))
    assert obs.hist.sum() == pytest.approx(110)


@pytest.mark.parametrize("cls", [EntropyObserver, MSEObserver])
def test_clipping_observers_ignore_a_lone_outlier(cls):
    # MSE counts the outlier's own clipping error, so its outlier is nearer (20 sigma).
    obs = cls()
    obs.update(_normal_with_outlier(outlier=100.0 if cls is EntropyObserver else 20.0))
    lo, hi = obs.compute_range(bits=8, symmetric=True)
    assert 2.0 < hi < 10.0 and -10.0 < lo < -2.0  # min-max would say 100


def test_mse_clip_for_gaussian_is_near_the_known_optimum():
    # For 8-bit uniform quantisation of N(0, 1) the MSE-optimal symmetric clip is about 4 sigma.
    obs = MSEObserver(steps=80)
    obs.update(np.random.default_rng(2).standard_normal(400_000).astype(np.float32))
    _, hi = obs.compute_range(bits=8, symmetric=True)
    assert 3.0 < hi < 5.0


def test_qparams_include_zero_and_unknown_observer_is_named():
    q = qparams_for_range(0.5, 2.0)
    assert q.lo == 0.0 and q.zero_point == 0
    with pytest.raises(ValueError, match="percentile"):
        make_observer("nope")


# ------------------------------------------------------------------ data sets


def _png(path, mode="RGB", size=(64, 48)):
    from PIL import Image

    Image.new(mode, size).save(path)
    return path


def test_image_folder_loads_in_fixed_order(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        _png(tmp_path / name)
    one = datasets.from_image_folder(tmp_path, seed=3)
    assert [p.split("/")[-1] for p in one.image_names] == ["a.png", "b.png", "c.jpg"]
    assert one._order(3, None) == datasets.from_image_folder(tmp_path, seed=3)._order(3, None)


def test_image_folder_errors_name_the_file(tmp_path):
    with pytest.raises(CalibrationError, match="no images"):
        datasets.from_image_folder(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="broken.jpg"):
        datasets.from_image_folder(tmp_path)
    (tmp_path / "broken.jpg").unlink()
    _png(tmp_path / "depth.png", mode="I;16")
    with pytest.raises(CalibrationError, match=r"depth.png.*mode 'I;16'"):
        datasets.from_image_folder(tmp_path)
    (tmp_path / "depth.png").unlink()
    _png(tmp_path / "tiny.png", size=(8, 8))
    with pytest.raises(CalibrationError, match=r"tiny.png.*8x8"):
        datasets.from_image_folder(tmp_path)


def test_jsonl_captions_labels_and_bad_lines(tmp_path):
    _png(tmp_path / "x.png")
    good = tmp_path / "cal.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in (
        {"text": "a dog on a sofa"}, {"label": "cat"}, {"caption": "a red car", "image": "x.png"})) + "\n")
    cal = datasets.from_jsonl(good)
    assert cal.texts == ["a dog on a sofa", "a photo of a cat.", "a red car"] and len(cal.images) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(CalibrationError, match="line 2"):
        datasets.from_jsonl(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CalibrationError, match="no usable rows"):
        datasets.load_calibration(empty)
    with pytest.raises(CalibrationError, match="empty"):
        datasets.load_calibration([])


def test_bundled_set_is_real_and_feeds_need_the_right_modality():
    from edgevl.calibration.samples import VIEWS_PER_PHOTO

    cal = datasets.bundled(max_photos=2)
    assert len(cal.images) == 2 * VIEWS_PER_PHOTO and len(cal.texts) > 20
    text_only = datasets.CalibrationSet([], [], ["a cat"], "texts")
    with pytest.raises(CalibrationError, match="no images"):
        text_only.feeds(object(), "image")


def test_readers_replay_the_same_feeds():
    from edgevl.calibration.readers import nncf_dataset, ort_reader

    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
    reader = ort_reader(feeds)
    first = [reader.get_next()["x"][0, 0] for _ in range(3)]
    assert reader.get_next() is None
    reader.rewind()
    assert reader.get_next()["x"][0, 0] == first[0] == 0
    assert [f["x"][0, 0] for f in nncf_dataset(feeds).get_inference_data()] == [0, 1, 2]
    with pytest.raises(CalibrationError):
        ort_reader([])


def test_non_finite_activation_names_the_layer():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgevl.compress.stats import collect_stats

    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["logx"], name="log"),
         helper.make_node("MatMul", ["logx", "w"], ["y"], name="dense")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    feeds = [{"x": np.ones((1, 4), np.float32)}, {"x": -np.ones((1, 4), np.float32)}]
    with pytest.raises(CalibrationError, match=r"'logx'.*dense.*sample 1"):
        collect_stats(model, ["logx"], feeds, "minmax")
