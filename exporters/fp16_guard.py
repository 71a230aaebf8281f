"""What the fp16 guards of the Core ML and TensorRT targets share: fp16's range, the magnitude
thresholds they try in order, and the reason their reports give."""

from __future__ import annotations

from typing import Any

import numpy as np

FP16_MAX = 65504.0
# Fractions of FP16_MAX tried, in order, when keeping the overflowing ops alone misses the parity bar.
ESCALATION = (1 / 16, 1 / 256, 1 / 4096)
# Magnitudes a guard tries in order: above fp16's range, the escalation, then 0 (everything fp32).
THRESHOLDS = (FP16_MAX,) + tuple(FP16_MAX * f for f in ESCALATION) + (0.0,)
MAX_LISTED = 50


def peak(value: Any) -> float:
    """Largest |value| of a float array (inf if any value is not finite; 0 for other dtypes)."""
    value = np.asarray(value)
    if value.dtype.kind != "f" or not value.size:
        return 0.0
    # max(|x|) from the max and the min (two reductions, no temporaries); NaN propagates through
    # both, and any NaN or inf makes the result not finite.
    largest = max(float(np.max(value)), -float(np.min(value)))
    return largest if np.isfinite(largest) else float("inf")


def guard_reason(kept_any: bool, threshold: float, unit: str) -> str:
    """Why a guard kept what it kept fp32; `unit` names what it keeps ("op", "node")."""
    if not kept_any:
        return "none needed"
    if threshold == FP16_MAX:
        return "fp16 overflow (|value| > 65504 on the gate split)"
    if threshold > 0:
        return f"fp16 parity on the gate split needed {unit}s above |value| {threshold:.0f} in fp32"
    return f"fp16 parity on the gate split needed every {unit} in fp32"
