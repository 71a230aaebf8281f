"""Parity metrics: every miss collected, a shape mismatch fatal, agreement tie-aware + strict."""

from __future__ import annotations

import numpy as np

from edgevl.parity import SQNR_IDENTICAL_DB, TIE_Z, Agreement, agreement, check_parity, sqnr_db, tie_bands
from edgevl.tolerances import Tolerance

TOL = Tolerance(cosine_min=0.999, top1_agreement=1.0, sqnr_db=30.0, max_abs=1e-3)


def test_identical_outputs_pass_with_finite_figures():
    ref = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    result = check_parity(ref, ref.copy(), TOL, Agreement(1.0, 1.0, 5, 5), "out")
    assert result.passed and abs(result.cosine_min - 1.0) < 1e-12 and result.sqnr_db == SQNR_IDENTICAL_DB
    assert sqnr_db(ref, ref) == SQNR_IDENTICAL_DB


def test_every_miss_is_collected():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8))
    cand = ref + rng.normal(scale=0.5, size=ref.shape)
    result = check_parity(ref, cand, TOL, Agreement(0.6, 0.4, 3, 5), "out")
    assert not result.passed
    text = " | ".join(result.failures)
    for what in ("min cosine", "max abs diff", "SQNR", "agreement 0.600 < 1.0 (strict 0.400, 3 of 5 queries decisive)"):
        assert what in text


def test_shape_mismatch_is_fatal():
    result = check_parity(np.zeros((4, 8)), np.zeros((4, 7)), TOL, None, "out")
    assert not result.passed and result.cosine_min is None
    assert result.failures == ["out: shape (4, 7) != reference (4, 8) (fatal)"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_tie_bands_follow_the_cosine_floor_and_the_label_spread():
    """Queries moved: the band is TIE_Z sd of the gap's change, e |q| |t_b - t_j| / sqrt(d) with
    e = sqrt(2 (1 - floor)); labels moved: e |q| sqrt(|t_b|^2 + |t_j|^2) / sqrt(d)."""
    d = 64
    labels = np.eye(3, d)
    queries = np.zeros((1, d))
    queries[0, 0] = 2.0  # best label 0; |q| = 2
    e = np.sqrt(2 * (1 - 0.99))
    moved_queries = tie_bands(queries, labels, 0.99, moved="queries")
    assert np.allclose(moved_queries[0], [4e-6, *(2 * [TIE_Z * e * 2 * np.sqrt(2) / np.sqrt(d)])])  # best vs itself: rounding only
    moved_labels = tie_bands(queries, labels, 0.99, moved="labels")
    assert np.allclose(moved_labels[0], TIE_Z * e * 2 * np.sqrt(2) / np.sqrt(d))
    assert np.all(tie_bands(queries, labels, 0.9999, moved="queries") < moved_queries + 1e-12)
    # At a floor of 1 only float32 rounding is left: equal labels (one tokenization) still tie.
    assert np.allclose(tie_bands(queries, labels, 1.0, moved="labels"), 1e-6 * 2 * 2)
    twins = np.stack([labels[0], labels[0], labels[1]])
    ref = np.array([[0.5, 0.5 - 1e-9, 0.1]])
    found = agreement(ref, np.array([[0.5, 0.5 + 1e-9, 0.1]]), tie_bands(queries, twins, 1.0, moved="queries"))
    assert (found.tie_aware, found.strict, found.decisive) == (1.0, 0.0, 0)


def test_agreement_on_planted_near_ties():
    """200 queries over 50 orthonormal labels in 256 dimensions: half of them planted near-ties
    (the runner-up 5e-4 behind the best), half decisive (the runner-up 0.3 behind). A candidate
    that flips only the near-ties agrees fully (strict shows the flips, `decisive` counts the
    rest); one that flips a decisive pick disagrees; a candidate at the cosine floor whose error
    points in random directions keeps every decisive pick."""
    rng = np.random.default_rng(0)
    d, n_labels, n = 256, 50, 200
    labels = np.linalg.qr(rng.normal(size=(d, n_labels)))[0].T
    target = rng.integers(0, n_labels, n)
    runner = (target + 1) % n_labels
    near = np.arange(n) < n // 2
    rest = rng.normal(size=(n, d))
    rest -= (rest @ labels.T) @ labels  # orthogonal to every label: scores are exactly as planted
    queries = 0.6 * labels[target] + np.where(near, 0.5995, 0.3)[:, None] * labels[runner] + 0.3 * _unit(rest)
    queries = _unit(queries)
    ref = queries @ labels.T
    bands = tie_bands(queries, labels, 0.99, moved="queries")

    flip_ties = ref.copy()
    flip_ties[near, runner[near]] = 1.0
    found = agreement(ref, flip_ties, bands)
    assert (found.tie_aware, found.strict, found.decisive, found.queries) == (1.0, 0.5, n // 2, n)

    flip_decisive = ref.copy()
    flip_decisive[n - 1, runner[n - 1]] = 1.0
    assert agreement(ref, flip_decisive, bands).tie_aware == 1.0 - 1.0 / n

    # The error a 0.99-cosine artifact makes in random directions keeps every decisive pick.
    noise = rng.normal(size=(n, d))
    noise = _unit(noise - np.sum(noise * queries, axis=-1, keepdims=True) * queries)
    moved = 0.99 * queries + np.sqrt(1 - 0.99**2) * noise
    assert np.all(np.sum(moved * queries, axis=-1) >= 0.99 - 1e-9)
    kept = agreement(ref, moved @ labels.T, bands)
    assert kept.tie_aware == 1.0 and kept.strict >= 0.5


def test_both_agreements_are_shown_by_the_one_formatter():
    from edgevl.pipeline import format_agreement

    assert format_agreement(0.9818, 0.9636) == "0.982 (strict 0.964)"
    assert format_agreement(1.0) == "1.000"
    assert format_agreement(None, None) == "n/a"
