"""Weight compression for Core ML (`int8w`, `palettize4`), with a gate that chooses the layers.

The weights are compressed in PyTorch, where the accuracy search is cheap, then written by
coremltools' own graph passes so the package holds its standard compressed ops:

1. Candidates: every `Linear` weight and embedding table with at least `MIN_COMPRESSED_WEIGHTS`
   values, except the tower's output projection (its error goes straight into the embedding).
   Convolutions stay fp16: per output channel they lost too much zero-shot agreement on the
   default model's image tower.
2. Each candidate's weights are replaced by the values the compressed format can hold:
   `int8w` symmetric int8 per output channel; `palettize4` 16 values per group of up to
   `PALETTE_GROUP` rows (a `Linear`'s output channels, an embedding table's token rows: the
   largest divisor of the row count, 6 for BERT's 30522) found by 1-D k-means.
   For `palettize4`, a tower that misses its row this way is fine-tuned around its palettes
   (`edgevl.compress.palette_tune`, `--palette-tune-steps`), the layers with the most damage per
   weight holding 64-value (6-bit) tables as far as `PALETTE_SIZE_BUDGET` allows (mixed-bit
   palettization, as Apple's recipes for large models do); the gate below then searches the
   tuned and the untuned tower and keeps the one that passes with fewer float weights.
3. The gate (the held-out parity split is never seen): the tower with every candidate compressed
   runs on the gate split; if it misses the precision's tolerance row (its cosine floor tightened
   as the int8 gate's, `compress.gate.gate_cosine_floor`), each layer's own damage is
   measured (that layer alone compressed: 1 - min cosine) and the layers with the most damage per
   weight go back to float, 1, 2, 4, ... of them, then bisection for the fewest that pass. Per
   weight, so a large embedding table that does some damage stays compressed while several small
   layers that do more go back: the package stays as small as the row allows.
4. After conversion (fp16, with the fp16 guard's ops kept fp32), coremltools'
   `linear_quantize_weights` / `palettize_weights(mode="unique")` store exactly those values:
   the weights already sit on the int8 grid or hold at most 16 (wide tables: 64) distinct values
   per group, and the pass sizes each table's indices to its count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

from edgevl.models.spec import ModelSpec, TowerSpec

# Weight compression skips tensors smaller than this (coremltools' own default is 2048): norms,
# biases and the tiny test models' layers would gain nothing.
MIN_COMPRESSED_WEIGHTS = 512
# Channels that share one 16-entry table: a table per tensor lost zero-shot agreement on the tiny
# test towers; the tables cost 32 bytes per group.
PALETTE_GROUP = 16
# palettize4's size budget, as a share of the tower's weights in fp16: when a tower misses its
# row with 16-value tables everywhere and is fine-tuned, the layers with the most damage per
# weight get 64-value (6-bit) tables while the estimated size stays within it. 4 bits everywhere
# is 0.25 plus the tables and the layers that stay fp16; 0.3 leaves room for the widest layers
# that do most damage (docs/coreml.md has the default text tower's figures).
PALETTE_SIZE_BUDGET = 0.3
WIDE_BITS = 6


@dataclass(frozen=True)
class Candidate:
    """One compressible weight: its module path and whether it is an embedding table. Scales
    and palette groups run along axis 0 of every weight: a `Linear`'s output channels, an
    embedding table's rows (token ids)."""

    name: str
    embedding: bool


@dataclass
class CompressionPlan:
    precision: str
    compressed: list[Candidate] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    output_layer: Optional[str] = None
    gate_cosine_min: Optional[float] = None
    gate_agreement: Optional[float] = None
    gate_passed: bool = False
    damage: dict[str, float] = field(default_factory=dict)
    grids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    folded: list[str] = field(default_factory=list)
    tuning: Optional[dict] = None
    wide: list[str] = field(default_factory=list)  # compressed layers with WIDE_BITS tables

    @property
    def stored_compressed(self) -> int:
        """Layers the package stores compressed (planned, and holding a constant of their own)."""
        return len(self.compressed) - len(self.folded)

    def report(self) -> dict:
        scheme = ("linear_symmetric int8, per output channel" if self.precision == "int8w" else
                  f"k-means palettization, 4 bits ({WIDE_BITS} bits for wide_tables), a table per "
                  f"{PALETTE_GROUP} channels (rows of an embedding table)")
        worst = sorted(self.damage.items(), key=lambda kv: -kv[1])[:10]
        return {
            "scheme": scheme,
            "min_weights": MIN_COMPRESSED_WEIGHTS,
            "compressed_layers": self.stored_compressed,
            "stored_dense": self.folded,
            "kept_float": self.kept_float,
            "wide_tables": self.wide,
            "kept_fp16_always": ([self.output_layer] if self.output_layer else []) + ["every conv"],
            "gate_cosine_min": self.gate_cosine_min,
            "gate_agreement": self.gate_agreement,
            "gate_passed": self.gate_passed,
            "most_damaging_layers": {name: round(value, 6) for name, value in worst},
            "least_damage": round(min(self.damage.values()), 6) if self.damage else None,
            "tuning": self.tuning,
        }


def _called_layers(module: Any, example: dict) -> list[str]:
    """Module paths of the `Linear` and `Embedding` layers the tower calls, in call order (a
    checkpoint can hold layers its tower never runs, such as BERT's pooler)."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: called.append(names[mod]))
             for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    try:
        with torch.no_grad():
            module(**example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called))


def candidates(tower: TowerSpec) -> tuple[list[Candidate], Optional[str]]:
    """The compressible layers the tower calls, and its output projection (the last `Linear`
    called), which is never compressed."""
    import torch

    called = _called_layers(tower.module, tower.example_inputs)
    linears = [n for n in called if isinstance(tower.module.get_submodule(n), torch.nn.Linear)]
    last = linears[-1] if linears else None
    found = []
    for name in called:
        sub = tower.module.get_submodule(name)
        if name == last or sub.weight.numel() < MIN_COMPRESSED_WEIGHTS:
            continue
        found.append(Candidate(name, embedding=not isinstance(sub, torch.nn.Linear)))
    return found, last


def int8_grid(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 per channel along `axis` (scale = max |w| / 127), dequantized."""
    peak = np.max(np.abs(weight), axis=1 - axis, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(weight.dtype)


def wide_layers(weights: dict[str, np.ndarray], damage: dict[str, float], total_params: int,
                budget: float = PALETTE_SIZE_BUDGET) -> list[str]:
    """The candidates (name -> weight, palette groups along axis 0) that get `WIDE_BITS` tables:
    the most damage per weight first, each taken while the tower's estimated size (candidates at
    their widths with their fp16 tables, its `total_params` less the candidates in fp16) stays
    within `budget` of all its parameters in fp16. Layers that do no damage stay at 4 bits."""
    from edgevl.compress.palette_tune import group_size

    def size_bits(name: str, bits: int) -> int:
        rows = weights[name].shape[0]
        return weights[name].size * bits + rows // group_size(rows, PALETTE_GROUP) * (1 << bits) * 16

    used = 16 * (total_params - sum(w.size for w in weights.values())) + sum(size_bits(n, 4) for n in weights)
    allowed = budget * 16 * total_params
    wide = []
    for name in sorted(weights, key=lambda n: -damage[n] / weights[n].size):
        extra = size_bits(name, WIDE_BITS) - size_bits(name, 4)
        if damage[name] > 0 and used + extra <= allowed:
            wide.append(name)
            used += extra
    return wide


def palette_grid(weight: np.ndarray, axis: int, bits: int = 4) -> np.ndarray:
    """2**bits values (16 for palettize4) per group of up to `PALETTE_GROUP` channels along
    `axis` (k-means), dequantized."""
    import torch

    from edgevl.compress.palette_tune import group_size, palettized

    moved = np.moveaxis(weight, axis, 0)
    grid = palettized(torch.from_numpy(np.ascontiguousarray(moved, dtype=np.float32)),
                      group_size(moved.shape[0], PALETTE_GROUP), size=1 << bits).numpy()
    return np.moveaxis(grid, 0, axis).astype(weight.dtype)


def compressed_weight(weight: np.ndarray, precision: str) -> np.ndarray:
    return (int8_grid if precision == "int8w" else palette_grid)(weight, 0)


def _with_weights(tower: TowerSpec, weights: dict[str, np.ndarray], base: Any = None) -> TowerSpec:
    """The tower on a copy of `base` (default: its own module) with `weights` set."""
    import torch

    module = copy.deepcopy(tower.module if base is None else base).eval()
    for name, value in weights.items():
        module.get_submodule(name).weight.data.copy_(torch.from_numpy(value))
    return replace(tower, module=module)


def _gate(spec: ModelSpec, tower: TowerSpec, key: tuple[str, str]) -> Callable[[Any, dict], Any]:
    """A function: (base module, {layer: weight}) -> parity result of the PyTorch tower on the
    gate split against the float reference."""
    from edgevl.compress.gate import gate_cosine_floor
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.tolerances import tolerance_for

    data = build_split_data(spec, "gate")
    feeds = data.feeds(tower.component)
    # The gate split asks for more cosine than parity will (as the int8 gate does): a choice that
    # only just passes on the gate split can miss on the held-out photos.
    row = tolerance_for(*key)
    tolerance = replace(row, cosine_min=gate_cosine_floor(row.cosine_min))

    def judge(base: Any, weights: dict[str, np.ndarray]) -> Any:
        trial = _with_weights(tower, weights, base)
        out = run_batched(trial.forward_numpy, feeds, 16)
        return verify_outputs(data, tower.component, out.astype(np.float32), tolerance,
                              f"coreml {key[1]} gate {tower.component}")

    return judge


def _tune(spec: ModelSpec, tower: TowerSpec, found: list[Candidate], originals: dict[str, np.ndarray],
          grids: dict[str, np.ndarray], wide: list[str], steps: int, progress: Callable[[str], None]) -> Any:
    """Palettization-aware fine-tuning of the tower (`edgevl.compress.palette_tune`): every
    `Linear` candidate trains its palettes (`WIDE_BITS` wide for the layers in `wide`), embedding
    tables keep their k-means grids."""
    from edgevl.compress.palette_tune import group_size, tune_palettes

    linear_groups = {c.name: group_size(grids[c.name].shape[0], PALETTE_GROUP) for c in found if not c.embedding}
    frozen = {c.name: palette_grid(originals[c.name], 0, WIDE_BITS) if c.name in wide else grids[c.name]
              for c in found if c.embedding}
    progress(f"{tower.component} palettize4: every layer palettized misses the row; fine-tuning "
             f"{len(linear_groups)} layer(s) around their palettes ({len(wide)} with {WIDE_BITS}-bit tables "
             f"within {PALETTE_SIZE_BUDGET}x fp16), {steps} steps")
    return tune_palettes(spec, tower, linear_groups, frozen, steps=steps, progress=progress,
                         palette_sizes={name: 1 << WIDE_BITS for name in wide if name in linear_groups})


@dataclass
class _Choice:
    """One gate search's outcome: the layers kept float, the verdict, the damage measured."""

    base: Any
    grids: dict[str, np.ndarray]
    kept: list[str]
    result: Any
    damage: dict[str, float] = field(default_factory=dict)

    def float_weights(self) -> int:
        return sum(self.grids[n].size for n in self.kept)

    def weights(self, originals: dict[str, np.ndarray], kept: Optional[list[str]] = None) -> dict[str, np.ndarray]:
        """Every candidate's weight: the original where kept float (default: `self.kept`), else
        its compressed grid."""
        kept = self.kept if kept is None else kept
        return {n: originals[n] if n in kept else self.grids[n] for n in originals}


def _damage(found: list[Candidate], originals: dict[str, np.ndarray], choice: _Choice,
            judge: Callable[[Any, dict], Any]) -> dict[str, float]:
    """Each layer's damage alone: 1 - the gate's min cosine with that layer compressed and every
    other layer float."""
    return {c.name: 1.0 - float(judge(choice.base, choice.weights(originals, [n for n in originals if n != c.name]))
                                .cosine_min) for c in found}


def _search(found: list[Candidate], originals: dict[str, np.ndarray], choice: _Choice,
            judge: Callable[[Any, dict], Any], label: str, progress: Callable[[str], None]) -> _Choice:
    """The fewest layers to keep float for `choice` (all compressed, failing) to pass: each
    layer's damage alone, then the most damaging per weight back to float, 1, 2, 4, ... of them,
    then bisection between the last failing and the first passing count."""
    base = choice.base
    damage = choice.damage or _damage(found, originals, choice, judge)
    ranked = [c.name for c in sorted(found, key=lambda c: -damage[c.name] / choice.grids[c.name].size)]

    def trial(count: int) -> Any:
        outcome = judge(base, choice.weights(originals, ranked[:count]))
        progress(f"{label} gate: {count} of {len(ranked)} layer(s) float, min cosine {outcome.cosine_min:.5f}")
        return outcome

    low, high, result, result_high = 0, None, choice.result, None
    for count in sorted({min(1 << i, len(ranked)) for i in range(len(ranked).bit_length() + 1)}):
        outcome = trial(count)
        if outcome.passed:
            high, result_high = count, outcome
            break
        low, result = count, outcome
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        outcome = trial(middle)
        if outcome.passed:
            high, result_high = middle, outcome
        else:
            low = middle
    if high is None:
        return replace(choice, kept=ranked, result=result, damage=damage)
    return replace(choice, kept=ranked[:high], result=result_high, damage=damage)


def plan_compression(
    spec: ModelSpec, tower: TowerSpec, precision: str, progress: Callable[[str], None] = lambda _m: None,
    tune_steps: int = 0,
) -> tuple[TowerSpec, CompressionPlan]:
    """The tower with the gate's choice of layers compressed (weights on the compressed grid),
    and the plan that says which. With `tune_steps` > 0, a palettize4 tower that misses its row
    with every layer palettized is fine-tuned around its palettes (its float parameters move
    too); if the tuned tower still misses, the gate searches both, and the one that passes with
    fewer float weights is kept."""
    found, last = candidates(tower)
    plan = CompressionPlan(precision=precision, output_layer=last)
    originals = {c.name: tower.module.get_submodule(c.name).weight.detach().numpy().copy() for c in found}
    grids = {c.name: compressed_weight(originals[c.name], precision) for c in found}
    judge = _gate(spec, tower, ("coreml", precision))
    label = f"{tower.component} {precision}"

    choice = _Choice(tower.module, grids, [], judge(tower.module, grids))
    wide: list[str] = []
    if not choice.result.passed and found:
        choice = replace(choice, damage=_damage(found, originals, choice, judge))
        choices = []
        if precision == "palettize4" and tune_steps > 0:
            total = sum(p.numel() for p in tower.module.parameters())
            wide = wide_layers(originals, choice.damage, total)
            tuned = _tune(spec, tower, found, originals, grids, wide, tune_steps, progress)
            plan.tuning = tuned.report | {"wide_tables": wide, "wide_bits": WIDE_BITS,
                                          "size_budget": PALETTE_SIZE_BUDGET}
            tuned_choice = _Choice(tuned.module, tuned.grids, [], judge(tuned.module, tuned.grids))
            plan.tuning["gate_cosine_min_all_palettized"] = round(float(tuned_choice.result.cosine_min), 6)
            progress(f"{label} tuned: gate min cosine {tuned_choice.result.cosine_min:.5f} with every layer palettized")
            choices.append(tuned_choice if tuned_choice.result.passed
                           else _search(found, originals, tuned_choice, judge, f"{label} (tuned)", progress))
        if not (choices and not choices[0].kept):
            choices.append(_search(found, originals, choice, judge, label, progress))
        # Passing first, then the fewest weights kept float (the smaller package).
        choice = min(choices, key=lambda c: (not c.result.passed, c.float_weights()))
        if plan.tuning is not None:
            plan.tuning["used"] = choice.base is not tower.module
    plan.damage = choice.damage
    plan.kept_float = choice.kept
    plan.compressed = [c for c in found if c.name not in choice.kept]
    plan.gate_cosine_min = float(choice.result.cosine_min)
    plan.gate_agreement = float(choice.result.top1_agreement) if choice.result.top1_agreement is not None else None
    plan.gate_passed = bool(choice.result.passed)
    plan.grids = {c.name: choice.grids[c.name] for c in plan.compressed}
    plan.wide = [n for n in wide if n in plan.grids] if choice.base is not tower.module else []
    return _with_weights(tower, choice.weights(originals), choice.base), plan


def _matching_consts(model: Any, plan: CompressionPlan) -> dict[str, Candidate]:
    """Const op name -> candidate, for the consts of the converted program that hold a planned
    layer's compressed weights (matched by value: fp16 or fp32, whichever the program keeps)."""
    by_shape: dict[tuple, list[Candidate]] = {}
    for c in plan.compressed:
        by_shape.setdefault(tuple(plan.grids[c.name].shape), []).append(c)
    found: dict[str, Candidate] = {}
    for op in model._mil_program.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            continue
        for c in by_shape.get(tuple(value.shape), []):
            grid = plan.grids[c.name].astype(value.dtype)
            if np.array_equal(grid, value):
                found[op.name] = c
                break
    return found


def write_compressed(model: Any, plan: CompressionPlan) -> Any:
    """coremltools' int8 / palette ops on the consts that hold the planned layers' weights. The
    weights already sit on the compressed grid, so the passes store them without further loss."""
    from edgevl.compress.palette_tune import group_size
    from edgevl.exporters.coreml_convert import silent

    with silent():
        import coremltools.optimize.coreml as cto

    consts = _matching_consts(model, plan)
    stored = {c.name for c in consts.values()}
    # Layers with no constant of their own: a table indexed by constant positions is folded into
    # its lookup's result, a layer whose output the tower drops (BERT's pooler) is gone. Their
    # values in the program, if any, are the compressed ones, stored dense.
    plan.folded = sorted(c.name for c in plan.compressed if c.name not in stored)
    if plan.precision == "int8w":
        configs = {name: cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                     weight_threshold=MIN_COMPRESSED_WEIGHTS) for name in consts}
        with silent():
            return cto.linear_quantize_weights(model, cto.OptimizationConfig(op_name_configs=configs))
    configs = {}
    for name, c in consts.items():
        group = group_size(plan.grids[c.name].shape[0], PALETTE_GROUP)
        configs[name] = cto.OpPalettizerConfig(mode="unique", granularity="per_grouped_channel", group_size=group,
                                               channel_axis=0,
                                               weight_threshold=MIN_COMPRESSED_WEIGHTS)
    with silent():
        return cto.palettize_weights(model, cto.OptimizationConfig(op_name_configs=configs))
