"""The accuracy gate's search (`run_gate`), on real figures computed from arrays: a candidate's
error falls as more of the ranked layers stay float."""

from __future__ import annotations

import numpy as np
import pytest

from edgevl.compress import gate as G
from edgevl.compress.gate import GateData, GateLimits, gate_loop, run_gate
from edgevl.compress.handlers import QuantContext
from edgevl.errors import ParityError

RNG = np.random.default_rng(0)
REFERENCE = RNG.standard_normal((40, 32))
NOISE = RNG.standard_normal((40, 32))
ORDER = [f"layer{i}" for i in range(20)]


def _gate() -> GateData:
    return GateData({"row": np.arange(40)}, REFERENCE, None, 40)


def _run(noise_by_k):
    """build(float layers) -> k; run_fn(k) -> the reference plus noise of that k's size."""
    def run_fn(k):
        return lambda feeds: REFERENCE[feeds["row"]] + noise_by_k(k) * NOISE[feeds["row"]]
    return run_fn


def _search(noise_by_k, whole_float=None, limits=None):
    return run_gate(ORDER, lambda layers: len(layers), _run(noise_by_k), _gate(), 0.99, 0.01, "text",
                    lambda n, rank: f"rank {rank}", whole_float=whole_float, limits=limits)


def test_passing_at_zero_tries_once():
    result = _search(lambda k: 0.0)
    assert result.float_layers == {} and len(result.report["tried"]) == 1


def test_bisection_finds_the_smallest_passing_prefix():
    # cosine >= 0.99 needs noise below ~0.14; 12 or more float layers get there.
    result = _search(lambda k: 0.0 if k >= 12 else 0.5)
    assert list(result.float_layers) == ORDER[:12]
    tried = [t["float_layers"] for t in result.report["tried"]]
    assert tried[:2] == [0, 20] and len(tried) <= 2 + 5
    assert all(not t["passed"] for t in result.report["tried"] if t["float_layers"] < 12)


def test_whole_tower_float_is_the_last_candidate():
    result = _search(lambda k: 0.5 if k != "float" else 0.0, whole_float=lambda: "float")
    assert result.whole_tower_float and set(result.float_layers) == set(ORDER)
    assert [t["float_layers"] for t in result.report["tried"]] == [0, 20, "whole tower"]


def test_nothing_passing_and_capped_searches_fail_with_the_figures():
    with pytest.raises(ParityError, match="even with every layer float"):
        _search(lambda k: 0.5)
    with pytest.raises(ParityError, match="stopped after 2 tries"):
        _search(lambda k: 0.0 if k >= 12 else 0.5, limits=GateLimits(max_tries=2))


def test_non_finite_outputs_fail_with_json_safe_figures():
    result = _search(lambda k: np.nan if k < 20 else 0.0)
    first = result.report["tried"][0]
    assert first["cosine_min"] == -1.0 and first["non_finite"] > 0 and not first["passed"]


def test_a_slow_machine_ships_the_same_candidate(monkeypatch):
    """Every clock reading an hour later than the last: the search still ends where the data says."""
    fast = _search(lambda k: 0.0 if k >= 12 else 0.5)
    hours = iter(range(0, 10**9, 3600))
    monkeypatch.setattr(G.time, "perf_counter", lambda: float(next(hours)))
    monkeypatch.setattr(G.time, "monotonic", lambda: float(next(hours)))
    slow = _search(lambda k: 0.0 if k >= 12 else 0.5)
    assert list(slow.float_layers) == list(fast.float_layers) == ORDER[:12]
    assert [t["float_layers"] for t in slow.report["tried"]] == [t["float_layers"] for t in fast.report["tried"]]
    assert slow.report["tried"][0]["seconds"] >= 3600  # the clock really was slow; it only timed the tries


def test_a_gate_without_data_never_reports_passed():
    ctx = QuantContext(model=None, feeds=[], gate=None, cosine_min=0.99, component="text")
    builds = []

    def build(drop):
        builds.append(dict(drop))
        return "int8 model", {"MatMulInteger": 3}

    model, kept_float, (extras,), report = gate_loop(ctx, ORDER, {n: 0.0 for n in ORDER}, 0.01, build)
    assert (model, kept_float, extras, builds) == ("int8 model", {}, {"MatMulInteger": 3}, [{}])
    assert report["passed"] is None and report["gated"] is False and report["figures"] is None
    assert "no gate data" in report["reason"]
    gated = _search(lambda k: 0.0)
    assert gated.report["passed"] is True and gated.report["gated"] is True


def test_held_out_prediction_covers_the_larger_splits_worst_row():
    """Row errors drawn log-normal: the worst of 220 unseen rows falls below the cosine the gate
    predicts from 90 rows in about 1 - HELD_OUT_CONFIDENCE of the draws, while the gate's own
    worst row alone would be beaten far more often."""
    rng = np.random.default_rng(3)
    below_predicted = below_own_worst = 0
    draws = 400
    for _ in range(draws):
        errors = np.exp(rng.normal(np.log(1e-3), 0.8, 90 + 220))
        gate_cos, held_cos = 1 - errors[:90], 1 - errors[90:]
        below_predicted += held_cos.min() < G.predicted_worst_cosine(gate_cos, 220)
        below_own_worst += held_cos.min() < gate_cos.min()
    assert below_predicted / draws < 1 - G.HELD_OUT_CONFIDENCE + 0.05
    assert below_own_worst / draws > 0.5


def test_a_gate_given_the_held_out_size_refuses_a_spread_that_predicts_a_parity_miss():
    """Every gate row above both floors, but errors spread so that 5,000 held-out rows would
    likely hold one below parity's floor: refused, with the prediction in the figures."""
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((40, 32))
    candidate = reference + np.exp(rng.normal(np.log(0.03), 0.5, (40, 1))) * rng.standard_normal((40, 32))
    plain = GateData({"row": np.arange(40)}, reference, None, 40)
    held = GateData({"row": np.arange(40)}, reference, None, 40, G.HeldOut(5000, 0.99))
    own = G.figures_of(plain, candidate)
    assert own["cosine_min"] >= 0.995 and G.gate_passes(own, 0.995, 0.01)
    figures = G.figures_of(held, candidate)
    assert figures["held_out_rows"] == 5000 and figures["cosine_predicted"] < 0.99
    assert not G.gate_passes(figures, 0.995, 0.01)
