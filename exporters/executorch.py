"""ExecuTorch target: each tower becomes one `.pte` program delegated to XNNPACK (the CPU delegate
ExecuTorch ships for Android, iOS and Linux), verified by ExecuTorch's own runtime bindings.

Shapes: dynamic batch (1..16, ExecuTorch plans memory for the upper bound) and sequence (1..the
context length) by default; `--static-shapes` fixes them. With dynamic shapes the reshapes around
each attention block's matmuls carry symbolic sizes and run on portable kernels, so a block's
arithmetic is delegated in pieces; with static shapes XNNPACK takes each block whole. The
manifest's `passes.lowering.attention` says which, per block (`executorch_lower` has the why).
A block whose arithmetic lands on portable kernels is refused as an unfused block is elsewhere.

Precisions:
    fp32   float weights and activations.
    int8   PT2E with XNNPACK's quantizer: symmetric per-channel int8 weights, per-tensor int8
           activations, calibrated on the calibration split; attention's matmuls stay float
           (edgevl's attention op is opaque to the quantizer), so do residual adds, and a
           convolution -> ReLU6 is observed after the clamp (`executorch_lower._quantizer`).
           A convolutional tower is first BN-folded, range-equalized and bias-corrected
           (`executorch_quant`, `edgevl.compress.torch_conv`). The accuracy gate keeps the
           fewest ranked layers float, ranked by measured int8 sensitivity
           (`Int8Plan.rank_by_sensitivity`), with the activation observer it chose on the gate
           split; each try is a PT2E pass, a lowering and a run of the candidate `.pte` on
           ExecuTorch's runtime, judged on the gate split and by the worst row it predicts for
           the held-out split's size (`edgevl.compress.gate.predicted_worst_cosine`); when even the
           every-layer-float candidate fails, the tower would ship float, which is refused
           (exit 3) unless --allow-float-fallback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from edgevl.errors import ExportError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, quiet, refuse_unfused
from edgevl.manifest import ArtifactFacts, Compression
from edgevl.models.spec import Component, ModelSpec
from edgevl.registry import register_exporter

_LOGGERS = ("executorch", "torch.export", "torchao", "torch._export")
# Calibration samples for PT2E observers (one forward each).
CALIBRATION_SAMPLES = 64


@register_exporter("executorch")
class ExecuTorchExporter(Exporter):
    name = "executorch"
    requires = ("executorch", "torchao")
    extra = "executorch"
    precisions = ("fp32", "int8")
    runtime = "executorch"

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        from edgevl.exporters.executorch_lower import example_and_shapes, lower
        from edgevl.ops.attention import attention_blocks, unrouted_blocks

        precision = options.precision
        tower = spec.tower(component)
        module = tower.module.eval()
        context = spec.preprocess.context_length
        examples, dynamic, shapes = example_and_shapes(tower, context, options.static_shapes)
        blocks = attention_blocks(module)
        unrouted = unrouted_blocks(module, lambda: module(**examples))
        refuse_unfused(component, len(unrouted), unrouted, len(blocks), options.allow_unfused,
                       "edgevl's attention op (lowered to XNNPACK)")

        def lower_fp32() -> tuple[Any, dict]:
            try:
                with quiet(*_LOGGERS):
                    return lower(module, examples, dynamic)
            except Exception as exc:  # export and lowering raise many types; one clear line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"ExecuTorch export of the {component} tower failed: {first}") from exc

        passes: dict[str, Any] = {"attention_blocks": len(blocks), "shapes": shapes, "dynamic": dynamic is not None}
        if precision == "int8":
            program, passes["lowering"], passes["quantization"] = self._int8(spec, tower, module, examples, dynamic,
                                                                            lower_fp32, options)
        else:
            program, passes["lowering"] = lower_fp32()
        # Refused like an unfused block: attention arithmetic that runs outside the delegate.
        attn = passes["lowering"]["attention"]
        portable = [name for name, how in attn.items() if how["lowered_to"] == "portable"]
        fused = len(blocks) - len(unrouted) - len(portable)
        refuse_unfused(component, len(portable), portable, len(blocks), options.allow_unfused,
                       "the XNNPACK delegate (its arithmetic ran on portable kernels)")
        passes["attention_fused"] = fused

        suffix = "" if precision == "fp32" else f".{precision}"
        path = out_dir / f"{component}_encoder{suffix}.pte"
        path.write_bytes(program.buffer)
        split = sorted(name for name, how in attn.items() if how["lowered_to"].startswith("xnnpack, split"))
        notes = [
            "attention: decomposed to bmm/softmax/bmm for XNNPACK (its SDPA fusion takes 2-D masks only); "
            + (f"{len(split)} blocks split by portable reshapes (dynamic shapes; --static-shapes keeps them whole)"
               if split else "every block delegated whole"),
            "shapes: " + ", ".join(f"{n}{dims}" for n, dims in shapes.items()),
        ]
        return ExportedArtifact(
            target=self.name,
            precision=precision,
            component=component,
            path=path,
            files=[path],
            fused_attention=fused,
            unfused_attention=len(blocks) - fused,
            unfused_blocks=list(unrouted) + portable,
            runtime=self.runtime,
            runtime_options={"input_names": list(tower.input_names), "output_names": [tower.output.name]},
            passes=passes,
            notes=notes,
        )

    def _int8(self, spec: ModelSpec, tower: Any, module: Any, examples: dict, dynamic: Any,
              lower_fp32: Callable[[], tuple[Any, dict]], options: ExportOptions) -> tuple[Any, dict, dict]:
        """PT2E int8 of the tower, its float layers searched by the accuracy gate against the
        PyTorch tower on the gate split. Lowering costs about as much per program as the rest of
        a try together, so only programs that can ship are lowered: the observers are compared on
        the PT2E-converted graphs run by PyTorch, and the fp32 program (`lower_fp32`) is lowered
        only when the whole tower must stay float."""
        from edgevl.compress.gate import gate_cosine_floor, gate_data, gate_passes, measure, run_gate
        from edgevl.compress.plan import resolve_calibration, tower_plan
        from edgevl.compress.torch_sensitivity import torch_run
        from edgevl.exporters.executorch_lower import (
            ACTIVATION_OBSERVERS, example_and_shapes, lower, quantize_pt2e, weighted_op_count,
        )
        from edgevl.exporters.executorch_quant import Int8Plan
        from edgevl.paritydata import build_split_data
        from edgevl.runtimes.executorch import load_program
        from edgevl.tolerances import tolerance_for

        tower_plan(tower, self.name, "int8", (), "it quantizes with PT2E and XNNPACK's quantizer, settings fixed")
        names = {"input_names": list(tower.input_names), "output_names": [tower.output.name]}

        def run_fn(program: Any):
            loaded = load_program(program.buffer, names)
            return lambda feeds: loaded.run(feeds)[tower.output.name]

        calib = resolve_calibration(options.calibration, None)
        feeds = calib.feeds(spec, tower.component, limit=CALIBRATION_SAMPLES)
        # Observers run on a dynamic export (calibration samples come one at a time), the static
        # sizes, if any, apply to the lowering afterwards.
        calib_examples, calib_dynamic, _ = example_and_shapes(tower, spec.preprocess.context_length, None)
        try:
            with quiet(*_LOGGERS, "torch.onnx"):
                plan = Int8Plan.of(module, calib_examples, calib_dynamic, list(tower.input_names),
                                   tower.output.name, feeds)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"ExecuTorch int8 conditioning of the {tower.component} tower failed: {first}") from exc
        # What each built program quantized and how it was lowered (the gate may ship an earlier
        # try than the last one built).
        built: dict[int, tuple[int, dict]] = {}
        fp32: dict[str, tuple[Any, dict]] = {}  # the fp32 program, lowered once if the gate needs it
        # Each observer's every-layer-int8 graph (converted module, quantized op count), kept so
        # that the chosen one is lowered without quantizing again.
        first_try: dict[str, tuple[Any, int]] = {}
        observer = {"name": ACTIVATION_OBSERVERS[0]}

        def quantize(float_layers: list[str], obs: str) -> tuple[Any, int]:
            try:
                with quiet(*_LOGGERS):
                    return quantize_pt2e(plan.module_for(float_layers), calib_examples, calib_dynamic, feeds,
                                         float_layers, obs)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"ExecuTorch int8 export of the {tower.component} tower failed: {first}") from exc

        def build(float_layers: list[str]) -> Any:
            obs = observer["name"]
            converted, quantized = (first_try[obs] if not float_layers and obs in first_try
                                    else quantize(float_layers, obs))
            try:
                with quiet(*_LOGGERS):
                    program, lowering = lower(converted, examples, dynamic)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"ExecuTorch int8 export of the {tower.component} tower failed: {first}") from exc
            built[id(program)] = (quantized, lowering)
            return program

        def whole_float() -> Any:
            if "lowered" not in fp32:
                fp32["lowered"] = lower_fp32()
            return fp32["lowered"][0]

        parity_floor = tolerance_for(self.name, "int8").cosine_min
        gate_floor = gate_cosine_floor(parity_floor)
        # The gate predicts the worst of the held-out split's rows, not only its own worst.
        held_out = build_split_data(spec, "parity", (options.static_shapes or {}).get("seq")).feeds(tower.component)
        # The reference is the PyTorch tower: the fp32 program matches it to parity's fp32 row.
        gate = gate_data(spec, tower.component, torch_run(module), parity_floor,
                         held_out_rows=int(next(iter(held_out.values())).shape[0]))
        plan.rank_by_sensitivity(feeds, gate.feeds, gate.reference)
        why = dict(plan.ranked)
        # The activation observer is chosen on the gate split, by the every-layer-int8 candidate
        # (its PT2E-converted graph run by PyTorch): passing first, then the higher predicted
        # held-out worst row. The gate then judges the chosen candidate's lowered program.
        observers: dict[str, dict] = {}
        for obs in ACTIVATION_OBSERVERS:
            t0 = time.perf_counter()
            first_try[obs] = quantize([], obs)
            figures = measure(gate, torch_run(first_try[obs][0]))
            observers[obs] = {**figures, "passed": gate_passes(figures, gate_floor, options.max_drop),
                              "seconds": round(time.perf_counter() - t0, 1)}
            if options.progress is not None:
                options.progress(f"activation observer ({tower.component}): {obs}: every layer int8, min cosine "
                                 f"{figures['cosine_min']:.4f}, predicted held-out worst "
                                 f"{figures.get('cosine_predicted', figures['cosine_min']):.4f}")
        observer["name"] = max(ACTIVATION_OBSERVERS, key=lambda o: (
            observers[o]["passed"], observers[o].get("cosine_predicted", observers[o]["cosine_min"]),
            observers[o]["cosine_min"]))
        first_try = {observer["name"]: first_try[observer["name"]]}
        # The quantizer also quantizes activations outside the ranked layers, so the float
        # program is the last candidate.
        result = run_gate(
            [name for name, _ in plan.ranked], build, run_fn, gate, gate_floor, options.max_drop,
            tower.component, lambda name, rank: f"kept float by the accuracy gate (rank {rank}: {why[name]})",
            options.progress, whole_float=whole_float,
        )
        first_try.clear()
        weighted = weighted_op_count(module, calib_examples)
        report = {
            "scheme": "PT2E XNNPACKQuantizer: int8 per-channel symmetric weights, int8 per-tensor activations; "
                      "conv -> ReLU6 observed after the clamp, residual adds float; the gate's float layers "
                      "left unannotated",
            "calibration": {"samples": len(feeds), **calib.describe()},
            "conditioning": plan.report,
            "activation_observer": {"chosen": observer["name"], "tried": observers,
                                    "how": "every layer int8 with each observer, its PT2E graph run by PyTorch on "
                                           "the gate split: passing first, then the higher predicted held-out "
                                           "worst row"},
            "gate": result.report,
            "float_layers": {name: {"why": reason} for name, reason in result.float_layers.items()},
            "float_layer_count": len(result.float_layers),
            "whole_tower_float": result.whole_tower_float,
            "weighted_ops": weighted,
            "quantized_ops": 0 if result.whole_tower_float else built[id(result.model)][0],
        }
        if result.whole_tower_float:
            program, lowering = fp32["lowered"]
            return program, lowering, report
        return result.model, built[id(result.model)][1], report

    def describe(self, artifact: ExportedArtifact) -> ArtifactFacts:
        """int8: the linear / convolution ops quantized, of all of them in the tower."""
        quant = artifact.passes.get("quantization")
        if not quant:
            return ArtifactFacts()
        return ArtifactFacts(Compression.from_gate(int(quant["quantized_ops"]), int(quant["weighted_ops"]),
                                                   quant.get("gate"), artifact.precision))
