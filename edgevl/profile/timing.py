"""Timed runs under a time budget, and the latency statistics reported for them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_RUNS = 3
WARMUP_RUNS = 2


@dataclass(frozen=True)
class Timing:
    runs: int
    p50_s: float
    p90_s: float
    p99_s: float
    mean_s: float
    min_s: float
    warmup_s: float  # the first (warm-up) call: allocation, kernel selection, lazy compilation

    def to_json(self) -> dict:
        return {"runs": self.runs, "p50_s": self.p50_s, "p90_s": self.p90_s, "p99_s": self.p99_s,
                "mean_s": self.mean_s, "min_s": self.min_s, "warmup_s": self.warmup_s}


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p90, p99 by linear interpolation (numpy's default), so p50 <= p90 <= p99."""
    p50, p90, p99 = np.percentile(np.asarray(samples, dtype=np.float64), [50, 90, 99])
    return float(p50), float(p90), float(p99)


def time_calls(call: Callable[[], object], budget_s: float, min_runs: int = MIN_RUNS) -> Timing:
    """Warm up, then call repeatedly until `budget_s` is spent (at least `min_runs` timed calls)."""
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    for _ in range(WARMUP_RUNS - 1):
        call()
    samples: list[float] = []
    end = time.perf_counter() + budget_s
    while len(samples) < min_runs or time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    p50, p90, p99 = percentiles(samples)
    return Timing(runs=len(samples), p50_s=p50, p90_s=p90, p99_s=p99, mean_s=float(np.mean(samples)),
                  min_s=float(min(samples)), warmup_s=warmup)
