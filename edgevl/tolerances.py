"""The one tolerance table, keyed by (target, precision) (coremltools' compare_backend habit).

Float artifacts must reproduce the reference; quantized ones are judged by cosine, SQNR and
zero-shot agreement, never by allclose. `max_abs` None means "reported, not gated".

`top1_agreement` gates the TIE-AWARE zero-shot agreement (`edgevl.parity.agreement`): a pick
counts as agreeing when it is the reference's, or a label whose reference score trails the best
by less than the row's own cosine floor is likely to move it (`parity.tie_bands`: three standard
deviations of the change an error of that size in a random direction makes). The strict
agreement (identical picks) and the number of decisive queries are reported beside it in the
manifest (`top1_agreement_strict`, `decisive_queries`), and are not gated. All are measured on
the held-out parity split (`edgevl/calibration/samples.py`), which int8 calibration and the int8
accuracy gate never see; the gate judges its own split through the same function. For quantized precisions `--max-drop` is the agreement drop
the user accepts: it can loosen the agreement floor (never the cosine floor), and the gate asks
for at least as much on its own split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional


@dataclass(frozen=True)
class Tolerance:
    cosine_min: float
    top1_agreement: float
    sqnr_db: Optional[float] = None
    max_abs: Optional[float] = None


_FP32 = Tolerance(cosine_min=0.9999, top1_agreement=1.0, sqnr_db=40.0, max_abs=1e-3)
_HALF = Tolerance(cosine_min=0.999, top1_agreement=1.0, sqnr_db=25.0)
_INT8 = Tolerance(cosine_min=0.99, top1_agreement=0.98, sqnr_db=15.0)
_WEIGHT_ONLY_INT8 = Tolerance(cosine_min=0.995, top1_agreement=0.98, sqnr_db=18.0)
_INT4 = Tolerance(cosine_min=0.98, top1_agreement=0.9, sqnr_db=10.0)

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("onnx", "fp32"): _FP32,
    ("onnx", "int8"): _INT8,
    ("onnx", "int8w"): _WEIGHT_ONLY_INT8,
    ("onnx", "int4w"): _INT4,
    ("openvino", "fp32"): _FP32,
    ("openvino", "fp16"): _HALF,
    # bf16 keeps 8 mantissa bits: looser than fp16, and zero-shot picks whose reference margins
    # are tiny flip (docs/openvino.md has the default model's figures).
    ("openvino", "bf16"): Tolerance(cosine_min=0.99, top1_agreement=0.95, sqnr_db=18.0),
    ("openvino", "int8"): _INT8,
    ("openvino", "int8w"): _WEIGHT_ONLY_INT8,
    ("openvino", "int4w"): _INT4,
    # Core ML: judged by edgevl's reference interpreter off macOS, by Core ML on macOS.
    ("coreml", "fp32"): _FP32,
    ("coreml", "fp16"): _HALF,
    ("coreml", "int8w"): _WEIGHT_ONLY_INT8,
    # 16 weight values per tensor (k-means): coarser than int4 groups of 128.
    ("coreml", "palettize4"): _INT4,
    # TensorRT: the engine where TensorRT runs, its engine-ready ONNX on ONNX Runtime elsewhere.
    ("tensorrt", "fp32"): _FP32,
    ("tensorrt", "fp16"): _HALF,
    ("tensorrt", "int8"): _INT8,
    # ExecuTorch: the .pte run by ExecuTorch's runtime (XNNPACK delegate, portable kernels).
    ("executorch", "fp32"): _FP32,
    ("executorch", "int8"): _INT8,
}


QUANTIZED_PRECISIONS = ("int8", "int8w", "int4w", "palettize4")


def tolerance_for(target: str, precision: str, max_drop: Optional[float] = None) -> Tolerance:
    """The row for (target, precision); with `max_drop` (quantized precisions only), the
    agreement floor is the row's or `1 - max_drop`, whichever is lower."""
    try:
        row = TOLERANCES[(target, precision)]
        if max_drop is not None and precision in QUANTIZED_PRECISIONS:
            return replace(row, top1_agreement=min(row.top1_agreement, round(1.0 - max_drop, 6)))
        return row
    except KeyError:
        raise KeyError(
            f"no tolerance row for target {target!r} at precision {precision!r}; add one to "
            "edgevl/tolerances.py"
        ) from None
