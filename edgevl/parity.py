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


# Zero-shot picks whose reference scores lie within this of the reference's best are ties. On
# the default model several out-of-domain parity photos (hubble, moon, grass) have top-1/top-2
# gaps under 5e-4 on cosine scores of ~0.05-0.1, which any rounding flips; counting those as
# disagreements would measure the photo's ambiguity, not the artifact. The strict figure is
# reported beside the tie-aware one in every manifest.
TIE_MARGIN = 1e-3


def zero_shot_scores(queries: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Similarity of each query embedding (rows) to each class embedding (columns)."""
    return queries.astype(np.float64) @ classes.astype(np.float64).T


def agreement(ref_scores: np.ndarray, cand_scores: np.ndarray, margin: float = TIE_MARGIN) -> tuple[float, float]:
    """(tie-aware, strict) top-1 agreement. Tie-aware: the share of queries whose candidate pick
    scores, under the reference, within `margin` of the reference's own best. Strict: the share
    whose picks are identical."""
    picks = np.argmax(cand_scores, axis=-1)
    chosen = ref_scores[np.arange(len(picks)), picks]
    tie_aware = float(np.mean(chosen >= ref_scores.max(axis=-1) - margin))
    strict = float(np.mean(picks == np.argmax(ref_scores, axis=-1)))
    return tie_aware, strict


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    top1: Optional[tuple[float, float]],
    output_name: str,
) -> ParityResult:
    """Compare one output; `top1` is the (tie-aware, strict) agreement computed by the caller
    (None if not defined). The tie-aware figure is the one gated."""
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
    tie_aware, strict = top1 if top1 is not None else (None, None)
    if tie_aware is not None and not tie_aware >= tolerance.top1_agreement:
        failures.append(
            f"{output_name}: zero-shot top-1 agreement {tie_aware:.3f} < {tolerance.top1_agreement} (strict {strict:.3f})"
        )
    return ParityResult(
        not failures, cos, max_abs, sqnr, tie_aware, int(reference.shape[0]),
        failures, strict,
    )
