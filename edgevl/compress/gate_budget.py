"""Bounds on the accuracy gate's search: how many builds it may try and for how long.

The gate rebuilds and re-measures the quantised tower with more layers float each try (k = 0, 1,
2, 3, 5, 9, ...). On a large tower a try is a full quantisation and parity run, so the search is
capped in tries and in wall time; when a cap is reached the export fails with the best figures
seen and what to change, rather than running on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from edgevl.errors import ParityError

GATE_MAX_TRIES = 12
GATE_MAX_SECONDS = 1200.0


@dataclass
class GateBudget:
    """Counts the gate's tries and time; `check` raises ParityError once either cap is spent."""

    component: str
    max_tries: int = GATE_MAX_TRIES
    max_seconds: float = GATE_MAX_SECONDS
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError(f"gate max_tries {self.max_tries} must be at least 1")
        if self.max_seconds <= 0:
            raise ValueError(f"gate max_seconds {self.max_seconds} must be positive")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self, tried: list[dict], next_float: int, n_layers: int) -> None:
        """Before the next try (with `next_float` of `n_layers` layers float): raise if the caps
        leave no room for it. `tried`: the gate's report of every try so far."""
        spent = self.elapsed()
        over: Optional[str] = None
        if len(tried) >= self.max_tries:
            over = f"{len(tried)} tries (cap {self.max_tries})"
        elif spent >= self.max_seconds:
            over = f"{spent:.0f} s (cap {self.max_seconds:.0f} s)"
        if over is None:
            return
        best = max(tried, key=lambda t: t.get("cosine_min", float("-inf")), default={})
        raise ParityError(
            f"int8 {self.component} tower: the accuracy gate's search stopped after {over} without "
            f"passing; best was {best.get('float_layers', '?')} of {n_layers} layers float at min cosine "
            f"{best.get('cosine_min', float('nan')):.4f}, next would have been {next_float} float; "
            "use --precision int8w (weights only) for this tower, or exclude its sensitive layers from int8"
        )
