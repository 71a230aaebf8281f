"""Parity metrics: every miss collected, a shape mismatch fatal, agreement tie-aware + strict."""

from __future__ import annotations

import numpy as np

from edgevl.parity import SQNR_IDENTICAL_DB, agreement, check_parity, sqnr_db
from edgevl.tolerances import Tolerance

TOL = Tolerance(cosine_min=0.999, top1_agreement=1.0, sqnr_db=30.0, max_abs=1e-3)


def test_identical_outputs_pass_with_finite_figures():
    ref = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    result = check_parity(ref, ref.copy(), TOL, (1.0, 1.0), "out")
    assert result.passed and abs(result.cosine_min - 1.0) < 1e-12 and result.sqnr_db == SQNR_IDENTICAL_DB
    assert sqnr_db(ref, ref) == SQNR_IDENTICAL_DB


def test_every_miss_is_collected():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8))
    cand = ref + rng.normal(scale=0.5, size=ref.shape)
    result = check_parity(ref, cand, TOL, (0.6, 0.4), "out")
    assert not result.passed
    text = " | ".join(result.failures)
    for what in ("min cosine", "max abs diff", "SQNR", "agreement 0.600 < 1.0 (strict 0.400)"):
        assert what in text


def test_shape_mismatch_is_fatal():
    result = check_parity(np.zeros((4, 8)), np.zeros((4, 7)), TOL, None, "out")
    assert not result.passed and result.cosine_min is None
    assert result.failures == ["out: shape (4, 7) != reference (4, 8) (fatal)"]


def test_agreement_counts_near_ties_and_reports_strict():
    ref = np.array([[0.50, 0.4995, 0.1], [0.9, 0.1, 0.0], [0.3, 0.6, 0.1]])
    cand = np.array([[0.49, 0.50, 0.1], [0.1, 0.9, 0.0], [0.3, 0.6, 0.1]])
    tie_aware, strict = agreement(ref, cand)
    assert (tie_aware, strict) == (2 / 3, 1 / 3)


def test_both_agreements_are_shown_by_the_one_formatter():
    from edgevl.pipeline import format_agreement

    assert format_agreement(0.9818, 0.9636) == "0.982 (strict 0.964)"
    assert format_agreement(1.0) == "1.000"
    assert format_agreement(None, None) == "n/a"
