"""The bundled photos come in two pools: "core" (scikit-image and scikit-learn, edgevl's own
dependencies) and "full" (plus the `photos` extra), with Debian's Tux Paint stamps beside either
where that package is installed. A file keeps its split whichever pool is read, so artifacts built
with and without the extra or the stamps are judged on consistent splits."""

from __future__ import annotations

import sys

import pytest

from edgevl.calibration import samples, tuxpaint
from edgevl.calibration.samples import CORE_PACKAGES, PHOTOS_EXTRA_PACKAGES, SPLITS

needs_stamps = pytest.mark.skipif(
    not tuxpaint.STAMPS_ROOT.is_dir(),
    reason=f"{tuxpaint.DEBIAN_PACKAGE} is not installed (`make setup` installs it where apt-get may run as root)")


def _hide(monkeypatch, packages) -> None:
    """Make `packages` uninstalled for this test: a None entry in sys.modules makes
    importlib.util.find_spec return None and `import` fail, as for a package that is absent."""
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def test_this_suite_reads_the_full_pool():
    """`make` installs the dev extra, which pulls the photos extra: the suite judges on every photo."""
    assert samples.pool() == "full"
    record = samples.pool_record()
    assert {k: v for k, v in record.items() if k != "tuxpaint"} == {
        "pool": "full", "packages": ["scikit-image", "scikit-learn", "matplotlib", "mahotas", "PyWavelets", "pydicom"]}
    assert {s.source.split("/")[0] for s in samples.bundled_samples()} == set(CORE_PACKAGES + PHOTOS_EXTRA_PACKAGES)


@pytest.mark.parametrize("hidden", [PHOTOS_EXTRA_PACKAGES, ("pydicom",)], ids=["no photos extra", "part of it"])
def test_without_the_photos_extra_each_file_keeps_its_split(monkeypatch, hidden):
    full = {split: samples.bundled_samples(split) for split in SPLITS}
    full_records = {split: samples.split_record(split) for split in SPLITS}
    _hide(monkeypatch, hidden)
    assert samples.pool() == "core"  # a partial extra counts as absent: only two pools exist
    assert samples.pool_record() == {"pool": "core", "packages": ["scikit-image", "scikit-learn"],
                                     "tuxpaint": tuxpaint.record()}
    stamps = " + Tux Paint stamps" if tuxpaint.stamps() else ""
    for split in SPLITS:
        core = samples.bundled_samples(split)
        assert core == [s for s in full[split] if s.source.split("/")[0] in CORE_PACKAGES]
        record = samples.split_record(split)
        assert record["source"] == f"bundled {split} split, core pool{stamps}"
        assert full_records[split]["source"] == f"bundled {split} split, full pool{stamps}"
        assert 0 < record["photos"] < full_records[split]["photos"] and record["sha256"] != full_records[split]["sha256"]
    # The README's quoted parity photos are core photos; the parity split still loads and views.
    parity = samples.bundled_parity_set()
    assert {"cat", "coffee", "rocket", "astronaut"} <= set(parity.labels)
    assert len(parity.images) == samples.split_record("parity")["images"]


def test_a_missing_file_of_a_pool_in_use_is_an_error_naming_the_package(monkeypatch, tmp_path):
    from edgevl.errors import MissingBackendError

    # scikit-image "installed" without its data folder: the core pool cannot shrink silently.
    (tmp_path / "skimage").mkdir()
    (tmp_path / "skimage" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "skimage", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingBackendError, match=r"skimage/data/astronaut.png is missing.*scikit-image"):
        samples.bundled_samples("parity")


@needs_stamps
def test_the_stamps_make_splits_of_hundreds():
    """With the Tux Paint package installed: hundreds of images in all, and parity (the split every
    artifact is judged on) reaches 200 images and 200 texts; each stamp's split is its caption's."""
    records = {split: samples.split_record(split) for split in SPLITS}
    assert sum(r["images"] for r in records.values()) >= 300
    assert records["parity"]["images"] >= 200 and records["parity"]["texts"] >= 200
    assert records["gate"]["images"] <= 120, "the int8 gate runs every candidate over the gate split"
    found = tuxpaint.stamps()
    assert len(found) >= 250 and samples.pool_record()["tuxpaint"]["stamps"] == len(found)
    for stamp in found:
        assert stamp.split == tuxpaint.split_of(stamp.caption)
        assert not tuxpaint.EXCLUDED_FOLDERS & set(stamp.relative.split("/")[:-1])
        assert f"tuxpaint/{stamp.relative}" in records[stamp.split]["files"]
    parity = samples.bundled_parity_set()
    assert len(parity.images) == records["parity"]["images"] and len(parity.texts) == records["parity"]["texts"]
    # The stamps' captions are parity's zero-shot classes beside the photos' label prompts.
    assert set(parity.prompts) >= {s.caption for s in tuxpaint.stamps("parity")}


def test_without_the_stamps_the_package_photos_are_the_pool(monkeypatch, tmp_path):
    """The stamps folder empty (`EDGEVL_TUXPAINT_STAMPS`, as if the package were absent): the
    splits are the package photos alone, the pool record says so, and stamps read from a folder
    keep their split (a caption's hash) whatever else the folder holds."""
    monkeypatch.setenv(tuxpaint.ROOT_ENV, str(tmp_path))
    assert tuxpaint.stamps() == [] and samples.pool_record()["tuxpaint"] is None
    for split in SPLITS:
        record = samples.split_record(split)
        assert record["source"] == f"bundled {split} split, {samples.pool()} pool"
        assert record["files"] == [s.source for s in samples.bundled_samples(split)]
        assert record["images"] == len(record["files"]) * samples.VIEWS_PER_PHOTO
    # A folder of two stamps: the one outside `symbols/` is read, composited on white, and lands
    # in its caption's split.
    import numpy as np
    from PIL import Image

    root = tmp_path / "stamps"
    rgba = np.zeros((70, 100, 4), np.uint8)
    index = np.arange(60 * 80, dtype=np.uint32).reshape(60, 80)
    rgba[5:65, 10:90, 0], rgba[5:65, 10:90, 1], rgba[5:65, 10:90, 3] = index % 256, index // 256, 255
    for folder, caption in (("animals", "A striped thing.\nfr.utf8=Une chose.\n"), ("symbols", "Another thing.\n")):
        (root / folder).mkdir(parents=True)
        Image.fromarray(rgba, "RGBA").save(root / folder / "thing.png")
        (root / folder / "thing.txt").write_text(caption, encoding="utf-8")
    monkeypatch.setenv(tuxpaint.ROOT_ENV, str(root))
    found = tuxpaint.stamps()
    assert [(s.relative, s.caption) for s in found] == [("animals/thing.png", "A striped thing.")]
    split = tuxpaint.split_of("a  STRIPED thing.")
    assert found[0].split == split and "tuxpaint/animals/thing.png" in samples.split_record(split)["files"]
    image = tuxpaint.load_stamp(found[0].path)
    assert image.size == (100, 100) and image.getpixel((0, 0)) == (255, 255, 255)
    # Canvas (50, 50) is the stamp's (x 50, y 35): 15 px of white above it.
    assert image.getpixel((50, 50)) == (int(index[30, 40] % 256), int(index[30, 40] // 256), 0)
