"""SmoothQuant factors, with the migration strength (alpha) chosen per activation tensor.

SmoothQuant divides an activation's input channels by s and multiplies the consuming weights'
rows by s, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha). One alpha for a whole model is a
compromise: the best alpha differs between the LayerNorm and GELU outputs of one model, and the
FFN inputs (GELU outputs) are sensitive to it (benchmarks/results/smoothquant_alpha.md).

`choose_alpha` picks, per tensor, the alpha of a grid whose simulated int8 result is closest to
float on the calibration samples: the consumers' outputs with the smoothed activation on the
runtime's activation grid and the smoothed weights on per-output-channel symmetric int8, summed
over the consumers (the search Intel Neural Compressor calls SmoothQuant auto-alpha, here with a
per-layer output loss). The choice uses only the calibration set, never the gate or the
parity split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgevl.calibration.observers import qparams_for_range
from edgevl.compress.ort_graph import producers
from edgevl.compress.qdq import quantize_weight_per_channel


def smoothing_factors(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """Per-input-channel factors s (clipped to [1e-2, 1e3] so no channel is blown up or zeroed)."""
    s = np.clip(act_absmax, 1e-5, None) ** alpha / np.clip(weight_absmax, 1e-5, None) ** (1 - alpha)
    return np.clip(s, 1e-2, 1e3).astype(np.float32)


def _uint8_fake_quant(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x on the asymmetric uint8 grid covering [lo, hi] and 0 (ONNX QuantizeLinear /
    DynamicQuantizeLinear semantics)."""
    q = qparams_for_range(lo, hi)
    return (np.clip(np.round(x / q.scale) + q.zero_point, q.qmin, q.qmax) - q.zero_point) * q.scale


def _int8_per_column(w: np.ndarray, qmax: int = 127) -> np.ndarray:
    codes, scales = quantize_weight_per_channel(w, qmax=qmax)
    return codes * scales[None, :]


def simulated_sqnr_db(
    samples: Sequence[np.ndarray], weights: Sequence[np.ndarray], s: np.ndarray, per_sample_range: bool,
    float_outputs: Optional[Sequence[np.ndarray]] = None, weight_qmax: int = 127,
) -> float:
    """Output SQNR (dB) of the consumers of one activation tensor after smoothing with `s` and
    int8 quantisation: each sample's rows [rows, channels] on a uint8 grid (its own range when
    `per_sample_range`, as ORT's dynamic quantisation does at batch 1; else one range over all
    samples, as a static recipe), each weight [in, out] per output column. `float_outputs`: the
    float products (all samples' rows @ each weight), when the caller already has them."""
    smoothed = [x / s for x in samples]
    if per_sample_range:
        quantized = [_uint8_fake_quant(x, float(x.min()), float(x.max())) for x in smoothed]
    else:
        lo = min(float(x.min()) for x in smoothed)
        hi = max(float(x.max()) for x in smoothed)
        quantized = [_uint8_fake_quant(x, lo, hi) for x in smoothed]
    x_q = np.concatenate(quantized)
    if float_outputs is None:
        x_ref = np.concatenate(samples)
        float_outputs = [x_ref @ w for w in weights]
    signal = noise = 0.0
    for w, y in zip(weights, float_outputs):
        y_q = x_q @ _int8_per_column(w * s[:, None], weight_qmax)
        signal += float(np.sum(np.square(y, dtype=np.float64)))
        noise += float(np.sum(np.square(y - y_q, dtype=np.float64)))
    return 10.0 * float(np.log10(max(signal, 1e-30) / max(noise, 1e-30)))


@dataclass(frozen=True)
class AlphaChoice:
    alpha: float
    sqnr_db: dict[float, float]  # every alpha tried -> simulated output SQNR


def choose_alpha(
    samples: Sequence[np.ndarray], weights: Sequence[np.ndarray], grid: Sequence[float], per_sample_range: bool,
    weight_qmax: int = 127,
) -> AlphaChoice:
    """The alpha of `grid` with the best simulated output SQNR (the smaller alpha on a tie).

    `samples`: the activation, one [rows, channels] array per calibration sample; `weights`: the
    [channels, out] weights of every MatMul that reads it."""
    act_absmax = np.max([np.abs(x).max(axis=0) for x in samples], axis=0)
    weight_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    x_ref = np.concatenate(samples)
    float_outputs = [x_ref @ w for w in weights]
    scores = {
        float(a): simulated_sqnr_db(
            samples, weights, smoothing_factors(act_absmax, weight_absmax, a), per_sample_range, float_outputs,
            weight_qmax,
        )
        for a in sorted(grid)
    }
    best = max(scores, key=lambda a: (round(scores[a], 6), -a))
    return AlphaChoice(best, {a: round(v, 2) for a, v in scores.items()})


def producer_kinds(model: "object") -> dict[str, str]:
    """Tensor -> what produced it, as `SmoothQuantConfig.producers` names it: the ONNX op type,
    or "QuickGelu" for `x * Sigmoid(c * x)` (CLIP's quick-GELU, exported as two Muls and a
    Sigmoid; c = 1 is SiLU), whose outputs feed the MLP's second projection as a Gelu's do."""
    producer = producers(model)
    kinds: dict[str, str] = {}
    for node in model.graph.node:
        for out in node.output:
            kinds[out] = node.op_type
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for x, gate in (node.input, node.input[::-1]):
            sig = producer.get(gate)
            if sig is None or sig.op_type != "Sigmoid":
                continue
            inner = producer.get(sig.input[0])
            if sig.input[0] == x or (inner is not None and inner.op_type == "Mul" and x in inner.input):
                kinds[node.output[0]] = "QuickGelu"
                break
    return kinds
