"""Core ML weight compression planned in PyTorch (`exporters/coreml_compress.py`): the grids the
compressed formats hold, and the gate that chooses which layers stay float."""

from __future__ import annotations

import numpy as np
import pytest

from edgevl.exporters.coreml_compress import PALETTE_GROUP, candidates, int8_grid, palette_grid, plan_compression
from edgevl.pipeline import LoadOptions, resolve_model


def test_palette_grid_holds_16_values_per_group_along_the_axis():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 48)).astype(np.float32)
    rows = palette_grid(weight, 0)
    for g in range(0, 64, PALETTE_GROUP):
        assert len(np.unique(rows[g:g + PALETTE_GROUP])) <= 16
    assert len(np.unique(rows)) > 16, "each group has its own table"
    # 30 rows: the largest divisor of 30 up to 16 (15) sets the group.
    odd = palette_grid(rng.standard_normal((30, 48)).astype(np.float32), 0)
    assert all(len(np.unique(odd[g:g + 15])) <= 16 for g in (0, 15))
    columns = palette_grid(weight, 1)
    for g in range(0, 48, PALETTE_GROUP):
        assert len(np.unique(columns[:, g:g + PALETTE_GROUP])) <= 16
    # k-means beats a uniform 16-level grid on Gaussian weights.
    uniform = np.linspace(weight.min(), weight.max(), 16)
    nearest = uniform[np.argmin(np.abs(weight[..., None] - uniform), axis=-1)]
    assert np.mean((rows - weight) ** 2) < np.mean((nearest - weight) ** 2)


def test_int8_grid_is_symmetric_per_output_channel():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 32)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None]
    grid = int8_grid(weight, 0)
    scale = np.max(np.abs(weight), axis=1, keepdims=True) / 127
    steps = grid / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.max(np.abs(steps)) <= 127 + 1e-3
    assert np.max(np.abs(grid - weight) / scale) <= 0.5 + 1e-3


@pytest.fixture(scope="module")
def tiny_text(tiny_clip_dir):
    spec = resolve_model(str(tiny_clip_dir), LoadOptions())
    return spec, spec.tower("text")


def test_candidates_skip_the_output_projection(tiny_text):
    _, tower = tiny_text
    found, last = candidates(tower)
    assert last == "projection"
    names = [c.name for c in found]
    assert "projection" not in names and any(c.embedding for c in found)
    assert all(tower.module.get_submodule(n).weight.numel() >= 512 for n in names)


def test_gate_keeps_the_most_damaging_layers_float_and_passes(tiny_text):
    """palettize4 on the tiny random text tower misses its row with every layer compressed: the
    gate returns the fewest layers to float, most damage per weight first, that pass, and the
    tower it returns holds the compressed grid exactly in the others."""
    spec, tower = tiny_text
    compressed, plan = plan_compression(spec, tower, "palettize4")
    assert plan.gate_passed and plan.kept_float, plan.report()
    ranked = sorted(plan.damage, key=lambda n: -plan.damage[n] / tower.module.get_submodule(n).weight.numel())
    assert plan.kept_float == ranked[:len(plan.kept_float)]
    for c in plan.compressed:
        np.testing.assert_array_equal(compressed.module.get_submodule(c.name).weight.detach().numpy(),
                                      plan.grids[c.name])
    for name in plan.kept_float:
        np.testing.assert_array_equal(compressed.module.get_submodule(name).weight.detach().numpy(),
                                      tower.module.get_submodule(name).weight.detach().numpy())
    report = plan.report()
    assert report["kept_float"] == plan.kept_float and report["gate_cosine_min"] >= 0.99

    _, int8 = plan_compression(spec, tower, "int8w")
    assert int8.gate_passed and not int8.kept_float and not int8.damage
