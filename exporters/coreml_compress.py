"""Weight compression for Core ML (`int8w`, `palettize4`), with a gate that chooses the layers.

The weights are compressed in PyTorch, where the accuracy search is cheap, then written by
coremltools' own graph passes so the package holds its standard compressed ops:

1. Candidates: every `Linear` weight and embedding table with at least `MIN_COMPRESSED_WEIGHTS`
   values, except the tower's output projection (its error goes straight into the embedding).
   Convolutions stay fp16: per output channel they lost too much zero-shot agreement on the
   default model's image tower.
2. Each candidate's weights are replaced by the values the compressed format can hold:
   `int8w` symmetric int8 per output channel; `palettize4` 16 values per group of
   `PALETTE_GROUP` channels found by 1-D k-means (embedding tables are grouped along the
   embedding width: a vocabulary of 30522 rows has no divisor near 16).
3. The gate (the held-out parity split is never seen): the tower with every candidate compressed
   runs on the gate split; if it misses the precision's tolerance row (its cosine floor tightened
   as the int8 gate's, `compress.gate.gate_cosine_floor`), each layer's own damage is
   measured (that layer alone compressed: 1 - min cosine) and the layers with the most damage per
   weight go back to float, 1, 2, 4, ... of them, then bisection for the fewest that pass. Per
   weight, so a large embedding table that does some damage stays compressed while several small
   layers that do more go back: the package stays as small as the row allows.
4. After conversion (fp16, with the fp16 guard's ops kept fp32), coremltools'
   `linear_quantize_weights` / `palettize_weights(mode="unique")` store exactly those values:
   the weights already sit on the int8 grid or hold at most 16 distinct values per group.
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
KMEANS_ITERATIONS = 25
PALETTE_SIZE = 16


@dataclass(frozen=True)
class Candidate:
    """One compressible weight: its module path and whether it is an embedding table."""

    name: str
    embedding: bool

    def axis(self, precision: str) -> int:
        """The axis scales / palette groups run along, as coremltools' passes infer it for the
        op that reads the weight: output channels (0), except palettized embedding tables, which
        are grouped along the embedding width (1: given to coremltools as `channel_axis`)."""
        return 1 if self.embedding and precision == "palettize4" else 0


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

    @property
    def stored_compressed(self) -> int:
        """Layers the package stores compressed (planned, and holding a constant of their own)."""
        return len(self.compressed) - len(self.folded)

    def report(self) -> dict:
        scheme = ("linear_symmetric int8, per output channel" if self.precision == "int8w" else
                  f"k-means palettization, 4 bits, a table per {PALETTE_GROUP} channels")
        worst = sorted(self.damage.items(), key=lambda kv: -kv[1])[:10]
        return {
            "scheme": scheme,
            "min_weights": MIN_COMPRESSED_WEIGHTS,
            "compressed_layers": self.stored_compressed,
            "stored_dense": self.folded,
            "kept_float": self.kept_float,
            "kept_fp16_always": ([self.output_layer] if self.output_layer else []) + ["every conv"],
            "gate_cosine_min": self.gate_cosine_min,
            "gate_agreement": self.gate_agreement,
            "gate_passed": self.gate_passed,
            "most_damaging_layers": {name: round(value, 6) for name, value in worst},
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


def candidates(tower: TowerSpec, precision: str = "palettize4") -> tuple[list[Candidate], Optional[str]]:
    """The compressible layers the tower calls, and its output projection (the last `Linear`
    called), which is never compressed. A palettized embedding table needs a width that splits
    into groups of `PALETTE_GROUP`."""
    import torch

    called = _called_layers(tower.module, tower.example_inputs)
    linears = [n for n in called if isinstance(tower.module.get_submodule(n), torch.nn.Linear)]
    last = linears[-1] if linears else None
    found = []
    for name in called:
        sub = tower.module.get_submodule(name)
        if name == last or sub.weight.numel() < MIN_COMPRESSED_WEIGHTS:
            continue
        if isinstance(sub, torch.nn.Linear):
            found.append(Candidate(name, embedding=False))
        elif precision == "int8w" or sub.weight.shape[1] % PALETTE_GROUP == 0:
            found.append(Candidate(name, embedding=True))
    return found, last


def int8_grid(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 per channel along `axis` (scale = max |w| / 127), dequantized."""
    peak = np.max(np.abs(weight), axis=1 - axis, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(weight.dtype)


def _kmeans_1d(values: np.ndarray) -> np.ndarray:
    """Lloyd's k-means in 1-D over each row of `values` [groups, n]; every value replaced by its
    centre. Centres start at evenly spaced quantiles."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    quantiles = torch.linspace(0, 1, PALETTE_SIZE + 2)[1:-1]
    centres = torch.quantile(x, quantiles, dim=1).T.contiguous()  # [groups, 16]
    for _ in range(KMEANS_ITERATIONS):
        assign = torch.argmin((x.unsqueeze(-1) - centres.unsqueeze(1)).abs(), dim=-1)
        sums = torch.zeros_like(centres).scatter_add_(1, assign, x)
        counts = torch.zeros_like(centres).scatter_add_(1, assign, torch.ones_like(x))
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    assign = torch.argmin((x.unsqueeze(-1) - centres.unsqueeze(1)).abs(), dim=-1)
    return torch.gather(centres, 1, assign).numpy()


def palette_grid(weight: np.ndarray, axis: int) -> np.ndarray:
    """16 values per group of `PALETTE_GROUP` channels along `axis` (k-means), dequantized."""
    moved = np.moveaxis(weight, axis, 0)  # [channels, rest]
    channels = moved.shape[0]
    group = max(d for d in range(1, PALETTE_GROUP + 1) if channels % d == 0)
    grouped = moved.reshape(channels // group, -1)
    out = np.empty_like(grouped)
    step = max(1, (1 << 22) // max(grouped.shape[1] * PALETTE_SIZE, 1))  # bounds the k-means memory
    for start in range(0, grouped.shape[0], step):
        out[start:start + step] = _kmeans_1d(grouped[start:start + step])
    return np.moveaxis(out.reshape(moved.shape), 0, axis).astype(weight.dtype)


def compressed_weight(weight: np.ndarray, candidate: Candidate, precision: str) -> np.ndarray:
    return (int8_grid if precision == "int8w" else palette_grid)(weight, candidate.axis(precision))


def _with_weights(tower: TowerSpec, weights: dict[str, np.ndarray]) -> TowerSpec:
    import torch

    module = copy.deepcopy(tower.module).eval()
    for name, value in weights.items():
        module.get_submodule(name).weight.data.copy_(torch.from_numpy(value))
    return replace(tower, module=module)


def _gate(spec: ModelSpec, tower: TowerSpec, key: tuple[str, str]) -> Callable[[dict], Any]:
    """A function: {layer: compressed weight} -> parity result of the PyTorch tower on the gate
    split against the float reference."""
    from edgevl.compress.gate import gate_cosine_floor
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.tolerances import tolerance_for

    data = build_split_data(spec, "gate")
    feeds = data.feeds(tower.component)
    # The gate split asks for more cosine than parity will (as the int8 gate does): a choice that
    # only just passes on the gate split can miss on the held-out photos.
    row = tolerance_for(*key)
    tolerance = replace(row, cosine_min=gate_cosine_floor(row.cosine_min))

    def judge(weights: dict[str, np.ndarray]) -> Any:
        trial = _with_weights(tower, weights)
        out = run_batched(trial.forward_numpy, feeds, 16)
        return verify_outputs(data, tower.component, out.astype(np.float32), tolerance,
                              f"coreml {key[1]} gate {tower.component}")

    return judge


def plan_compression(
    spec: ModelSpec, tower: TowerSpec, precision: str, progress: Callable[[str], None] = lambda _m: None,
) -> tuple[TowerSpec, CompressionPlan]:
    """The tower with the gate's choice of layers compressed (weights on the compressed grid),
    and the plan that says which."""
    found, last = candidates(tower, precision)
    plan = CompressionPlan(precision=precision, output_layer=last)
    originals = {c.name: tower.module.get_submodule(c.name).weight.detach().numpy().copy() for c in found}
    grids = {c.name: compressed_weight(originals[c.name], c, precision) for c in found}
    judge = _gate(spec, tower, ("coreml", precision))

    result = judge(grids)
    kept: list[str] = []
    if not result.passed and found:
        for c in found:
            plan.damage[c.name] = 1.0 - float(judge({c.name: grids[c.name]}).cosine_min)
        size = {c.name: grids[c.name].size for c in found}
        ranked = [c.name for c in sorted(found, key=lambda c: -plan.damage[c.name] / size[c.name])]

        def trial(count: int) -> Any:
            outcome = judge({n: g for n, g in grids.items() if n not in ranked[:count]})
            progress(f"{tower.component} {precision} gate: {count} of {len(ranked)} layer(s) float, "
                     f"min cosine {outcome.cosine_min:.5f}")
            return outcome

        # 1, 2, 4, ... of the most damaging layers back to float until the row passes, then the
        # fewest between the last failing and the first passing count (bisection).
        low, high, result_high = 0, None, result
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
        if high is not None:
            kept, result = ranked[:high], result_high
        else:
            kept = ranked
    plan.kept_float = kept
    plan.compressed = [c for c in found if c.name not in kept]
    plan.gate_cosine_min = float(result.cosine_min)
    plan.gate_agreement = float(result.top1_agreement) if result.top1_agreement is not None else None
    plan.gate_passed = bool(result.passed)
    plan.grids = {c.name: grids[c.name] for c in plan.compressed}
    return _with_weights(tower, plan.grids), plan


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
        channels = plan.grids[c.name].shape[c.axis(plan.precision)]
        group = max(d for d in range(1, PALETTE_GROUP + 1) if channels % d == 0)
        configs[name] = cto.OpPalettizerConfig(mode="unique", granularity="per_grouped_channel", group_size=group,
                                               channel_axis=c.axis(plan.precision),
                                               weight_threshold=MIN_COMPRESSED_WEIGHTS)
    with silent():
        return cto.palettize_weights(model, cto.OptimizationConfig(op_name_configs=configs))
