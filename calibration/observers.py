"""Range observers: they watch a tensor's values over the calibration set and choose the float
range that int8 (or another integer grid) will cover. Pure numpy, no runtime needed.

- `minmax`: the full observed range; exact, but one outlier stretches the grid for everyone.
- `percentile`: clips the given fraction of mass off each tail.
- `entropy`: the clip threshold whose quantized histogram has the least KL divergence from the
  observed one (TensorRT's calibrator).
- `mse`: the clip range with the least expected squared quantisation error (round + clamp),
  computed on the histogram.

The histogram observers keep a fixed number of bins over a range that only grows: when a batch
falls outside it the old counts are re-binned into the wider range (bin centres), so memory stays
constant however long the calibration set is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

OBSERVERS = ("minmax", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class QParams:
    """Affine quantisation parameters: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    lo: float
    hi: float

    def to_json(self) -> dict:
        return {
            "scale": float(self.scale),
            "zero_point": int(self.zero_point),
            "qmin": self.qmin,
            "qmax": self.qmax,
            "range": [float(self.lo), float(self.hi)],
        }


def qrange(bits: int = 8, signed: bool = False) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams_for_range(lo: float, hi: float, bits: int = 8, symmetric: bool = False) -> QParams:
    """Scale / zero point covering [lo, hi] (always including 0, so zero is exact).

    Symmetric gives a signed grid with zero point 0 (weights); asymmetric an unsigned grid
    (activations: ORT's fast CPU kernels take uint8 activations with int8 weights).
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        qmin, qmax = qrange(bits, signed=True)
        amax = max(abs(lo), abs(hi))
        scale = amax / qmax if amax > 0 else 1.0
        return QParams(scale, 0, qmin, qmax, -amax, amax)
    qmin, qmax = qrange(bits, signed=False)
    if hi - lo <= 0:
        return QParams(1.0, qmin, qmin, qmax, lo, hi)
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(scale, zero_point, qmin, qmax, lo, hi)


class Observer:
    """Watches one tensor. `update()` with every batch, then `compute_range()`."""

    name = ""

    def __init__(self) -> None:
        self.count = 0
        self.min = np.inf
        self.max = -np.inf

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        self.count += x.size
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self._update(x)

    def _update(self, x: np.ndarray) -> None:
        pass

    def compute_range(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__} saw no data; feed it at least one batch")
        return self._compute_range(bits, symmetric)

    def _compute_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        return self.min, self.max

    def qparams(self, bits: int = 8, symmetric: bool = False) -> QParams:
        lo, hi = self.compute_range(bits, symmetric)
        return qparams_for_range(lo, hi, bits, symmetric)

    def describe(self) -> dict:
        return {"observer": self.name, "count": self.count, "min": self.min, "max": self.max}


class MinMaxObserver(Observer):
    name = "minmax"


class HistogramObserver(Observer):
    """Keeps `bins` counts over a growing [lo, hi] (re-binned when data falls outside)."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.bins = bins
        self.hist: Optional[np.ndarray] = None
        self.edges: Optional[np.ndarray] = None

    def _update(self, x: np.ndarray) -> None:
        lo, hi = self.min, self.max
        if hi - lo < 1e-3 * max(1.0, abs(lo)):
            # Constant data so far: give the grid a finite width around it.
            hi = lo + 1e-3 * max(1.0, abs(lo))
        if self.hist is None:
            self.hist, self.edges = np.histogram(x.astype(np.float64), bins=self.bins, range=(lo, hi))
            self.hist = self.hist.astype(np.float64)
            return
        if lo < self.edges[0] or hi > self.edges[-1]:
            # Widen, then move the old counts to their bin centres in the new grid.
            centres = (self.edges[:-1] + self.edges[1:]) / 2
            old = self.hist
            self.hist, self.edges = np.histogram(centres, bins=self.bins, range=(lo, hi), weights=old)
        new, _ = np.histogram(x, bins=self.edges)
        self.hist = self.hist + new

    def _centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


class PercentileObserver(HistogramObserver):
    """Clips `(100 - percentile) / 2` percent of the mass off each tail."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile {percentile} must be in (50, 100]")
        super().__init__(bins)
        self.percentile = percentile

    def _compute_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        tail = (100.0 - self.percentile) / 200.0
        cdf = np.cumsum(self.hist) / self.hist.sum()
        lo_i = int(np.searchsorted(cdf, tail, side="left"))
        hi_i = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
        lo = max(self.min, float(self.edges[lo_i]))
        hi = min(self.max, float(self.edges[min(hi_i + 1, self.bins)]))
        return lo, hi


def _expected_sq_error(centres: np.ndarray, counts: np.ndarray, q: QParams) -> float:
    codes = np.clip(np.round(centres / q.scale + q.zero_point), q.qmin, q.qmax)
    deq = (codes - q.zero_point) * q.scale
    return float(np.sum(counts * (centres - deq) ** 2))


class MSEObserver(HistogramObserver):
    """Searches clip ranges [a*min, b*max] on a grid and keeps the least expected squared error."""

    name = "mse"

    def __init__(self, bins: int = 2048, steps: int = 40) -> None:
        super().__init__(bins)
        self.steps = steps

    def _compute_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        centres, counts = self._centres(), self.hist
        keep = counts > 0
        centres, counts = centres[keep], counts[keep]
        fractions = np.linspace(0.05, 1.0, self.steps)
        best, best_err = (self.min, self.max), np.inf
        if symmetric:
            amax = max(abs(self.min), abs(self.max))
            for f in fractions:
                q = qparams_for_range(-f * amax, f * amax, bits, True)
                err = _expected_sq_error(centres, counts, q)
                if err < best_err:
                    best, best_err = (q.lo, q.hi), err
            return best
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)
        for a in fractions:
            for b in fractions:
                q = qparams_for_range(a * lo0, b * hi0, bits, False)
                err = _expected_sq_error(centres, counts, q)
                if err < best_err:
                    best, best_err = (a * lo0, b * hi0), err
        return best


class EntropyObserver(HistogramObserver):
    """TensorRT's KL calibration on |x|: the threshold whose 2**(bits-1)-level quantised
    histogram diverges least from the reference (tail mass folded into the last bin)."""

    name = "entropy"

    def __init__(self, bins: int = 2048, stride: int = 8) -> None:
        super().__init__(bins)
        self.stride = stride

    def _abs_hist(self) -> tuple[np.ndarray, float]:
        amax = max(abs(self.min), abs(self.max))
        hist, _ = np.histogram(np.abs(self._centres()), bins=self.bins, range=(0, amax), weights=self.hist)
        return hist, amax

    def _compute_range(self, bits: int, symmetric: bool) -> tuple[float, float]:
        hist, amax = self._abs_hist()
        levels = 2 ** (bits - 1)
        n = len(hist)
        best_i, best_kl = n, np.inf
        for i in range(levels, n + 1, self.stride):
            ref = hist[:i].copy()
            ref[-1] += hist[i:].sum()
            # Quantise the first i bins into `levels` groups, expand back over the non-empty bins.
            groups = np.array_split(np.arange(i), levels)
            cand = np.zeros(i)
            for g in groups:
                chunk = hist[g]
                nonzero = chunk > 0
                if nonzero.any():
                    cand[g[nonzero]] = chunk.sum() / nonzero.sum()
            p = ref / ref.sum()
            qs = cand.sum()
            if qs == 0:
                continue
            q = cand / qs
            mask = p > 0
            # Bins where p > 0 but q == 0 make KL infinite; smooth them as TensorRT does.
            q = np.where(mask & (q == 0), 1e-10, q)
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if kl < best_kl:
                best_i, best_kl = i, kl
        threshold = amax * best_i / n
        return max(self.min, -threshold), min(self.max, threshold)


def make_observer(name: str, **kwargs: object) -> Observer:
    """Observer by name: one of `OBSERVERS`."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "percentile":
        return PercentileObserver(**kwargs)  # type: ignore[arg-type]
    if name == "entropy":
        return EntropyObserver(**kwargs)  # type: ignore[arg-type]
    if name == "mse":
        return MSEObserver(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown observer {name!r}; use one of: {', '.join(OBSERVERS)}")
