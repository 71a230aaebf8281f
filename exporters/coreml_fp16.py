"""The fp16 guard: which ops of a tower must stay fp32 in a Core ML fp16 program.

1. The tower converts to an fp32 MIL program (stopped where coremltools' fp16 pass would run, so
   its op names are the ones that pass's op selector sees), which edgevl's reference interpreter runs on the gate
   split (real images / captions; never the held-out parity split), recording each op's largest
   magnitude. An op whose values exceed fp16's range (65504) would give inf in fp16: it stays fp32.
2. The fp16 program (those ops fp32, via coremltools' `FP16ComputePrecision(op_selector=...)`)
   runs on the gate split; if it misses the fp16 tolerance row, the ops with the largest
   magnitudes (those lose the most absolute precision in fp16) are kept fp32 too, at magnitude
   thresholds `fp16_guard.ESCALATION` below the range, and finally every op.

The report names the ops kept fp32 and why; it goes into the manifest's `passes.fp16_guard`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgevl.exporters.coreml_convert import ImageInput, convert_tower, silent
from edgevl.exporters.fp16_guard import FP16_MAX, MAX_LISTED, THRESHOLDS, guard_reason, peak
from edgevl.models.spec import ModelSpec, TowerSpec



def _input_vars(op: Any) -> list:
    found = []
    for var in op.inputs.values():
        found.extend(var if isinstance(var, (list, tuple)) else [var])
    return found


def op_magnitudes(program: Any, feeds: dict[str, np.ndarray], batch: int = 16) -> dict[str, float]:
    """For every non-const op of a MIL program, keyed by its first output's name: the largest
    |value| among its float inputs and outputs on `feeds`. An input counts because the fp16
    program casts an fp32 value to fp16 before an fp16 op reads it, so a layer norm reading an
    overflowing sum overflows although its own output is small."""
    from edgevl.runtimes.mil_interpreter import MilInterpreter

    interpreter = MilInterpreter(program)
    values: dict[str, float] = {}  # var name -> peak
    peaks: dict[str, float] = {}

    def observe(op: Any, outputs: tuple) -> None:
        if op.op_type == "const":
            return
        for var, value in zip(op.outputs, outputs):
            values[var.name] = max(values.get(var.name, 0.0), peak(value))
        touched = [values.get(v.name, peak(v.val) if v.val is not None else 0.0) for v in _input_vars(op)]
        touched += [values[v.name] for v in op.outputs]
        name = op.outputs[0].name
        peaks[name] = max(peaks.get(name, 0.0), *touched)

    n = next(iter(feeds.values())).shape[0]
    for i in range(0, n, batch):
        interpreter.run({k: v[i:i + batch] for k, v in feeds.items()}, observe=observe)
    return peaks


def gate_parity(path: Path, spec: ModelSpec, tower: TowerSpec, tolerance_key: tuple[str, str]) -> Any:
    """The program's parity figures on the gate split (interpreted)."""
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.runtimes.mil_interpreter import load_interpreter
    from edgevl.tolerances import tolerance_for

    data = build_split_data(spec, "gate")
    interpreter = load_interpreter(path)
    name = interpreter.output_names[0]
    candidate = run_batched(lambda f: interpreter.run(f)[name], data.feeds(tower.component), 16)
    return verify_outputs(data, tower.component, candidate.astype(np.float32), tolerance_for(*tolerance_key),
                          f"coreml fp16 guard {tower.component}")


def _keep(names: set[str]) -> Any:
    return lambda op: bool(op.outputs) and op.outputs[0].name in names


def guarded_fp16(
    spec: ModelSpec, tower: TowerSpec, static_batch: Optional[int], workdir: Path,
    convert: Optional[TowerSpec] = None, image_input: Optional[ImageInput] = None,
) -> tuple[Any, dict]:
    """The fp16 model of `tower` with the guard applied, and the guard's report. `convert`: the
    same tower with other weights (compressed ones): the guard decides on `tower`, the model
    returned is `convert` with the same ops kept fp32. `image_input`: the model returned takes a
    Core ML image (the guard itself runs the tensor-input program: same ops after the inputs)."""
    from edgevl.paritydata import build_split_data

    feeds = build_split_data(spec, "gate").feeds(tower.component)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # The probe's var names are those the fp16 pass's op selector sees (`pass_pipeline`).
        peaks = op_magnitudes(convert_tower(tower, fp16=False, static_batch=static_batch, probe=True), feeds)
        for i, threshold in enumerate(THRESHOLDS):
            kept = {n for n, p in peaks.items() if p > threshold} if threshold > 0 else set(peaks)
            model = convert_tower(tower, fp16=True, keep_fp32=_keep(kept) if kept else None,
                                  static_batch=static_batch)
            candidate = Path(tmp) / f"fp16_{i}.mlpackage"
            with silent():
                model.save(str(candidate))
            result = gate_parity(candidate, spec, tower, ("coreml", "fp16"))
            if result.passed:
                break
    if convert is not None or image_input is not None:
        model = convert_tower(convert or tower, fp16=True, keep_fp32=_keep(kept) if kept else None,
                              static_batch=static_batch, image_input=image_input)
    overflow = sorted(n for n, p in peaks.items() if p > FP16_MAX)
    report = {
        "kept_fp32": sorted(kept)[:MAX_LISTED],
        "kept_fp32_count": len(kept),
        "overflowing_ops": overflow[:MAX_LISTED],
        "reason": guard_reason(bool(kept), threshold, "op"),
        "gate_cosine_min": result.cosine_min,
        "gate_passed": result.passed,
    }
    return model, report
