"""Quantisation front: `quantize_` (plan a compression on a spec), `quantize_model` (an ONNX
graph in memory) and the ONNX exporter's hook `quantize_onnx_artifact`.

The schemes live one per module (`w8a8_dynamic`, `w8a8_static`, `weight_only`, `conv_int8`),
each registering its handler by config type (`edgevl.compress.handlers`); the accuracy gate is
`edgevl.compress.gate`, activation statistics `edgevl.compress.stats`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgevl.compress.config import (  # noqa: F401  (the public configs, re-exported)
    CPU_ISAS, PRECISION_CONFIGS, ConvW8A8Config, DynamicW8A8Config, QuantConfig, SmoothQuantConfig,
    W8A8Config, WeightOnlyConfig,
)
from edgevl.compress.conv_int8 import is_conv_tower
from edgevl.compress.ort_graph import ONNX_FLAVORS, foreign_ops
from edgevl.compress.gate import GateData, build_gate_data, gate_cosine_floor
from edgevl.compress.handlers import QuantContext, handler_for
from edgevl.compress.qdq import prepare
from edgevl.compress.recipe import QuantRecipe
from edgevl.compress.saturation import check_saturation
from edgevl.errors import ExportError, InputError


def quantize_model(
    fp32_model: "object", config: QuantConfig, feeds: list[dict[str, np.ndarray]], component: str,
    gate: Optional[GateData], cosine_min: float, calibration: Optional[dict] = None,
    progress: Optional[Callable[[str], None]] = None, flavor: str = "standard",
    runner: Optional[Callable[["object"], Callable[[dict], np.ndarray]]] = None,
) -> tuple["object", QuantRecipe, dict]:
    """Quantise an fp32 ONNX model in memory: (quantised model, recipe, passes). `progress`
    gets a line per accuracy-gate try; `flavor` "standard" writes ai.onnx ops only, "ort" may
    use ONNX Runtime's com.microsoft ops (packed QAttention, EmbedLayerNormalization,
    MatMulNBits); `runner` runs the gate's candidates (default: ONNX Runtime)."""
    if flavor not in ONNX_FLAVORS:
        raise InputError(f"unknown ONNX flavour {flavor!r}; use one of: {', '.join(ONNX_FLAVORS)}")
    handler = handler_for(config)
    prepared, prep = prepare(fp32_model)
    ctx = QuantContext(prepared, feeds, gate, cosine_min, component, calibration or {}, progress, flavor, runner)
    qmodel, info = handler(ctx, config)
    if getattr(config, "embeddings", False) and isinstance(config, (DynamicW8A8Config, W8A8Config)):
        qmodel, info["passes"]["embedding_tables"] = _int8_tables_if_gate_passes(qmodel, info, ctx, config)
    foreign = foreign_ops(qmodel) if flavor == "standard" else []
    if foreign:
        raise ExportError(f"{type(config).__name__} wrote non-standard ops into a standard-flavour {component} "
                          f"graph ({', '.join(foreign)}); this is an edgevl bug: report it, or use --onnx-flavor ort")
    info["passes"] = {**prep, **info["passes"]}
    return qmodel, info["recipe"], info


def _int8_tables_if_gate_passes(qmodel: "object", info: dict, ctx: QuantContext, config: QuantConfig) -> tuple["object", dict]:
    """`qmodel` with its token-embedding tables stored int8 (`embedding_int8`) when the gate
    still passes with them, else unchanged; with what was decided and measured. A tower the gate
    left all float stays all float."""
    from edgevl.compress.embedding_int8 import embedding_tables, int8_embedding_tables
    from edgevl.compress.gate import gate_passes, measure

    if not embedding_tables(qmodel):
        return qmodel, {"int8": False, "why": "no float token-embedding table read by a Gather"}
    if not info["recipe"].layers:
        return qmodel, {"int8": False, "why": "the accuracy gate kept every layer float"}
    candidate, report = int8_embedding_tables(qmodel)
    if ctx.gate is None:
        return candidate, {"int8": True, **report, "gated": False}
    figures = measure(ctx.gate, ctx.runner(candidate) if ctx.runner else candidate)
    if not gate_passes(figures, ctx.cosine_min, config.max_drop):
        return qmodel, {"int8": False, "why": "the accuracy gate failed with int8 tables", "figures": figures}
    return candidate, {"int8": True, **report, "gated": True, "figures": figures}


def quantize_onnx_artifact(
    fp32_path: Path, out_path: Path, spec: "object", component: str, precision: str, calibration: Any,
    max_drop: float = 0.01, progress: Optional[Callable[[str], None]] = None,
    cpu_isa: str = "any", speed_guard: bool = False, flavor: str = "standard",
) -> dict:
    """The ONNX exporter's hook: write `out_path` (quantised) and its recipe next to it.

    `calibration` is the user's data (`--calib`): a folder of images, a JSON-lines file, a list
    of texts, a `CalibrationSet`, or None (`compress.plan.resolve_calibration` then takes the
    data given to `quantize_`, else the bundled calibration split). A `quantize_` plan at this
    precision wins over the precision's default config (the ONNX target applies every config
    type). Returns the manifest entry: scheme, observer, layers kept float and why, gate
    figures, recipe path, files.
    """
    import onnx

    from edgevl.compress.plan import resolve_calibration, tower_plan
    from edgevl.tolerances import tolerance_for

    fp32 = onnx.load(str(fp32_path))
    plan = tower_plan(spec.tower(component), "onnx", precision, (QuantConfig,))
    config = plan.config if plan is not None else default_config(precision, fp32, max_drop, cpu_isa, speed_guard)
    calib = resolve_calibration(calibration, plan)
    notes = []
    if calibration is None and (plan is None or plan.calibration is None) and precision == "int8":
        notes.append("no --calib given: calibrated on the bundled real samples")
    t0 = time.perf_counter()
    feeds = calib.feeds(spec, component, limit=getattr(config, "calib_limit", 64))
    tol = tolerance_for("onnx", precision)
    gate = build_gate_data(spec, component, fp32, tol.cosine_min)
    qmodel, recipe, info = quantize_model(
        fp32, config, feeds, component, gate, gate_cosine_floor(tol.cosine_min), calib.describe(), progress, flavor
    )
    saturation = saturation_verdict(qmodel, config, gate)
    out_path = Path(out_path)
    onnx.save_model(qmodel, str(out_path))
    recipe_path = out_path.with_name(out_path.name.replace(".onnx", "") + ".recipe.json")
    recipe.save(recipe_path)
    paths = info.get("paths", {})
    if not recipe.layers and precision == "int8":
        # Say so rather than call a float graph int8 silently.
        why = ("every layer stayed float (float_layers says why)" if recipe.float_layers
               else "no MatMul/Gemm/Conv layers to quantize")
        notes.append(f"{component} tower: {why}; this artifact computes in float")
    fp32_size, q_size = Path(fp32_path).stat().st_size, out_path.stat().st_size
    return {
        "precision": precision,
        "config": config.to_json(),
        "observer": getattr(config, "observer", None),
        "calibration": calib.describe(),
        "quantized_layers": len(recipe.layers) if recipe.layers else info["passes"].get("weight_only_matmuls", 0),
        "float_layers": {n: {"module": paths.get(n, ""), "why": why} for n, why in recipe.float_layers.items()},
        "gate": info["passes"].get("gate"),
        "cpu_isa": getattr(config, "cpu_isa", None),
        "saturation": saturation,
        "passes": {k: v for k, v in info["passes"].items() if k != "gate"},
        "size_ratio": round(q_size / fp32_size, 4),
        "recipe": str(recipe_path),
        "files": [str(recipe_path)],
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": notes,
    }


def saturation_verdict(qmodel: "object", config: QuantConfig, gate: Optional[GateData], samples: int = 4) -> dict:
    """Check that the int8 graph computes the same with and without VNNI (see
    edgevl.compress.saturation) on the first gate samples. For `cpu_isa="any"` a difference is
    an edgevl bug and fails the export; for "vnni" it is reported (the artifact needs VNNI)."""
    feeds = None
    if gate is not None:
        n = min(samples, gate.n_samples)
        feeds = [{k: v[i : i + 1] for k, v in gate.feeds.items()} for i in range(n)]
    report = check_saturation(qmodel, feeds).to_json()
    cpu_isa = getattr(config, "cpu_isa", "any")
    if cpu_isa == "any" and (not report["safe_by_weights"] or report["outputs_differing_without_vnni"]):
        raise ExportError(
            f"int8 graph is not saturation-safe although built for any x86 CPU ({report}); "
            "this is an edgevl bug: report it, or pass --cpu-isa vnni if the target has VNNI/AMX"
        )
    return report


def default_config(
    precision: str, fp32: "object", max_drop: float, cpu_isa: str = "any", speed_guard: bool = False,
) -> QuantConfig:
    """The config `--precision` stands for on this graph: int8 is `ConvW8A8Config` for a
    convolutional tower and `DynamicW8A8Config` otherwise."""
    if precision not in PRECISION_CONFIGS:
        raise InputError(f"precision {precision!r} is not a quantised precision; use one of: "
                         f"{', '.join(PRECISION_CONFIGS)}")
    if precision != "int8":
        return PRECISION_CONFIGS[precision](max_drop=max_drop)
    if is_conv_tower(fp32):
        return ConvW8A8Config(max_drop=max_drop, cpu_isa=cpu_isa, speed_guard=speed_guard)
    return DynamicW8A8Config(max_drop=max_drop, cpu_isa=cpu_isa)


def quantize_(spec: "object", config: QuantConfig, calib: Any = None, components: tuple[str, ...] = ("image", "text")) -> "object":
    """Plan a compression of `spec` in place: each named tower carries `config` and `calib`
    (read now; None: the export's own calibration data, by default the bundled calibration
    split). An export at `config.precision` applies the plan to the graph its target produces
    (the recipe depends on that exact graph, so it is computed at export time and saved next to
    the artifact) or, where the target has no such scheme, refuses it with an InputError
    naming the target and what it supports (`edgevl.compress.plan`). Returns `spec`."""
    if not isinstance(config, QuantConfig):
        raise InputError(f"quantize_ takes a QuantConfig (e.g. DynamicW8A8Config()), not {type(config).__name__}")
    handler_for(config)  # unknown config types fail here, not at export time
    from edgevl.compress.plan import resolve_calibration

    # Read now, so bad data fails here; None stays None (the export then uses its own default).
    calibration = resolve_calibration(calib) if calib is not None else None
    for component in components:
        tower = spec.tower(component)
        tower.quant_config = config
        tower.calibration = calibration
    return spec
