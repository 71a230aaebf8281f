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
    top1_agreement_strict: Optional[float] = None
    decisive_queries: Optional[int] = None

    def to_json(self) -> dict:
        """JSON has no NaN or Inf: a non-finite figure is written as null (the failure says why)."""
        data = asdict(self)
        return {k: (_json_float(v) if isinstance(v, float) else v) for k, v in data.items()}


def _json_float(value: float) -> Optional[float]:
    return round(value, 7) if np.isfinite(value) else None


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return (a64 * b64).sum(-1) / np.maximum(denom, 1e-30)


SQNR_IDENTICAL_DB = 999.0  # JSON has no inf: identical outputs report this


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio in dB (torchao's compute_error); SQNR_IDENTICAL_DB if
    the outputs are identical."""
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    noise = float(np.sum((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    if noise == 0.0:
        return SQNR_IDENTICAL_DB
    return min(10.0 * np.log10(max(signal, 1e-30) / noise), SQNR_IDENTICAL_DB)


# Which zero-shot picks an artifact can be held to. An artifact that meets its row's cosine floor
# c still moves every embedding by up to sqrt(2 (1 - c)) of its norm; a label whose reference
# score trails the best by less than that error is likely to move is a tie, and picking it is
# not a disagreement. "Likely" is TIE_Z standard deviations of the score gap's change under an
# error of that size in a random direction of the d-dimensional embedding space (the worst case,
# an error aimed straight at the gap, would make agreement follow from the cosine floor and
# never fail on its own). A fixed margin cannot do this: the default model's scores spread
# over ~0.1, a trained CLIP's over ~0.3, and 1,000 ImageNet prompts hold many near-ties.
TIE_Z = 3.0
# Scores closer than float32 arithmetic resolves are ties at any floor: identical texts (two
# labels a tokenizer maps to the same ids) give equal embeddings whose scores differ only by
# rounding, relative to |q| (|t_b| + |t_j|).
FLOAT32_NOISE = 1e-6


@dataclass(frozen=True)
class Agreement:
    """Zero-shot top-1 agreement of a candidate with the reference over `queries` queries.
    `tie_aware` (the gated figure): the share whose candidate pick is the reference's or within
    its tie band; `strict`: the share with identical picks; `decisive`: how many queries have a
    pick no other label reaches within its band (every one of those must agree for 1.0)."""

    tie_aware: float
    strict: float
    decisive: int
    queries: int


def zero_shot_scores(queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Similarity of each query embedding (rows) to each class embedding (columns)."""
    return queries.astype(np.float64) @ classes.astype(np.float64).T


def tie_bands(queries: np.ndarray, labels: np.ndarray, cosine_floor: float, moved: str) -> np.ndarray:
    """(queries, labels) array: for each label j, how far the gap between the reference's best
    label b and j may move (TIE_Z standard deviations) when the artifact under test, meeting
    `cosine_floor`, produced the `moved` side ("queries": the image tower's embeddings are the
    candidate's; "labels": the text tower's prompts are). With error e = sqrt(2 (1 - c)):
    queries moved, sd = e |q| |t_b - t_j| / sqrt(d); labels moved, sd = e |q| sqrt(|t_b|^2 + |t_j|^2) / sqrt(d).
    No band is narrower than float32 rounding (`FLOAT32_NOISE`)."""
    if moved not in ("queries", "labels"):
        raise ValueError(f"moved must be 'queries' or 'labels', not {moved!r}")
    q, t = queries.astype(np.float64), labels.astype(np.float64)
    error = np.sqrt(2.0 * max(0.0, 1.0 - cosine_floor))
    scale = TIE_Z * error * np.linalg.norm(q, axis=-1, keepdims=True) / np.sqrt(q.shape[-1])
    best = np.argmax(q @ t.T, axis=-1)
    sq = np.sum(t * t, axis=-1)
    if moved == "queries":
        gram = t @ t.T
        spread = np.sqrt(np.maximum(sq[best][:, None] + sq[None, :] - 2.0 * gram[best], 0.0))
    else:
        spread = np.sqrt(sq[best][:, None] + sq[None, :])
    norms = np.sqrt(sq)
    rounding = FLOAT32_NOISE * np.linalg.norm(q, axis=-1, keepdims=True) * (norms[best][:, None] + norms[None, :])
    return np.maximum(scale * spread, rounding)


def agreement(ref_scores: np.ndarray, cand_scores: np.ndarray, bands: np.ndarray) -> Agreement:
    """Top-1 agreement of `cand_scores` with `ref_scores` (both queries x labels); `bands` (same
    shape, from `tie_bands`) says how far each label may trail the reference's best and still
    be a tie. A query is decisive when every other label trails by more than its band."""
    rows = np.arange(ref_scores.shape[0])
    best = np.argmax(ref_scores, axis=-1)
    picks = np.argmax(cand_scores, axis=-1)
    trail = ref_scores[rows, best][:, None] - ref_scores
    within = trail <= bands
    within[rows, best] = True
    agrees = within[rows, picks]
    decisive = int(np.sum(within.sum(axis=-1) == 1))
    return Agreement(float(np.mean(agrees)), float(np.mean(picks == best)), decisive, int(len(rows)))


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    top1: Optional[Agreement],
    output_name: str,
) -> ParityResult:
    """Compare one output; `top1` is the zero-shot agreement computed by the caller (None if not
    defined). The tie-aware figure is the one gated."""
    if candidate.shape != reference.shape:
        return ParityResult(
            False, None, None, None, None, int(reference.shape[0]) if reference.ndim else 0,
            [f"{output_name}: shape {tuple(candidate.shape)} != reference {tuple(reference.shape)} (fatal)"],
        )
    failures = []
    if not np.all(np.isfinite(candidate)):
        # Fatal like a shape error: no figure means anything once NaN or Inf reach the output.
        bad_rows = int(np.sum(~np.all(np.isfinite(candidate), axis=tuple(range(1, candidate.ndim)))))
        return ParityResult(
            False, None, None, None, None, int(reference.shape[0]) if reference.ndim else 0,
            [f"{output_name}: output holds {int(np.sum(~np.isfinite(candidate)))} NaN/Inf values "
             f"({bad_rows} of {candidate.shape[0]} samples) (fatal)"],
        )
    cos = float(np.min(cosine_per_row(reference, candidate)))
    max_abs = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    sqnr = sqnr_db(reference, candidate)
    if not cos >= tolerance.cosine_min:
        failures.append(f"{output_name}: min cosine {cos:.6f} < {tolerance.cosine_min}")
    if tolerance.max_abs is not None and not max_abs <= tolerance.max_abs:
        failures.append(f"{output_name}: max abs diff {max_abs:.3g} > {tolerance.max_abs}")
    if tolerance.sqnr_db is not None and not sqnr >= tolerance.sqnr_db:
        failures.append(f"{output_name}: SQNR {sqnr:.1f} dB < {tolerance.sqnr_db} dB")
    if top1 is not None and not top1.tie_aware >= tolerance.top1_agreement:
        failures.append(
            f"{output_name}: zero-shot top-1 agreement {top1.tie_aware:.3f} < {tolerance.top1_agreement} "
            f"(strict {top1.strict:.3f}, {top1.decisive} of {top1.queries} queries decisive)"
        )
    return ParityResult(
        not failures, cos, max_abs, sqnr, None if top1 is None else top1.tie_aware, int(reference.shape[0]),
        failures, None if top1 is None else top1.strict, None if top1 is None else top1.decisive,
    )
