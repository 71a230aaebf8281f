"""edgevl's k-means palettes against coremltools' own palettizer on the default model's text tower
(MiniLM), in one run: each recipe's weights are judged in PyTorch as the palettize4 gate judges
(its split, its floor), the gate's search keeps float the fewest layers that let it pass, and the
held-out parity split judges the result once. Sizes are saved packages (fp16, the planned layers
palettized by coremltools' pass).

Recipes (4-bit tables per group of up to 16 output channels / embedding rows, `granularity=
"per_grouped_channel"`):

* edgevl k-means (`exporters.coreml_compress.palette_grid`), 4 bits everywhere;
* coremltools `palettize_weights(mode="kmeans")` on the converted fp16 program, 4 bits everywhere;
* both again with per-op widths (`op_name_configs`): 6-bit tables for the layers with the most
  damage per weight within the 0.3x fp16 budget (`coreml_compress.wide_layers`).

Each layer's damage alone is measured once (edgevl's 4-bit grid on the gate split) and ranks the
layers for the per-op widths and for every recipe's gate search, so recipes differ only in their
palettizer.

    .venv/bin/python -P benchmarks/coreml_palettizers.py   # -P: benchmarks/executorch.py must not shadow executorch

Writes benchmarks/results/coreml_palettizers.json and coreml_palettizers.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZE_TARGET = 0.3
WIDE_BITS_MARK = "-bit for "


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def coremltools_grids(tower: Any, found: list, originals: dict[str, np.ndarray], bits: dict[str, int],
                      per_channel_scale: bool) -> dict[str, np.ndarray]:
    """Each candidate's weight as coremltools' `palettize_weights(mode="kmeans")` stores it in the
    fp16 program (decompressed back to float32); a layer without a constant of its own (folded
    into a lookup) gets coremltools' k-means on its fp16 weight through the same function."""
    from edgevl.compress.palette_tune import group_size
    from edgevl.exporters.coreml_compress import PALETTE_GROUP, CompressionPlan, _matching_consts
    from edgevl.exporters.coreml_convert import convert_tower, silent

    with silent():
        import coremltools.optimize.coreml as cto
        from coremltools.optimize.coreml._quantization_passes import palettize_weights as pass_class

    model = convert_tower(tower, fp16=True)
    plan = CompressionPlan(precision="palettize4", compressed=list(found), grids=dict(originals))
    consts = _matching_consts(model, plan)

    def config(name: str) -> Any:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=bits[name], granularity="per_grouped_channel",
                                      group_size=group_size(originals[name].shape[0], PALETTE_GROUP),
                                      channel_axis=0, enable_per_channel_scale=per_channel_scale,
                                      weight_threshold=512)

    with silent():
        model = cto.palettize_weights(model, cto.OptimizationConfig(
            op_name_configs={op: config(c.name) for op, c in consts.items()}))
    out: dict[str, np.ndarray] = {}
    for op in model._mil_program.functions["main"].operations:
        if not op.op_type.startswith("constexpr_"):
            continue
        source = op.name[:-len("_palettized")] if op.name.endswith("_palettized") else op.name
        # With per-channel scales the palettized op feeds a `constexpr_blockwise_shift_scale`.
        child = op.outputs[0].child_ops[0] if op.outputs[0].child_ops else None
        if source in consts and op.op_type.startswith("constexpr_lut_to_dense"):
            final = child if child is not None and child.op_type.startswith("constexpr_") else op
            out[consts[source].name] = np.asarray(final.materialized_val_inference(), dtype=np.float32)
    for c in found:
        if c.name in out:
            continue
        weight = originals[c.name].astype(np.float16)
        scale = np.ones((1, weight.shape[1]), np.float16)
        if per_channel_scale:  # as the pass does: along the channel axis, then palettized
            scale = np.max(np.abs(weight), axis=0, keepdims=True)
            scale[scale == 0] = 1
        params = pass_class.grouped_channelwise_compress(weight / scale, "KMEANS", bits[c.name], 0,
                                                         group_size(weight.shape[0], PALETTE_GROUP))
        out[c.name] = (pass_class.decompress(params) * scale).astype(np.float32)
    return out


def package_bytes(tower: Any, plan: Any) -> int:
    from edgevl.exporters.coreml_compress import write_compressed
    from edgevl.exporters.coreml_convert import convert_tower, silent

    model = convert_tower(tower, fp16=True)
    if plan.compressed:
        model = write_compressed(model, plan)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tower.mlpackage"
        with silent():
            model.save(str(path))
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_quick() -> tuple[list[dict], dict]:
    """Every layer palettized at 4 bits by each palettizer, judged on the gate and parity splits:
    no damage ranking, no gate search, no packages (minutes, where `measure` takes an hour on a
    loaded 2-core machine)."""
    from edgevl.compress.gate import gate_cosine_floor
    from edgevl.exporters.coreml_compress import _gate, _with_weights, candidates, palette_grid
    from edgevl.models.spec import LoadOptions
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.pipeline import resolve_model
    from edgevl.profile.machine import cpu_info
    from edgevl.tolerances import tolerance_for

    spec = resolve_model(None, LoadOptions())
    tower = spec.tower("text")
    found, _last = candidates(tower)
    originals = {c.name: tower.module.get_submodule(c.name).weight.detach().numpy().copy() for c in found}
    judge = _gate(spec, tower, ("coreml", "palettize4"))
    row = tolerance_for("coreml", "palettize4")
    parity = build_split_data(spec, "parity")
    four = {c.name: 4 for c in found}
    rows = []
    for label, make in (("edgevl k-means, 4-bit", lambda: {c.name: palette_grid(originals[c.name], 0, 4) for c in found}),
                        ("coremltools kmeans, 4-bit", lambda: coremltools_grids(tower, found, originals, four, False))):
        started = time.perf_counter()
        grids = make()
        gate = judge(tower.module, grids)
        trial = _with_weights(tower, grids)
        held_out = verify_outputs(parity, "text", run_batched(trial.forward_numpy, parity.feeds("text"), 16)
                                  .astype(np.float32), row, f"{label} parity")
        error = {n: float(np.mean((grids[n] - originals[n]) ** 2) / np.mean(originals[n] ** 2)) for n in grids}
        rows.append({"recipe": label, "candidates": len(found), "gate_cosine_min": float(gate.cosine_min),
                     "gate_agreement": gate.top1_agreement, "gate_passed": bool(gate.passed),
                     "parity_cosine_min": float(held_out.cosine_min), "parity_agreement": held_out.top1_agreement,
                     "parity_passed": bool(held_out.passed),
                     "weight_relative_mse_mean": float(np.mean(list(error.values()))),
                     "seconds": round(time.perf_counter() - started, 1)})
        log(json.dumps(rows[-1]))
    cpu = cpu_info()
    meta = {"cpu": cpu.model, "cores": cpu.usable_cores, "date": time.strftime("%Y-%m-%d"), "quick": True,
            "row_cosine": row.cosine_min, "row_agreement": row.top1_agreement,
            "gate_floor": gate_cosine_floor(row.cosine_min), "candidates": len(found)}
    return rows, meta


def measure() -> tuple[list[dict], dict]:
    from dataclasses import replace

    from edgevl.compress.gate import gate_cosine_floor
    from edgevl.exporters.coreml_compress import (WIDE_BITS, CompressionPlan, _Choice, _damage, _gate, _search,
                                                  _with_weights, candidates, palette_grid, wide_layers)
    from edgevl.models.spec import LoadOptions
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.pipeline import resolve_model
    from edgevl.profile.machine import cpu_info
    from edgevl.tolerances import tolerance_for

    spec = resolve_model(None, LoadOptions())
    tower = spec.tower("text")
    found, last = candidates(tower)
    originals = {c.name: tower.module.get_submodule(c.name).weight.detach().numpy().copy() for c in found}
    total = sum(p.numel() for p in tower.module.parameters())
    judge = _gate(spec, tower, ("coreml", "palettize4"))
    row = tolerance_for("coreml", "palettize4")
    parity = build_split_data(spec, "parity")
    fp16_bytes = package_bytes(tower, CompressionPlan(precision="palettize4"))
    log(f"fp16 package {fp16_bytes} bytes; {len(found)} candidates")

    four = {c.name: 4 for c in found}
    edgevl_four = {c.name: palette_grid(originals[c.name], 0, 4) for c in found}
    # Each layer's damage alone (edgevl's 4-bit grid on the gate split): the one ranking that both
    # the per-op widths and the gate's search use for every recipe, so recipes differ only in
    # their palettizer.
    damage = _damage(found, originals, _Choice(tower.module, edgevl_four, [], None), judge)
    wide = wide_layers(originals, damage, total)
    mixed = {c.name: WIDE_BITS if c.name in wide else 4 for c in found}
    log(f"{len(wide)} layer(s) get {WIDE_BITS}-bit tables within {SIZE_TARGET}x: {wide}")
    recipes: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
        ("edgevl k-means, 4-bit", lambda: edgevl_four),
        ("coremltools kmeans, 4-bit", lambda: coremltools_grids(tower, found, originals, four, False)),
        (f"edgevl k-means, 4-bit, {WIDE_BITS}-bit for {len(wide)}",
         lambda: {c.name: palette_grid(originals[c.name], 0, mixed[c.name]) for c in found}),
        (f"coremltools kmeans, 4-bit, {WIDE_BITS}-bit for {len(wide)}",
         lambda: coremltools_grids(tower, found, originals, mixed, False)),
    ]
    rows = []
    for label, make in recipes:
        started = time.perf_counter()
        grids = make()
        bits = mixed if WIDE_BITS_MARK in label else four
        choice = _Choice(tower.module, grids, [], judge(tower.module, grids), damage)
        all_cos = float(choice.result.cosine_min)
        log(f"{label}: every layer palettized, gate min cosine {all_cos:.5f}")
        if not choice.result.passed:
            choice = _search(found, originals, choice, judge, label, log)
        weights = choice.weights(originals)
        trial = _with_weights(tower, weights)
        held_out = verify_outputs(parity, "text", run_batched(trial.forward_numpy, parity.feeds("text"), 16)
                                  .astype(np.float32), row, f"{label} parity")
        plan = CompressionPlan(precision="palettize4", output_layer=last,
                               compressed=[c for c in found if c.name not in choice.kept],
                               grids={n: g for n, g in grids.items() if n not in choice.kept})
        size = package_bytes(trial, plan)  # sets plan.folded: layers with no constant of their own
        rows.append({
            "recipe": label, "wide_tables": sum(b != 4 for b in bits.values()),
            "gate_cosine_min_all_palettized": all_cos, "candidates": len(found),
            "layers_palettized": len(plan.compressed) - len(plan.folded), "stored_dense": plan.folded,
            "kept_float": choice.kept, "gate_cosine_min": float(choice.result.cosine_min),
            "gate_agreement": choice.result.top1_agreement, "gate_passed": bool(choice.result.passed),
            "parity_cosine_min": float(held_out.cosine_min), "parity_agreement": held_out.top1_agreement,
            "parity_passed": bool(held_out.passed), "bytes": size, "x_fp16": round(size / fp16_bytes, 3),
            "seconds": round(time.perf_counter() - started, 1),
        })
        log(json.dumps(rows[-1]))
    cpu = cpu_info()
    meta = {"cpu": cpu.model, "cores": cpu.usable_cores, "date": time.strftime("%Y-%m-%d"),
            "row_cosine": row.cosine_min, "row_agreement": row.top1_agreement,
            "gate_floor": gate_cosine_floor(row.cosine_min), "fp16_bytes": fp16_bytes, "candidates": len(found)}
    return rows, meta


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Core ML palettizers compared, default model, text tower (MiniLM)",
        "",
        f"One run of `benchmarks/coreml_palettizers.py` on {meta['cpu']} ({meta['cores']} cores, shared with other "
        f"jobs and loaded), {meta['date']}. No fine-tuning. Gate: PyTorch on the gate split, floor "
        f"{meta['gate_floor']} (the palettize4 row's {meta['row_cosine']} tightened); when every layer palettized "
        "misses it, the gate's search keeps float the fewest layers (most damage per weight first) that pass. "
        f"Parity: PyTorch on the held-out parity split against the row (cosine >= {meta['row_cosine']}, "
        f"tie-aware agreement >= {meta['row_agreement']}). Sizes: saved packages, fp16 = "
        f"{meta['fp16_bytes'] / 1e6:.1f} MB; the issue's budget is {SIZE_TARGET}x.",
        "",
        "| recipe | all palettized: gate min cos | layers palettized | kept float | size x fp16 | gate min cos "
        "| gate agreement | parity min cos | parity agreement | parity row |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["recipe"], f"{r['gate_cosine_min_all_palettized']:.4f}", f"{r['layers_palettized']} of {r['candidates']}",
            str(len(r["kept_float"])), f"{r['x_fp16']:.2f}", f"{r['gate_cosine_min']:.4f}",
            f"{r['gate_agreement']:.3f}", f"{r['parity_cosine_min']:.4f}", f"{r['parity_agreement']:.3f}",
            "pass" if r["parity_passed"] else "miss",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every layer at 4 bits only (see measure_quick)")
    args = parser.parse_args()
    rows, meta = measure_quick() if args.quick else measure()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coreml_palettizers.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.quick:
        return
    text = markdown(rows, meta)
    (RESULTS / "coreml_palettizers.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
