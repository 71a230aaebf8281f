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
