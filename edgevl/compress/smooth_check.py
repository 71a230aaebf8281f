"""The SmoothQuant fold, checked: the smoothed float graph must compute what the original does
on the calibration feeds before it is kept.

The fold moves a per-channel factor from an activation into the weights that read it, so every
consuming MatMul's output (and the graph output) must be unchanged up to float rounding. They are
compared tensor by tensor; the smoothing whose consumers go wrong first in graph order is dropped,
with the measured error as its reason, and the rest is folded and checked again. If the graph
output still differs while no consumer does, every smoothing is dropped.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from edgevl.compress.ort_graph import check_feeds, session_with_outputs

# Relative error (largest |difference| over the reference's largest magnitude, per feed) a
# smoothed graph may show: float32 re-association of a product, not a change of function.
SMOOTH_RTOL = 1e-4


def _consumers(model: "object", smooth: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Smoothed tensor -> output names of the constant-weight MatMuls that read it, in graph order.

    A V projection whose attention output is smoothed too changes by design (the factor of the
    attention output goes into its columns): it is left out here, and the out-projection that
    reads that attention output is what shows whether the fold holds."""
    from edgevl.compress.smooth_fold import value_projection_nodes

    inits = {i.name for i in model.graph.initializer}
    by_design = set()
    for t in smooth:
        v = value_projection_nodes(model, t)
        if v is not None:
            by_design.add(v[0].output[0])
    out: dict[str, list[str]] = {t: [] for t in smooth}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[0] in out and n.input[1] in inits and n.output[0] not in by_design:
            out[n.input[0]].append(n.output[0])
    return out


def _relative_errors(ref: list[dict[str, np.ndarray]], cand: "object", names: list[str], feeds: list) -> dict[str, float]:
    worst = {n: 0.0 for n in names}
    for expected, feed in zip(ref, feeds):
        got = dict(zip(names, cand.run(names, feed)))
        for n in names:
            a, b = expected[n], got[n]
            worst[n] = max(worst[n], float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
    return worst


def checked_fold_smoothing(
    model: "object", smooth: dict[str, np.ndarray], feeds: list[dict[str, np.ndarray]], rtol: float = SMOOTH_RTOL,
    fold: Optional[Callable[["object", dict[str, np.ndarray]], tuple["object", dict]]] = None,
) -> tuple["object", dict[str, Any]]:
    """`fold(model, smooth)` (default `smooth_fold.fold_smoothing`), kept only where it is numerically
    equivalent on `feeds`.

    Returns (graph, report): the report is `fold_smoothing`'s plus `smoothquant_check` (the
    largest relative error of the kept graph, how many feeds) and, for each smoothing dropped,
    `smoothquant_skipped[tensor]` with the measured error."""
    from edgevl.compress.smooth_fold import fold_smoothing

    fold = fold or fold_smoothing
    if not smooth:
        return fold(model, smooth)
    if not feeds:
        report = {"smoothquant_folded": 0, "smoothquant_into_v": 0, "smoothquant_mul": 0,
                  "smoothquant_skipped": {t: "no calibration feeds to check the fold on" for t in smooth}}
        return model, report
    feeds = check_feeds(feeds)
    consumers = _consumers(model, smooth)
    output = model.graph.output[0].name
    watched = [output] + [o for t in smooth for o in consumers[t]]
    ref_sess, names = session_with_outputs(model, watched)
    reference = [dict(zip(names, ref_sess.run(None, f))) for f in feeds]
    owner = {o: t for t, outs in consumers.items() for o in outs}
    order = {n.output[0]: i for i, n in enumerate(model.graph.node) if n.output}
    dropped: dict[str, str] = {}
    kept = dict(smooth)
    while True:
        folded, report = fold(model, kept)
        names_now = [output] + [o for t in kept for o in consumers[t]]
        cand, _ = session_with_outputs(folded, names_now)
        errors = _relative_errors(reference, cand, names_now, feeds)
        bad = sorted((o for o in names_now[1:] if errors[o] > rtol), key=lambda o: order.get(o, 0))
        if (not bad and errors[output] <= rtol) or not kept:
            break
        if bad:
            tensor = owner[bad[0]]
            dropped[tensor] = (
                f"the smoothed graph changed its consumer {bad[0]!r} by {errors[bad[0]]:.2e} (relative, "
                f"tolerance {rtol:.0e}) on the calibration feeds"
            )
            kept.pop(tensor)
            continue
        for tensor in kept:
            dropped[tensor] = (
                f"the smoothed graph changed the tower output by {errors[output]:.2e} (relative, tolerance "
                f"{rtol:.0e}) on the calibration feeds with every consumer unchanged; all smoothing dropped"
            )
        kept = {}
    report["smoothquant_skipped"] = {**report.get("smoothquant_skipped", {}), **dropped}
    report["smoothquant_check"] = {
        "max_relative_error": float(f"{errors[output]:.3g}"),
        "tolerance": rtol, "feeds": len(feeds), "kept": len(kept), "dropped": len(dropped),
    }
    return folded, report
