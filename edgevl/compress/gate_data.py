"""What the accuracy gate judges a candidate against, for one tower (`GateData`).

Its own module so that the quantisation handlers' context (`edgevl.compress.handlers`) can carry
it without importing the gate, and the gate can take that context: imports go gate -> handlers
-> gate_data, one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

if TYPE_CHECKING:
    from edgevl.parity import Agreement

Feeds = dict[str, np.ndarray]


@dataclass
class GateData:
    """The gate's inputs for one tower, the fp32 artifact's outputs on them, and the zero-shot
    agreement function `(reference, candidate) -> parity.Agreement` (None: not defined)."""

    feeds: Feeds
    reference: np.ndarray
    agreement_fn: Optional[Callable[[np.ndarray, np.ndarray], "Agreement"]]
    n_samples: int
    held_out: Optional["HeldOut"] = None


@dataclass(frozen=True)
class HeldOut:
    """The held-out split a passing candidate will face: its row count and parity's cosine
    floor. With it, the gate also asks the worst row it predicts for that many rows
    (`gate.predicted_worst_cosine`) to reach the floor, not only the worst of its own rows."""

    rows: int
    cosine_floor: float
