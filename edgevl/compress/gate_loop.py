"""The int8 accuracy gate, independent of the runtime that executes the candidate.

A runtime-specific quantizer hands over three things: `build(float_layers) -> model` (quantize
with those layers kept float), `run_fn(model) -> run` (a callable mapping a feed dict to the
tower's output array), and the gate data (inputs, the fp32 artifact's own outputs on them, and
the zero-shot agreement function). `gate_loop` then keeps the first k layers of a ranked order
float, k = 0, 1, 2, 3, 5, 9, 17, ..., until the candidate's min cosine reaches the tolerance
table's floor and its zero-shot agreement drops by at most `max_drop`; every try is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgevl.errors import ParityError

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], np.ndarray]


@dataclass
class GateData:
    """The gate's inputs for one tower, the fp32 artifact's outputs on them, and the zero-shot
    agreement function `(reference, candidate) -> (tie-aware, strict)` (None: not defined)."""

    feeds: Feeds
    reference: np.ndarray
    agreement_fn: Optional[Callable[[np.ndarray, np.ndarray], tuple[float, float]]]
    n_samples: int


def gate_data(spec: Any, component: str, run_fp32: RunFn) -> GateData:
    """Gate data for `component`, with `run_fp32` (the fp32 artifact on its own runtime) giving
    the reference, so the gate measures what quantization changed and nothing else. Which inputs
    the gate sees is decided here only."""
    from edgevl.parity import agreement
    from edgevl.paritydata import build_parity_data, run_batched

    data = build_parity_data(spec)
    feeds = data.feeds(component)
    reference = run_batched(run_fp32, feeds)
    n_prompts = data.n_prompts
    fn = None
    if component == "text" and spec.tokenize is not None:
        images = data.reference["image"].astype(np.float64)

        def fn(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
            return agreement(images @ ref[-n_prompts:].T, images @ cand[-n_prompts:].T)
    elif component == "image" and spec.tokenize is not None:
        prompts = data.reference["text"][-n_prompts:].astype(np.float64)

        def fn(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
            return agreement(ref @ prompts.T, cand @ prompts.T)
    return GateData(feeds, reference, fn, int(reference.shape[0]))


def measure(gate: GateData, run: RunFn) -> dict:
    """Min / mean cosine, SQNR and (tie-aware, strict) zero-shot agreement of `run` against the
    gate's reference."""
    from edgevl.parity import cosine_per_row, sqnr_db
    from edgevl.paritydata import run_batched

    out = run_batched(run, gate.feeds)
    cos = cosine_per_row(gate.reference, out)
    figures: dict[str, Any] = {
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "sqnr_db": round(float(sqnr_db(gate.reference, out)), 2),
        "top1_agreement": None,
        "top1_agreement_strict": None,
    }
    if not np.all(np.isfinite(out)):
        # NaN/Inf outputs fail the gate; -1 is the lowest cosine and stays valid JSON.
        figures.update(cosine_min=-1.0, non_finite=int(np.sum(~np.isfinite(out))))
        return figures
    if gate.agreement_fn is not None:
        tie, strict = gate.agreement_fn(gate.reference, out)
        figures["top1_agreement"], figures["top1_agreement_strict"] = round(tie, 4), round(strict, 4)
    return figures


def gate_passes(figures: dict, cosine_min: float, max_drop: float) -> bool:
    """The tie-aware agreement is the one gated (as in the parity check)."""
    ok = figures["cosine_min"] >= cosine_min
    if figures["top1_agreement"] is not None:
        ok = ok and figures["top1_agreement"] >= 1.0 - max_drop - 1e-9
    return ok


def float_counts(n: int) -> list[int]:
    """The numbers of float layers tried, in order: 0, 1, 2, 3, 5, 9, 17, ..., n."""
    counts, k, step = [0], 0, 1
    while k < n:
        k = min(n, k + step)
        counts.append(k)
        if len(counts) > 3:
            step *= 2
    return counts


@dataclass
class GateResult:
    model: Any
    float_layers: dict[str, str]  # layer -> why it stayed float
    report: dict  # passed, the thresholds, the chosen figures, every try


def gate_loop(
    order: list[str],
    build: Callable[[list[str]], Any],
    run_fn: Callable[[Any], RunFn],
    gate: GateData,
    cosine_min: float,
    max_drop: float,
    component: str,
    reason: Callable[[str, int], str],
    progress: Optional[Callable[[str], None]] = None,
) -> GateResult:
    """Build with the first k layers of `order` float for k in `float_counts(len(order))` until
    the gate passes. `reason(layer, rank)` says why a layer stayed float (rank counts from 1).
    Raises ParityError when even the all-float build fails (the float graph is at fault)."""
    tried: list[dict] = []
    figures: dict = {}
    for k in float_counts(len(order)):
        t0 = time.perf_counter()
        model = build(order[:k])
        figures = measure(gate, run_fn(model))
        ok = gate_passes(figures, cosine_min, max_drop)
        seconds = round(time.perf_counter() - t0, 1)
        tried.append({"float_layers": k, **figures, "passed": ok, "seconds": seconds})
        if progress is not None:
            agree, strict = figures["top1_agreement"], figures["top1_agreement_strict"]
            progress(
                f"accuracy gate ({component}): {k} of {len(order)} layers float: "
                f"min cosine {figures['cosine_min']:.4f}"
                + (f", top-1 agreement {agree:.4f} (strict {strict:.4f})" if agree is not None else "")
                + (" -> passes" if ok else " -> fails") + f" [{seconds:.1f} s]"
            )
        if ok:
            report = {"passed": True, "figures": figures, "tried": tried, "cosine_min": cosine_min,
                      "max_drop": max_drop, "ranked_layers": len(order)}
            return GateResult(model, {n: reason(n, i + 1) for i, n in enumerate(order[:k])}, report)
    raise ParityError(
        f"int8 {component} tower fails the accuracy gate even with every layer float "
        f"({figures}); the float graph around the quantized layers is at fault, report a bug"
    )
