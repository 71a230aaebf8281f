"""The bundled photos come in two pools: "core" (scikit-image and scikit-learn, edgevl's own
dependencies) and "full" (plus the `photos` extra). A file keeps its split whichever pool is read,
so artifacts built with and without the extra are judged on consistent splits."""

from __future__ import annotations

import sys

import pytest

from edgevl.calibration import samples
from edgevl.calibration.samples import CORE_PACKAGES, PHOTOS_EXTRA_PACKAGES, SPLITS


def _hide(monkeypatch, packages) -> None:
    """Make `packages` uninstalled for this test: a None entry in sys.modules makes
    importlib.util.find_spec return None and `import` fail, as for a package that is absent."""
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def test_this_suite_reads_the_full_pool():
    """`make` installs the dev extra, which pulls the photos extra: the suite judges on every photo."""
    assert samples.pool() == "full"
    assert samples.pool_record() == {"pool": "full", "packages": ["scikit-image", "scikit-learn", "matplotlib",
                                                                  "mahotas", "PyWavelets", "pydicom"]}
    assert {s.source.split("/")[0] for s in samples.bundled_samples()} == set(CORE_PACKAGES + PHOTOS_EXTRA_PACKAGES)


@pytest.mark.parametrize("hidden", [PHOTOS_EXTRA_PACKAGES, ("pydicom",)], ids=["no photos extra", "part of it"])
def test_without_the_photos_extra_each_file_keeps_its_split(monkeypatch, hidden):
    full = {split: samples.bundled_samples(split) for split in SPLITS}
    full_records = {split: samples.split_record(split) for split in SPLITS}
    _hide(monkeypatch, hidden)
    assert samples.pool() == "core"  # a partial extra counts as absent: only two pools exist
    assert samples.pool_record() == {"pool": "core", "packages": ["scikit-image", "scikit-learn"]}
    for split in SPLITS:
        core = samples.bundled_samples(split)
        assert core == [s for s in full[split] if s.source.split("/")[0] in CORE_PACKAGES]
        record = samples.split_record(split)
        assert record["source"] == f"bundled {split} split, core pool"
        assert full_records[split]["source"] == f"bundled {split} split, full pool"
        assert 0 < record["photos"] < full_records[split]["photos"] and record["sha256"] != full_records[split]["sha256"]
    # The README's quoted parity photos are core photos; the parity split still loads and views.
    parity = samples.bundled_parity_set()
    assert {"cat", "coffee", "rocket", "astronaut"} <= set(parity.labels)
    assert len(parity.images) == len(samples.bundled_samples("parity")) * samples.VIEWS_PER_PHOTO


def test_a_missing_file_of_a_pool_in_use_is_an_error_naming_the_package(monkeypatch, tmp_path):
    from edgevl.errors import MissingBackendError

    # scikit-image "installed" without its data folder: the core pool cannot shrink silently.
    (tmp_path / "skimage").mkdir()
    (tmp_path / "skimage" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "skimage", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingBackendError, match=r"skimage/data/astronaut.png is missing.*scikit-image"):
        samples.bundled_samples("parity")
