"""Parity of an artifact against the PyTorch reference, on real data.

Figures per output: min cosine over samples, max abs diff, SQNR (dB), and zero-shot top-1
agreement (does the artifact pick the same label as the reference for every real photo?).
Every miss is collected before anything is raised; a shape mismatch is fatal, tolerance misses
are soft and reported with their figures (optimum's ShapeError / AtolError split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from edgevl.tolerances import Tolerance


@dataclass
class ParityResult:
    passed: bool
    cosine_min: Optional[float]
    max_abs: Optional[float]
    sqnr_db: Optional[float]
    top1_agreement: Optional[float]
    n_samples: int
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        return {k: (round(v, 7) if isinstance(v, float) else v) for k, v in data.items()}


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return (a64 * b64).sum(-1) / np.maximum(denom, 1e-30)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio in dB (torchao's compute_error); inf if identical."""
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    noise = float(np.sum((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def zero_shot_top1(queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Index of the best class (row of `classes`) for each query embedding."""
    return np.argmax(queries.astype(np.float64) @ classes.astype(np.float64).T, axis=-1)


def agreement(reference_top1: np.ndarray, candidate_top1: np.ndarray) -> float:
    return float(np.mean(reference_top1 == candidate_top1))


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    top1: Optional[float],
    output_name: str,
) -> ParityResult:
    """Compare one output; `top1` is the agreement computed by the caller (None if not defined)."""
    if candidate.shape != reference.shape:
        return ParityResult(
            False, None, None, None, None, int(reference.shape[0]) if reference.ndim else 0,
            [f"{output_name}: shape {tuple(candidate.shape)} != reference {tuple(reference.shape)} (fatal)"],
        )
    failures = []
    if not np.all(np.isfinite(candidate)):
        failures.append(f"{output_name}: {int(np.sum(~np.isfinite(candidate)))} non-finite values")
    cos = float(np.min(cosine_per_row(reference, candidate)))
    max_abs = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    sqnr = sqnr_db(reference, candidate)
    if not cos >= tolerance.cosine_min:
        failures.append(f"{output_name}: min cosine {cos:.6f} < {tolerance.cosine_min}")
    if tolerance.max_abs is not None and not max_abs <= tolerance.max_abs:
        failures.append(f"{output_name}: max abs diff {max_abs:.3g} > {tolerance.max_abs}")
    if tolerance.sqnr_db is not None and not sqnr >= tolerance.sqnr_db:
        failures.append(f"{output_name}: SQNR {sqnr:.1f} dB < {tolerance.sqnr_db} dB")
    if top1 is not None and not top1 >= tolerance.top1_agreement:
        failures.append(f"{output_name}: zero-shot top-1 agreement {top1:.3f} < {tolerance.top1_agreement}")
    return ParityResult(
        not failures, cos, max_abs, (sqnr if np.isfinite(sqnr) else 999.0), top1, int(reference.shape[0]), failures
    )
