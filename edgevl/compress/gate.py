"""The int8 accuracy gate: gate data (inputs, the fp32 graph's outputs on them, zero-shot
agreement), the figures of a candidate, and the loop that keeps the most harmful layers float
until the candidate passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from edgevl.compress.ort_graph import session
from edgevl.errors import ParityError

if TYPE_CHECKING:
    from edgevl.compress.handlers import QuantContext


@dataclass
class GateData:
    """The parity inputs for one tower, the fp32 artifact's outputs on them, and the other
    tower's reference embeddings (for zero-shot agreement)."""

    feeds: dict[str, np.ndarray]
    reference: np.ndarray
    agreement_fn: Optional[Callable[[np.ndarray, np.ndarray], tuple[float, float]]]
    n_samples: int




def build_gate_data(spec: "object", component: str, fp32_model: "object") -> GateData:
    from edgevl.parity import agreement
    from edgevl.paritydata import build_parity_data, run_batched

    data = build_parity_data(spec)
    feeds = data.feeds(component)
    sess = session(fp32_model)
    reference = run_batched(lambda f: sess.run(None, f)[0], feeds)
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


def measure(gate: GateData, model: "object") -> dict:
    """Gate figures of an ONNX model (run on ONNX Runtime) on the gate inputs."""
    from edgevl.paritydata import run_batched

    sess = session(model)
    return figures_of(gate, run_batched(lambda f: sess.run(None, f)[0], gate.feeds))


def figures_of(gate: GateData, out: np.ndarray) -> dict:
    """Min / mean cosine, SQNR and zero-shot agreement (tie-aware, strict) of `out` against the
    gate's reference: the same figures whichever runtime produced `out`."""
    from edgevl.parity import cosine_per_row, sqnr_db

    cos = cosine_per_row(gate.reference, out)
    return {
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "sqnr_db": round(float(sqnr_db(gate.reference, out)), 2),
        "top1_agreement": None,
        "top1_agreement_strict": None,
    } | ({} if gate.agreement_fn is None else dict(zip(
        ("top1_agreement", "top1_agreement_strict"),
        (round(v, 4) for v in gate.agreement_fn(gate.reference, out)))))


def gate_passes(figures: dict, cosine_min: float, max_drop: float) -> bool:
    ok = figures["cosine_min"] >= cosine_min
    if figures["top1_agreement"] is not None:
        ok = ok and figures["top1_agreement"] >= 1.0 - max_drop - 1e-9
    return ok



def gate_loop(
    ctx: QuantContext, order: list[str], local: dict[str, float], max_drop: float,
    build: Callable[[dict[str, str]], tuple["object", Any]],
    reason: Optional[Callable[[str, int], str]] = None,
) -> tuple["object", dict[str, str], tuple, dict]:
    """Build with the first k layers of `order` float, k = 0, 1, 2, 3, 5, 9, ..., until the gate
    passes; returns (model, the layers kept float with why, build's extras, the gate report).
    `reason(name, rank)` says why a layer stayed float (default: its local SQNR)."""
    if reason is None:
        def reason(n: str, rank: int) -> str:
            return f"kept float by the accuracy gate (local SQNR {local[n]:.1f} dB, rank {rank})"
    tried: list[dict] = []
    k, step = 0, 1
    while True:
        drop = {n: reason(n, i + 1) for i, n in enumerate(order[:k])}
        qmodel, extra = build(drop)
        if ctx.gate is None:
            figures, ok = None, True
        else:
            figures = measure(ctx.gate, qmodel)
            ok = gate_passes(figures, ctx.cosine_min, max_drop)
        tried.append({"float_layers": k, **(figures or {})})
        if ctx.progress is not None and figures is not None:
            agree = figures["top1_agreement"]
            ctx.progress(
                f"accuracy gate: {k} of {len(order)} layers float: min cosine {figures['cosine_min']:.4f}"
                + (f", top-1 agreement {agree:.4f}" if agree is not None else "")
                + (" -> passes" if ok else " -> fails")
            )
        if ok:
            report = {"passed": True, "figures": figures, "tried": tried, "cosine_min": ctx.cosine_min,
                      "max_drop": max_drop}
            return qmodel, drop, (extra,), report
        if k >= len(order):
            raise ParityError(
                f"int8 {ctx.component} tower fails the accuracy gate even with every layer float "
                f"({figures}); the float graph around the quantized layers is at fault, report a bug"
            )
        k = min(len(order), k + step)
        step = step * 2 if len(tried) > 2 else step
