"""Token reduction judged like any other compression: against the UNREDUCED tower, on real photos.

`apply_tokens(spec, config, max_drop)` measures the unreduced image tower on the gate and parity
splits first, then
  - with a fixed r / keep, patches the tower (`reduce_tokens_`);
  - with `auto`, bisects the candidate list (`AUTO_R` / `AUTO_KEEP`, least reduction first) on
    the gate split for the most reduction whose zero-shot top-1 agreement (tie-aware, the same
    figure the int8 gate uses) with the unreduced tower drops by at most `max_drop`, and patches
    the tower with it. Every try is recorded. No cosine floor is applied: merging tokens moves
    the embeddings by design, and agreement on the task is what the user gives up.
Either way the record holds the chosen tower's agreement with the unreduced one on the held-out
parity split (never seen by the search). Parity of each artifact is then checked, as always,
against the PyTorch reference of the tower as patched.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from edgevl.compress.tokens_config import AUTO_KEEP, AUTO_R, TokenConfig
from edgevl.errors import InputError


def _figures(data: Any, reference: np.ndarray, out: np.ndarray) -> dict:
    from edgevl.parity import cosine_per_row
    from edgevl.paritydata import zero_shot_agreement
    from edgevl.tolerances import tolerance_for

    cos = cosine_per_row(reference, out)
    figures: dict[str, Any] = {"cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6),
                               "top1_agreement": None, "top1_agreement_strict": None}
    # Ties are judged at the fp32 row's cosine floor: picks closer than fp32 rounding are ties.
    found = zero_shot_agreement(data, "image", reference, out, tolerance_for("onnx", "fp32").cosine_min)
    if found is not None:
        figures.update(top1_agreement=round(found.tie_aware, 4), top1_agreement_strict=round(found.strict, 4),
                       queries=found.queries)
    return figures


def _image_out(spec: Any, feeds: dict) -> np.ndarray:
    from edgevl.paritydata import run_batched

    return run_batched(spec.image.forward_numpy, feeds)


def _candidates(config: TokenConfig, spec: Any) -> list[TokenConfig]:
    """The auto candidates that give distinct plans on this tower, least reduction first."""
    from edgevl.compress.tokens import describe_tower
    from edgevl.compress.tokens_plan import make_plan

    tower = describe_tower(spec)
    values = AUTO_R if config.method == "tome" else AUTO_KEEP
    seen, out = set(), []
    for v in values:
        candidate = config.with_value(v)
        counts = tuple(make_plan(candidate, tower.depth, tower.tokens, tower.protect).per_layer_tokens)
        if counts not in seen:
            seen.add(counts)
            out.append(candidate)
    return out


def search(spec: Any, config: TokenConfig, max_drop: float, gate: Any, reference: np.ndarray,
           progress: Callable[[str], None]) -> tuple[TokenConfig, list[dict]]:
    """Bisect the candidates for the most reduction within `max_drop` on the gate split; the
    first candidate (no reduction) passes by definition. Returns the choice and every try."""
    from edgevl.compress.tokens import reduce_tokens_

    candidates = _candidates(config, spec)
    tries: list[dict] = []

    def passes(i: int) -> bool:
        reduce_tokens_(spec, candidates[i])
        figures = _figures(gate, reference, _image_out(spec, gate.image_feeds))
        agreement = figures["top1_agreement"]
        ok = agreement is None or agreement >= 1.0 - max_drop - 1e-9
        tries.append({"config": candidates[i].label(), **figures, "passed": ok})
        progress(f"tokens gate: {candidates[i].label()} agreement {agreement} cosine min "
                 f"{figures['cosine_min']:.4f}: {'pass' if ok else 'miss'}")
        return ok

    return candidates[last_passing(len(candidates), passes)], tries


def last_passing(n: int, passes: Callable[[int], bool]) -> int:
    """The largest i in 0..n-1 with passes(i), by bisection, taking index 0 as passing and
    passes as monotone (true up to some index, false after); the last index is tried first."""
    lo, hi = 0, n - 1
    if hi == 0 or passes(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo


def apply_tokens(spec: Any, config: TokenConfig, max_drop: float = 0.01,
                 progress: Optional[Callable[[str], None]] = None) -> dict:
    """Reduce `spec`'s image tower as `config` says (searching r / keep when `auto`) and return
    the manifest's `tokens` record: the plan (method, per-layer counts, FLOPs before and after),
    the gate's tries, and agreement with the unreduced tower on the held-out parity split."""
    from edgevl.compress.tokens import describe_tower, reduce_tokens_
    from edgevl.paritydata import build_split_data

    say = progress or (lambda _line: None)
    describe_tower(spec)  # a tower without tokens is refused before any data is read
    if not 0.0 <= max_drop < 1.0:
        raise InputError(f"max_drop {max_drop} must be in [0, 1) (e.g. 0.01)")
    gate, parity = build_split_data(spec, "gate"), build_split_data(spec, "parity")
    gate_ref, parity_ref = gate.reference["image"], parity.reference["image"]
    tries: list[dict] = []
    chosen = config
    if config.auto:
        chosen, tries = search(spec, config, max_drop, gate, gate_ref, say)
    record = reduce_tokens_(spec, chosen)
    record["agreement_with_unreduced"] = {"split": "parity",
                                          **_figures(parity, parity_ref, _image_out(spec, parity.image_feeds))}
    if config.auto:
        record["gate"] = {"requested": config.label(), "max_drop": max_drop, "split": "gate",
                          "chosen": chosen.label(), "tries": tries}
    spec.derived["tokens"] = record
    return record


def apply_tokens_with_progress(spec: "object", tokens: "object", max_drop: float, progress: "object") -> dict:
    """`apply_tokens` as one step of an export's progress output, with its figures on one line."""
    with progress.step(f"reducing image tokens ({tokens.label()})") as details:
        record = apply_tokens(spec, tokens, max_drop, lambda line: progress.info(f"  {line}"))
        agree = record["agreement_with_unreduced"]
        details.append(f"{record['config']}: tokens per layer {record['per_layer_tokens']}, encoder FLOPs "
                       f"x{record['flops_ratio']:.3f}, agreement with the unreduced tower "
                       f"{agree['top1_agreement']} (cosine min {agree['cosine_min']:.4f}) on the parity split")
    return record
