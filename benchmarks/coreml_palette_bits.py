"""How many palette bits the default model's text tower (MiniLM) needs, and what each choice
weighs: one run per configuration of bits for the embedding tables and for the `Linear` weights
(k-means per group of rows, as `palettize4` builds them, no fine-tuning), each judged in PyTorch
as the palettize4 gate judges (its split, its 0.99 floor) and on the held-out parity split, and
each converted to a real `.mlpackage` (fp16 elsewhere, coremltools' palettization pass on the
planned weights) whose size is measured. It answers whether any mix of palette widths fits the
issue's size target (<= 0.3x the fp16 package) at the palettize4 row.

    .venv/bin/python -P benchmarks/coreml_palette_bits.py   # -P: benchmarks/executorch.py must not shadow executorch

Writes benchmarks/results/coreml_palette_bits.json and coreml_palette_bits.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZE_TARGET = 0.3  # the palettize4 budget, as a share of the fp16 package
# (label, bits of every embedding table, bits of every Linear weight); None keeps that family fp16.
CONFIGS: tuple[tuple[str, Optional[int], Optional[int]], ...] = (
    ("fp16", None, None),
    ("embeddings 4-bit", 4, None),
    ("embeddings 6-bit", 6, None),
    ("Linears 4-bit", None, 4),
    ("Linears 6-bit", None, 6),
    ("Linears 8-bit", None, 8),
    ("all 4-bit (palettize4, untuned)", 4, 4),
    ("embeddings 4-bit, Linears 6-bit", 4, 6),
    ("embeddings 4-bit, Linears 8-bit", 4, 8),
)


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def package_bytes(tower: Any, plan: Any, folder: Path) -> int:
    """The saved package's size: the tower converted to fp16, its planned weights palettized."""
    from edgevl.exporters.coreml_compress import write_compressed
    from edgevl.exporters.coreml_convert import convert_tower, silent

    model = convert_tower(tower, fp16=True)
    if plan.compressed:
        model = write_compressed(model, plan)
    path = folder / "tower.mlpackage"
    with silent():
        model.save(str(path))
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pooled_min_cosine(module: Any, reference: Any, feeds: dict) -> Optional[float]:
    """Min cosine of the sentence embedding before the tower's projection (MiniLM towers only)."""
    import torch

    from edgevl.parity import cosine_per_row

    if not hasattr(module, "sentence_embedding"):
        return None
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        return float(cosine_per_row(module.sentence_embedding(**inputs).numpy(),
                             reference.sentence_embedding(**inputs).numpy()).min())


def measure() -> tuple[list[dict], dict]:
    from edgevl.exporters.coreml_compress import CompressionPlan, _gate, _with_weights, candidates, palette_grid
    from edgevl.models.spec import LoadOptions
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.pipeline import resolve_model
    from edgevl.tolerances import tolerance_for

    spec = resolve_model(None, LoadOptions())
    tower = spec.tower("text")
    found, last = candidates(tower)
    originals = {c.name: tower.module.get_submodule(c.name).weight.detach().numpy().copy() for c in found}
    judge = _gate(spec, tower, ("coreml", "palettize4"))
    row = tolerance_for("coreml", "palettize4")
    gate_feeds = build_split_data(spec, "gate").feeds("text")
    parity = build_split_data(spec, "parity")
    grids: dict[tuple[str, int], np.ndarray] = {}
    rows = []
    for label, embedding_bits, linear_bits in CONFIGS:
        started = time.perf_counter()
        plan = CompressionPlan(precision="palettize4", output_layer=last)
        weights = {}
        for c in found:
            bits = embedding_bits if c.embedding else linear_bits
            if bits is None:
                weights[c.name] = originals[c.name]
                continue
            if (c.name, bits) not in grids:
                grids[(c.name, bits)] = palette_grid(originals[c.name], 0, bits)
            weights[c.name] = plan.grids[c.name] = grids[(c.name, bits)]
            plan.compressed.append(c)
        trial = _with_weights(tower, weights)
        gate = judge(tower.module, weights)
        held_out = verify_outputs(parity, "text", run_batched(trial.forward_numpy, parity.feeds("text"), 16)
                                  .astype(np.float32), row, f"palette bits {label}")
        with tempfile.TemporaryDirectory() as tmp:
            size = package_bytes(trial, plan, Path(tmp))
        rows.append({
            "config": label, "embedding_bits": embedding_bits, "linear_bits": linear_bits,
            "bytes": size, "gate_cosine_min": float(gate.cosine_min), "gate_agreement": gate.top1_agreement,
            "gate_passed": bool(gate.passed),
            "gate_pooled_cosine_min": pooled_min_cosine(trial.module, tower.module, gate_feeds),
            "parity_cosine_min": float(held_out.cosine_min), "parity_agreement": held_out.top1_agreement,
            "parity_row_passed": bool(held_out.passed), "seconds": round(time.perf_counter() - started, 1),
        })
        log(json.dumps(rows[-1]))
    from edgevl.compress.gate import gate_cosine_floor
    from edgevl.profile.machine import cpu_info

    cpu = cpu_info()
    meta = {"cpu": cpu.model, "cores": cpu.usable_cores,
            "date": time.strftime("%Y-%m-%d"), "row_cosine": row.cosine_min, "row_agreement": row.top1_agreement,
            "gate_floor": gate_cosine_floor(row.cosine_min), "candidates": len(found)}
    return rows, meta


def markdown(rows: list[dict], meta: dict) -> str:
    fp16 = next(r for r in rows if r["config"] == "fp16")["bytes"]
    lines = [
        "# Core ML palette widths, default model, text tower (MiniLM)",
        "",
        f"One run of `benchmarks/coreml_palette_bits.py` on {meta['cpu']} ({meta['cores']} cores), {meta['date']}. "
        f"Every embedding table and every `Linear` of the tower ({meta['candidates']} weights; the output "
        "projection stays fp16) palettized by k-means per group of rows at the bits given, no fine-tuning. "
        f"Gate: PyTorch on the gate split, floor {meta['gate_floor']} (the palettize4 row's "
        f"{meta['row_cosine']} tightened); parity: PyTorch on the held-out parity split against the row "
        f"(cosine >= {meta['row_cosine']}, tie-aware agreement >= {meta['row_agreement']}). "
        "\"Pooled\" is the min cosine of MiniLM's sentence embedding before the projection, on the gate split. "
        f"Sizes are saved packages (fp16 conversion, no fp16 guard); the issue's budget is {SIZE_TARGET}x fp16.",
        "",
        "| configuration | size (MB) | x fp16 | within budget | gate min cos | pooled min cos | gate agreement "
        "| gate | parity min cos | parity agreement | parity row |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["bytes"] / fp16
        pooled = r["gate_pooled_cosine_min"]
        cells = [
            r["config"], f"{r['bytes'] / 1e6:.1f}", f"{ratio:.2f}", "yes" if ratio <= SIZE_TARGET else "no",
            f"{r['gate_cosine_min']:.4f}", "-" if pooled is None else f"{pooled:.4f}",
            f"{r['gate_agreement']:.3f}", "pass" if r["gate_passed"] else "miss",
            f"{r['parity_cosine_min']:.4f}", f"{r['parity_agreement']:.3f}",
            "pass" if r["parity_row_passed"] else "miss",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows, meta = measure()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coreml_palette_bits.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = markdown(rows, meta)
    (RESULTS / "coreml_palette_bits.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
