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


def test_wider_palettes_hold_their_values_per_group_and_err_less():
    """The palette-width benchmark's 6- and 8-bit grids: at most 2**bits values per group, and
    each extra bit lowers the error on Gaussian weights."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((32, 512)).astype(np.float32)
    errors = []
    for bits in (4, 6, 8):
        grid = palette_grid(weight, 0, bits)
        assert all(len(np.unique(grid[g:g + PALETTE_GROUP])) <= 1 << bits for g in range(0, 32, PALETTE_GROUP))
        errors.append(float(np.mean((grid - weight) ** 2)))
    assert errors[0] > errors[1] > errors[2] > 0


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


def _gate_min_cosine(spec, tower, module) -> float:
    from dataclasses import replace as with_module

    from edgevl.paritydata import build_split_data, run_batched

    data = build_split_data(spec, "gate")
    feeds = data.feeds(tower.component)
    ref = run_batched(tower.forward_numpy, feeds, 16)
    out = run_batched(with_module(tower, module=module).forward_numpy, feeds, 16)
    cos = np.sum(ref * out, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return float(cos.min())


def test_palette_tuning_recovers_accuracy_and_keeps_16_values_per_table(tiny_text):
    """Palettization-aware fine-tuning on the tiny text tower: the tuned tower's min cosine on
    the gate split (never trained on) beats the untuned all-palettized tower's, every tuned
    `Linear` weight holds at most 16 values per table, the frozen embedding keeps its grid, and
    the float tower it learnt from is untouched."""
    import copy

    import torch

    from edgevl.compress.palette_tune import group_size, tune_palettes
    from edgevl.exporters.coreml_compress import compressed_weight

    spec, tower = tiny_text
    before = copy.deepcopy(tower.module.state_dict())
    found, _ = candidates(tower)
    grids = {c.name: compressed_weight(tower.module.get_submodule(c.name).weight.detach().numpy(), "palettize4")
             for c in found}
    untuned = copy.deepcopy(tower.module)
    for name, grid in grids.items():
        untuned.get_submodule(name).weight.data.copy_(torch.from_numpy(grid))
    linear = {c.name: group_size(grids[c.name].shape[0], PALETTE_GROUP) for c in found if not c.embedding}
    frozen = {c.name: grids[c.name] for c in found if c.embedding}
    assert linear and frozen
    result = tune_palettes(spec, tower, linear, frozen, steps=150)

    assert _gate_min_cosine(spec, tower, result.module) > _gate_min_cosine(spec, tower, untuned)
    for name, group in linear.items():
        weight = result.grids[name]
        np.testing.assert_array_equal(result.module.get_submodule(name).weight.detach().numpy(), weight)
        assert not np.array_equal(weight, grids[name]), "the palettes moved"
        assert all(len(np.unique(weight[g:g + group])) <= 16 for g in range(0, weight.shape[0], group))
    for name, grid in frozen.items():
        np.testing.assert_array_equal(result.grids[name], grid)
    for key, value in tower.module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert result.report["steps"] == 150 and result.report["loss_last"] < result.report["loss_first"]


def test_gate_keeps_the_tuned_or_untuned_plan_with_fewer_float_weights(tiny_text):
    spec, tower = tiny_text
    _, untuned = plan_compression(spec, tower, "palettize4")
    _, plan = plan_compression(spec, tower, "palettize4", tune_steps=150)
    assert plan.gate_passed and plan.tuning is not None and plan.tuning["steps"] == 150
    assert plan.tuning["size_budget"] == 0.3 and set(plan.wide) <= set(plan.tuning["wide_tables"])
    assert plan.wide == [] or plan.tuning["used"]
    size = lambda p: sum(tower.module.get_submodule(n).weight.numel() for n in p.kept_float)  # noqa: E731
    assert size(plan) <= size(untuned)
    if not plan.tuning["used"]:
        assert plan.kept_float == untuned.kept_float


def test_wide_tables_go_to_the_most_damage_per_weight_within_the_size_budget():
    from edgevl.exporters.coreml_compress import WIDE_BITS, wide_layers

    weights = {"big": np.zeros((1024, 64), np.float32), "small": np.zeros((64, 64), np.float32),
               "harmless": np.zeros((64, 64), np.float32), "mid": np.zeros((256, 64), np.float32)}
    damage = {"big": 0.5, "small": 0.1, "harmless": 0.0, "mid": 0.2}
    candidates_total = sum(w.size for w in weights.values())
    total = candidates_total + 4096  # parameters that stay fp16

    def size_bits(wide: list[str]) -> int:
        bits = {n: WIDE_BITS if n in wide else 4 for n in weights}
        tables = sum(w.shape[0] // PALETTE_GROUP * (1 << bits[n]) * 16 for n, w in weights.items())
        return 16 * 4096 + sum(w.size * bits[n] for n, w in weights.items()) + tables

    # Room for every damaging layer: the harmless one still stays at 4 bits.
    assert sorted(wide_layers(weights, damage, total, budget=1.0)) == ["big", "mid", "small"]
    # Room for a little: most damage per weight first ("small", then "mid"); "big" does not fit.
    budget = (size_bits(["small", "mid"]) + 1) / (16 * total)
    chosen = wide_layers(weights, damage, total, budget=budget)
    assert chosen == ["small", "mid"] and size_bits(chosen) <= budget * 16 * total
    assert wide_layers(weights, damage, total, budget=size_bits([]) / (16 * total)) == []


def test_tuning_with_wide_tables_keeps_64_values_per_table(tiny_text):
    from edgevl.compress.palette_tune import group_size, tune_palettes

    spec, tower = tiny_text
    found, _ = candidates(tower)
    linear = {c.name: group_size(tower.module.get_submodule(c.name).weight.shape[0], PALETTE_GROUP)
              for c in found if not c.embedding}
    wide = next(iter(linear))
    result = tune_palettes(spec, tower, linear, {}, steps=5, palette_sizes={wide: 64})
    for name, group in linear.items():
        weight = result.grids[name]
        counts = [len(np.unique(weight[g:g + group])) for g in range(0, weight.shape[0], group)]
        assert max(counts) <= (64 if name == wide else 16)
        if name == wide:
            assert max(counts) > 16


def test_tuning_sentences_never_repeat_a_gate_or_parity_text():
    """The text corpus the tuning reads (tokenizer words, ImageNet prompts, calibration
    captions) is disjoint from the texts the gate chooses on and parity judges."""
    from itertools import islice

    from edgevl.calibration.samples import split_texts
    from edgevl.compress.palette_tune import whole_words, vocabulary_sentences
    from edgevl.models.effnet_minilm import imagenet_class_names

    spec = resolve_model(None, LoadOptions())
    assert len(whole_words(spec)) > 10000  # MiniLM's WordPiece vocabulary, pieces dropped
    held_out = set(split_texts("gate")) | set(split_texts("parity"))
    sentences = list(islice(vocabulary_sentences(spec, seed=0), 20000))
    assert not held_out & set(sentences)
    assert len(set(sentences)) > 15000
    imagenet = {f"a photo of a {name}." for name in imagenet_class_names()}
    # The ImageNet prompts of the calibration split are in the corpus; the gate's and parity's are not.
    from edgevl.calibration.samples import class_prompts

    assert imagenet & set(sentences) == set(class_prompts("calibration"))
