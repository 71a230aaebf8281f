"""What `quantize_` planned for a tower, as every target reads it, and which calibration data a
quantizing export uses (decided here only).

A plan is a config and, optionally, calibration data (`quantize_(spec, config, calib)`). It
applies to the exports at the config's precision (`config.precision`); an export at another
precision is built as without it. A target applies the config types its exporter implements
with the same meaning (precision, scheme, calibration data) and refuses the others with an
`InputError` naming the target and what it does instead; it never ignores one silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from edgevl.compress.config import QuantConfig
from edgevl.errors import InputError


@dataclass(frozen=True)
class Plan:
    """The part of a tower's `quantize_` plan that applies to one export: the config and the
    calibration data `quantize_` was given (None: none given)."""

    config: QuantConfig
    calibration: Any = None


def tower_plan(tower: Any, target: str, precision: str, applies: tuple[type, ...] = (),
               instead: str = "") -> Optional[Plan]:
    """The plan `target` applies to `tower` exported at `precision`: None when the tower has no
    plan at that precision. A planned config whose type is not in `applies` raises InputError
    naming the target, the config and `instead` (what the target does at that precision)."""
    config = getattr(tower, "quant_config", None)
    if config is None or config.precision != precision:
        return None
    if not isinstance(config, applies):
        kinds = f"it applies {', '.join(t.__name__ for t in applies)}; " if applies else ""
        raise InputError(
            f"target {target} does not apply quantize_({type(config).__name__}) to the {tower.component} "
            f"tower at precision {precision}: {kinds}{instead}"
        )
    return Plan(config, getattr(tower, "calibration", None))


def resolve_calibration(given: Any = None, plan: Optional[Plan] = None) -> "object":
    """The calibration set a quantizing export uses: `given` (`--calib`, `export(calibration=)`)
    when there is one, else the data `quantize_` was given for the plan that applies, else the
    bundled calibration split. Each source is read by `calibration.datasets.load_calibration`
    (a folder of images, a JSON-lines file, a list of texts or a `CalibrationSet`)."""
    from edgevl.calibration.datasets import load_calibration

    if given is not None:
        return load_calibration(given)
    if plan is not None and plan.calibration is not None:
        return load_calibration(plan.calibration)
    return load_calibration(None)


def unsupported_fields(config: QuantConfig, supported: tuple[str, ...]) -> list[str]:
    """The fields of `config` outside `supported` that differ from their defaults, as
    `name=value` (what a target that implements only part of a config must refuse)."""
    from dataclasses import fields

    default = type(config)()
    return [f"{f.name}={getattr(config, f.name)!r}" for f in fields(config)
            if f.name not in supported and getattr(config, f.name) != getattr(default, f.name)]
