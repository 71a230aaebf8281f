"""The bundled data splits: calibration, gate and parity never share a photo, a text or a view
(package photos and Tux Paint stamps alike), and every export's manifest records each split with
its sizes and content hash."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations

import numpy as np
import pytest

from edgevl.calibration import datasets, samples
from edgevl.calibration.samples import SPLITS, VIEWS_PER_PHOTO, Sample, content_hash, file_sha256, split_record
from edgevl.cli import main


def _pixel_hash(image) -> str:
    pixels = np.asarray(image)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def _fingerprints(split_samples: list[Sample], texts: list[str]) -> dict[str, set[str]]:
    views = [v for s in split_samples for v in samples.sample_views(s)]
    return {
        "source file": {file_sha256(s.path) for s in split_samples},
        "text": set(texts),
        "view pixels": {_pixel_hash(v) for v in views},
    }


def _overlaps(by_split: dict[str, dict[str, set[str]]]) -> list[str]:
    found = []
    for a, b in combinations(sorted(by_split), 2):
        for kind in by_split[a]:
            shared = by_split[a][kind] & by_split[b][kind]
            if shared:
                found.append(f"{a} and {b} share {len(shared)} {kind}(s), e.g. {sorted(shared)[0][:60]!r}")
    return found


@pytest.fixture(scope="module")
def fingerprints() -> dict[str, dict[str, set[str]]]:
    return {split: _fingerprints(samples.split_samples(split), samples.split_texts(split)) for split in SPLITS}


def test_no_two_splits_share_a_photo_a_text_or_a_view(fingerprints):
    assert _overlaps(fingerprints) == []
    views = {split: len(fp["view pixels"]) for split, fp in fingerprints.items()}
    # Every view of every photo is distinct, so the counts the manifest records are real.
    assert views == {split: split_record(split)["images"] for split in SPLITS}
    # The stamps' captions (their zero-shot classes) too: no caption in two splits, in any case.
    keys = {split: {" ".join(s.caption.lower().split()) for s in samples.split_samples(split)} for split in SPLITS}
    assert all(not keys[a] & keys[b] for a, b in combinations(SPLITS, 2))


def test_the_overlap_check_catches_each_kind_of_leak(tmp_path):
    from PIL import Image

    parity = samples.bundled_samples("parity")[:2]
    chelsea = parity[1]
    assert chelsea.name == "chelsea"
    # The same pixels in another file (re-encoded, so the file hash differs), a reused caption.
    copy = tmp_path / "chelsea-copy.png"
    Image.open(chelsea.path).save(copy, optimize=True)
    assert file_sha256(copy) != file_sha256(chelsea.path)
    leaky = {
        "parity": _fingerprints(parity, [s.caption for s in parity]),
        "gate": _fingerprints([Sample("copy", copy, "a new caption", "x")], [parity[0].caption]),
    }
    found = " | ".join(_overlaps(leaky))
    assert "1 text(s)" in found and "5 view pixels(s)" in found
    same_file = {"parity": leaky["parity"], "gate": _fingerprints([chelsea], ["another caption"])}
    assert "1 source file(s)" in " | ".join(_overlaps(same_file))


def test_split_sizes_labels_and_readme_photos():
    every = samples.bundled_samples()
    sizes = {split: len(samples.bundled_samples(split)) for split in SPLITS}
    assert sum(sizes.values()) == len(every) >= 30
    assert sizes["calibration"] >= 10 and sizes["gate"] >= 6 and sizes["parity"] >= 10
    labels = [s.label for s in every]
    assert len(set(labels)) == len(labels), "each photo has its own label, so class lists differ per split"
    parity = {s.name: s.label for s in samples.bundled_samples("parity")}
    for name, label in {"chelsea": "cat", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut"}.items():
        assert parity[name] == label  # README examples quote these
    for s in every:
        assert min(samples.load_rgb(s.path).size) >= 32, s.source
        assert s.source.split("/")[0] in samples.SOURCES
    with pytest.raises(ValueError, match="choose from"):
        samples.bundled_samples("test")


def test_bundled_calibration_is_the_calibration_split():
    cal = datasets.bundled()
    every = samples.split_samples("calibration")
    names = [f"{s.name}#{i}" for s in every for i in range(1 if s.is_stamp else VIEWS_PER_PHOTO)]
    assert cal.image_names == names
    record = split_record("calibration")
    assert cal.record() == {k: v for k, v in record.items() if k not in ("files", "pool")} | {"source": cal.source}
    judged = set(samples.split_texts("gate")) | set(samples.split_texts("parity"))
    assert not judged & set(cal.texts)


def test_content_hash_ignores_order_and_sees_every_change():
    files, texts = ["aa", "bb"], ["a cat", "a dog"]
    h = content_hash(files, texts)
    assert h == content_hash(files[::-1], texts[::-1])
    assert h != content_hash(files, ["a cat", "a dog."]) and h != content_hash(["aa"], texts)


def test_user_calibration_folder_is_recorded(tmp_path):
    from PIL import Image

    for i, name in enumerate(("b.png", "a.png")):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / name)
    record = datasets.from_image_folder(tmp_path).record()
    hashes = [file_sha256(tmp_path / n) for n in ("a.png", "b.png")]
    assert record == {"source": str(tmp_path), "photos": 2, "images": 2, "texts": 0,
                      "sha256": content_hash(hashes, [])}


def test_bundled_splits_are_recorded_when_no_calib_is_given():
    from edgevl.pipeline import data_splits

    splits = data_splits(None)
    assert set(splits) == set(SPLITS)
    for split in SPLITS:
        assert splits[split] == split_record(split)
        record = splits[split]
        stamps = sum(f.startswith("tuxpaint/") for f in record["files"])
        assert record["photos"] == len(record["files"]) > 0
        assert record["images"] == (record["photos"] - stamps) * VIEWS_PER_PHOTO + stamps
        assert record["pool"] == samples.pool_record()
        assert record["texts"] == len(samples.split_texts(split)) and len(record["sha256"]) == 64
    assert len({splits[s]["sha256"] for s in SPLITS}) == 3


def test_export_manifest_records_the_three_splits(tiny_clip_dir, tmp_path):
    """A real export (tiny CLIP text tower, ONNX Runtime) with `--calib`: the manifest records the
    user's calibration data, and the bundled gate and parity splits."""
    from PIL import Image

    folder = tmp_path / "calib"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder / "x.png")
    out = tmp_path / "out"
    assert main(["export", str(tiny_clip_dir), "--components", "text", "--calib", str(folder),
                 "--out", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    splits = manifest["data_splits"]
    assert set(splits) == set(SPLITS)
    assert splits["calibration"] == {"source": str(folder), "photos": 1, "images": 1, "texts": 0,
                                     "sha256": content_hash([file_sha256(folder / "x.png")], [])}
    assert splits["gate"] == split_record("gate") and splits["parity"] == split_record("parity")
    # Parity judged on exactly the parity split's views, and reported both agreements.
    assert manifest["parity_set"]["split"] == "parity"
    assert manifest["parity_set"]["images"] == splits["parity"]["images"]
    parity = manifest["artifacts"][0]["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["top1_agreement_strict"] is not None
