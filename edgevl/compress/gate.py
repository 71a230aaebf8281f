"""The int8 accuracy gate, whichever runtime executes the candidate.

A quantizer hands over `build(float_layers) -> model` (quantize with those layers kept float),
`run_fn(model) -> run` (a callable mapping a feed dict to the tower's output) and the gate data
(the gate split's inputs, the fp32 artifact's own outputs on them, the zero-shot agreement
function). `run_gate` finds the fewest layers of a ranked order to keep float for the
candidate's min cosine to reach the tolerance table's floor and its tie-aware zero-shot
agreement to drop by at most `max_drop`; every try is reported. The search is capped in tries
only, never in time: which candidate ships depends on the data and the tries, not on how fast or
busy the building machine is. A quantizer whose all-float build still fails (quantization
outside the ranked layers) may offer the unquantized tower as the last candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from edgevl.compress.gate_data import Feeds, GateData, HeldOut  # noqa: F401  (GateData re-exported)
from edgevl.compress.handlers import QuantContext
from edgevl.compress.ort_graph import session
from edgevl.errors import ParityError

if TYPE_CHECKING:
    from edgevl.parity import Agreement

RunFn = Callable[[Feeds], np.ndarray]

# 0, all, whole tower, then bisection: 12 tries bisect up to 2**9 = 512 ranked layers.
GATE_MAX_TRIES = 12
# The gate sees a few photos; the held-out parity split then judges unseen ones, where a candidate
# right at the tolerance's cosine floor flips near-tie zero-shot picks. So the gate asks for half
# the tolerance's distance to 1 (int8: 0.995 where parity asks 0.99).
GATE_COSINE_MARGIN = 0.5
# Confidence that the held-out split's worst row is no worse than the predicted one
# (`predicted_worst_cosine`), for gates given the held-out split's size.
HELD_OUT_CONFIDENCE = 0.9


def gate_cosine_floor(parity_cosine_min: float) -> float:
    """The min cosine a candidate must reach on the gate split for parity's `parity_cosine_min`."""
    return round(1.0 - GATE_COSINE_MARGIN * (1.0 - parity_cosine_min), 6)


def predicted_worst_cosine(cosines: np.ndarray, rows: int, confidence: float = HELD_OUT_CONFIDENCE) -> float:
    """The cosine the worst of `rows` unseen rows stays above with probability `confidence`, if
    rows' errors (1 - cosine) follow the log-normal fitted to the gate rows' `cosines`. The gate
    sees fewer rows than the held-out split, and the worst of more draws is worse: its own worst
    row alone does not predict parity's."""
    from statistics import NormalDist

    errors = np.log(np.clip(1.0 - np.asarray(cosines, np.float64), 1e-12, None))
    if errors.size < 2:
        return float(1.0 - np.exp(errors.max())) if errors.size else 1.0
    z = NormalDist().inv_cdf(confidence ** (1.0 / max(rows, 1)))
    return round(float(1.0 - np.exp(errors.mean() + z * errors.std(ddof=1))), 6)


def ort_run(model: "object") -> RunFn:
    """An ONNX model as a feeds -> first output callable (ONNX Runtime, CPU)."""
    sess = session(model)
    return lambda feeds: sess.run(None, feeds)[0]


def gate_data(spec: "object", component: str, run_fp32: RunFn, cosine_floor: float, split: str = "gate",
              held_out_rows: Optional[int] = None) -> GateData:
    """Gate data for `component`; `run_fp32` (the fp32 artifact on its own runtime) gives the
    reference, so the gate measures what quantization changed and nothing else; `cosine_floor`
    is the parity row's, which decides the zero-shot ties exactly as parity will. Which inputs
    the gate sees is decided here only: the gate split, disjoint from calibration and parity
    (`split="parity"` gives the same figures on the held-out split, for reports).
    `held_out_rows` (the parity split's rows for this tower) adds the held-out prediction
    (`HeldOut`)."""
    from edgevl.paritydata import build_parity_data, run_batched, zero_shot_agreement

    data = build_parity_data(spec, split=split)
    feeds = data.feeds(component)
    reference = run_batched(run_fp32, feeds)
    fn = None
    if zero_shot_agreement(data, component, reference, reference, cosine_floor) is not None:
        def fn(ref: np.ndarray, cand: np.ndarray) -> "Agreement":
            return zero_shot_agreement(data, component, ref, cand, cosine_floor)
    held_out = HeldOut(held_out_rows, cosine_floor) if held_out_rows else None
    return GateData(feeds, reference, fn, int(reference.shape[0]), held_out)


def build_gate_data(spec: "object", component: str, fp32_model: "object", cosine_floor: float) -> GateData:
    """Gate data with an fp32 ONNX graph (run on ONNX Runtime) as the reference."""
    return gate_data(spec, component, ort_run(fp32_model), cosine_floor)


def measure(gate: GateData, model: "object") -> dict:
    """Gate figures of a candidate: an ONNX model (run on ONNX Runtime) or a feeds -> output
    callable."""
    from edgevl.paritydata import run_batched

    run = model if callable(model) else ort_run(model)
    return figures_of(gate, run_batched(run, gate.feeds))


def figures_of(gate: GateData, out: np.ndarray) -> dict:
    """Min / mean cosine, SQNR and zero-shot agreement (tie-aware, strict) of `out` against the
    gate's reference: the same figures whichever runtime produced `out`."""
    from edgevl.parity import cosine_per_row, sqnr_db

    figures: dict[str, Any] = {"top1_agreement": None, "top1_agreement_strict": None, "decisive_queries": None}
    if not np.all(np.isfinite(out)):
        # NaN/Inf outputs fail the gate; -1 is the lowest cosine and stays valid JSON.
        return {**figures, "cosine_min": -1.0, "cosine_mean": -1.0, "sqnr_db": None,
                "non_finite": int(np.sum(~np.isfinite(out)))}
    cos = cosine_per_row(gate.reference, out)
    figures.update(cosine_min=round(float(cos.min()), 6), cosine_mean=round(float(cos.mean()), 6),
                   sqnr_db=round(float(sqnr_db(gate.reference, out)), 2))
    if gate.held_out is not None:
        figures.update(cosine_predicted=predicted_worst_cosine(cos, gate.held_out.rows),
                       cosine_predicted_floor=gate.held_out.cosine_floor, held_out_rows=gate.held_out.rows)
    if gate.agreement_fn is not None:
        found = gate.agreement_fn(gate.reference, out)
        figures.update(top1_agreement=round(found.tie_aware, 4), top1_agreement_strict=round(found.strict, 4),
                       decisive_queries=found.decisive)
    return figures


def gate_passes(figures: dict, cosine_min: float, max_drop: float) -> bool:
    """The tie-aware agreement is the one gated (as in the parity check); strict is reported.
    Figures with a held-out prediction (`cosine_predicted`) also need it at parity's floor."""
    ok = figures["cosine_min"] >= cosine_min
    if figures.get("cosine_predicted") is not None:
        ok = ok and figures["cosine_predicted"] >= figures["cosine_predicted_floor"]
    if figures["top1_agreement"] is not None:
        ok = ok and figures["top1_agreement"] >= 1.0 - max_drop - 1e-9
    return ok


@dataclass
class GateResult:
    model: Any
    float_layers: dict[str, str]  # layer -> why it stayed float
    report: dict  # passed, the thresholds, the chosen figures, every try
    whole_tower_float: bool = False


@dataclass
class GateLimits:
    """Cap on the search: a try is a full quantisation and measurement. Counted in tries, not
    seconds, so the same data gives the same artifact on any machine."""

    max_tries: int = GATE_MAX_TRIES

    def check(self, component: str, tried: list[dict], next_float: int, n_layers: int,
              precision: str = "int8") -> None:
        if len(tried) < self.max_tries:
            return
        over = f"{len(tried)} tries (cap {self.max_tries})"
        best = max(tried, key=lambda t: t.get("cosine_min", float("-inf")), default={})
        raise ParityError(
            f"{precision} {component} tower: the accuracy gate's search stopped after {over} without passing; "
            f"best was {best.get('float_layers', '?')} of {n_layers} layers float at min cosine "
            f"{best.get('cosine_min', float('nan')):.4f}, next would have been {next_float} float; "
            "use --precision int8w (weights only) for this tower, or raise --max-drop"
        )


def _progress_line(component: str, label: str, figures: dict, ok: bool, seconds: float) -> str:
    agree, strict = figures["top1_agreement"], figures["top1_agreement_strict"]
    return (f"accuracy gate ({component}): {label}: min cosine {figures['cosine_min']:.4f}"
            + (f", top-1 agreement {agree:.4f} (strict {strict:.4f})" if agree is not None else "")
            + (" -> passes" if ok else " -> fails") + f" [{seconds:.1f} s]")


def run_gate(
    order: list[str],
    build: Callable[[list[str]], Any],
    run_fn: Callable[[Any], RunFn],
    gate: GateData,
    cosine_min: float,
    max_drop: float,
    component: str,
    reason: Callable[[str, int], str],
    progress: Optional[Callable[[str], None]] = None,
    whole_float: Optional[Callable[[], Any]] = None,
    limits: Optional[GateLimits] = None,
    precision: str = "int8",
    all_float_fix: str = "the float graph around the quantized layers is at fault, report a bug",
) -> GateResult:
    """Keep the first k layers of `order` float, with the smallest k that passes: k = 0 first,
    then every ranked layer float, then bisection between the largest failing and the smallest
    passing k (the ranking puts the most harmful layers first, so more float layers do not
    hurt). `reason(layer, rank)` says why a layer stayed float (rank counts from 1).
    `whole_float()`, if given, builds the unquantized tower: the last candidate, for quantizers
    that quantize more than the ranked layers. Raises ParityError when nothing passes, naming
    `precision` and, when even every ranked layer kept back fails, `all_float_fix`."""
    limits = limits or GateLimits()
    tried: list[dict] = []
    report: dict[str, Any] = {"gated": True, "cosine_min": cosine_min, "max_drop": max_drop,
                              "ranked_layers": len(order), "search": "0, all, then bisection", "tried": tried}
    n = len(order)

    def attempt(k: Optional[int]) -> tuple[Any, dict, bool]:
        limits.check(component, tried, n if k is None else k, n, precision)
        t0 = time.perf_counter()
        model = whole_float() if k is None else build(order[:k])
        figures = measure(gate, run_fn(model))
        ok = gate_passes(figures, cosine_min, max_drop)
        seconds = round(time.perf_counter() - t0, 1)
        tried.append({"float_layers": "whole tower" if k is None else k, **figures, "passed": ok, "seconds": seconds})
        if progress is not None:
            label = "whole tower float" if k is None else f"{k} of {n} layers float"
            progress(_progress_line(component, label, figures, ok, seconds))
        return model, figures, ok

    def result(model: Any, k: int, figures: dict) -> GateResult:
        report.update(passed=True, figures=figures)
        return GateResult(model, {name: reason(name, i + 1) for i, name in enumerate(order[:k])}, report)

    model, figures, ok = attempt(0)
    if ok:
        return result(model, 0, figures)
    failing, passing = 0, None
    if n > 0:
        model, figures, ok = attempt(n)
        if ok:
            passing, best = n, (model, figures)
    if passing is None:
        if whole_float is not None:
            model, figures, ok = attempt(None)
            if ok:
                why = "no int8 candidate passed the accuracy gate: the whole tower stays float"
                report.update(passed=True, figures=figures)
                return GateResult(model, {name: why for name in order}, report, whole_tower_float=True)
        raise ParityError(
            f"{precision} {component} tower fails the accuracy gate even with every layer float "
            f"({figures}); {all_float_fix}"
        )
    while passing - failing > 1:
        mid = (failing + passing) // 2
        model, figures, ok = attempt(mid)
        if ok:
            passing, best = mid, (model, figures)
        else:
            failing = mid
    return result(best[0], passing, best[1])


def gate_loop(
    ctx: QuantContext, order: list[str], local: dict[str, float], max_drop: float,
    build: Callable[[dict[str, str]], tuple["object", Any]],
    reason: Optional[Callable[[str, int], str]] = None, limits: Optional[GateLimits] = None,
    **gate_options: str,
) -> tuple["object", dict[str, str], tuple, dict]:
    """The ONNX schemes' gate: `run_gate` on ONNX Runtime. `build(drop)` gets the layers kept
    float with why and returns (model, extras); returns (model, the layers kept float with why,
    (extras,), the gate report). `reason(name, rank)` defaults to the layer's local SQNR;
    `gate_options` (`precision`, `all_float_fix`) go to `run_gate` for its error messages.
    Without gate data (`ctx.gate` None) every layer is quantized and the report says it was not
    gated (`passed` None, with the reason): nothing was measured, so nothing passed."""
    if reason is None:
        def reason(n: str, rank: int) -> str:
            return f"kept float by the accuracy gate (local SQNR {local[n]:.1f} dB, rank {rank})"
    extras: dict[int, Any] = {}

    def build_list(float_layers: list[str]) -> "object":
        model, extras[len(float_layers)] = build({n: reason(n, i + 1) for i, n in enumerate(float_layers)})
        return model

    if ctx.gate is None:
        model = build_list([])
        report = {"gated": False, "passed": None, "figures": None, "tried": [],
                  "reason": "no gate data was given (quantize_model with gate=None): every layer quantized, unmeasured"}
        return model, {}, (extras[0],), report
    result = run_gate(order, build_list, ctx.runner or ort_run, ctx.gate, ctx.cosine_min, max_drop,
                      ctx.component, reason, ctx.progress, limits=limits, **gate_options)
    return result.model, result.float_layers, (extras[len(result.float_layers)],), result.report
