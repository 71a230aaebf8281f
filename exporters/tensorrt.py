"""TensorRT target: per tower, an engine-ready ONNX file (opset 23) that TensorRT builds strongly
typed, the optimisation profiles, ready `trtexec` lines and, where TensorRT and a GPU are
present, the serialised engine.

TensorRT cannot be installed on the machines edgevl is developed on, so here the engine-ready
graph is verified by ONNX Runtime (manifest `verified: "onnxruntime"`); where TensorRT imports,
`runtimes/tensorrt.py` builds and runs the engine (`verified: "runtime"`).

Attention (`--trt-attention`):
    native   the standard `Attention` op, which TensorRT >= 10.14 imports as IAttention; every
             node is checked against the parser's rules (`tensorrt_attention`), a broken rule
             fails the export naming the block.
    plugin   additionally writes `<tower>_encoder.<precision>.plugin.onnx`, where each Attention
             node is a plugin node (`tensorrt_plugin`) for older TensorRT. ONNX Runtime cannot
             run a plugin node, so parity runs the native graph; the two differ only in those nodes.

Precisions (the file itself carries them; no builder precision flag is needed):
    fp32   as exported.
    fp16   fp16 weights and activations, nodes that overflow fp16 (or miss the fp16 bar on the
           gate split) kept fp32 (`tensorrt_fp16`); I/O stays fp32.
    int8   explicit Q/DQ on every MatMul/Gemm/Conv, gated (`tensorrt_qdq`); the rest float.
           Calibrated on `--calib` data, else the bundled calibration split; a `quantize_`
           plan at int8 is refused with an InputError (no config type is this scheme).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions
from edgevl.manifest import ArtifactFacts
from edgevl.models.spec import Component, ModelSpec
from edgevl.registry import register_exporter

VERIFICATION = "exports engine-ready ONNX; verified by ONNX Runtime here, by TensorRT where installed"
# What TensorRT does instead of a `quantize_` plan (every config at int8 is refused: none of them
# is this target's scheme).
PLAN_INSTEAD = ("its int8 is explicit symmetric Q/DQ (int8 activations with zero point 0, as TensorRT "
                "requires) chosen by its own accuracy gate; give its calibration data with --calib "
                "(export(calibration=...)) and its bar with --max-drop, or export the plan to onnx")


def fp16_graph(spec: ModelSpec, component: Component, fp32: "object") -> tuple["object", dict]:
    from edgevl.compress.gate import ort_run
    from edgevl.exporters.tensorrt_fp16 import guarded_fp16
    from edgevl.paritydata import build_split_data, run_batched, verify_outputs
    from edgevl.tolerances import tolerance_for

    data = build_split_data(spec, "gate")
    feeds = data.feeds(component)

    def passes_gate(model: "object") -> Any:
        out = run_batched(ort_run(model), feeds)
        return verify_outputs(data, component, out, tolerance_for("tensorrt", "fp16"),
                              f"tensorrt fp16 guard {component}")

    return guarded_fp16(fp32, feeds, passes_gate)


def int8_graph(spec: ModelSpec, component: Component, fp32: "object", options: ExportOptions) -> tuple["object", dict]:
    from edgevl.compress.gate import build_gate_data
    from edgevl.compress.plan import resolve_calibration
    from edgevl.exporters.tensorrt_qdq import gated_int8
    from edgevl.tolerances import tolerance_for

    calib = resolve_calibration(options.calibration)  # no quantize_ plan applies here (refused)
    feeds = calib.feeds(spec, component, limit=64)
    parity_floor = tolerance_for("tensorrt", "int8").cosine_min
    gate = build_gate_data(spec, component, fp32, parity_floor)
    model, report = gated_int8(fp32, feeds, gate, parity_floor, options.max_drop, component, options.progress)
    report["calibration"] = calib.describe()
    return model, report


@register_exporter("tensorrt")
class TensorRTExporter(Exporter):
    name = "tensorrt"
    requires = ("onnx", "onnxruntime", "onnxscript")
    extra = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    runtime = "tensorrt"
    verification = VERIFICATION

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        import onnx

        from edgevl.exporters.onnx import export_tower_onnx, pin_static_dims, save_checked
        from edgevl.exporters.onnx_attention import count_fused_attention
        from edgevl.exporters.tensorrt_attention import check_iattention, count_plugin_nodes, to_plugin_nodes
        from edgevl.exporters.tensorrt_engine import NO_TENSORRT, build_engine, tensorrt_available
        from edgevl.exporters.tensorrt_plugin import MASKED, PLUGINS, UNMASKED
        from edgevl.exporters.trtexec import profiles, write_script

        from edgevl.compress.plan import tower_plan

        precision = options.precision
        tower = spec.tower(component)
        tower_plan(tower, self.name, precision, (), PLAN_INSTEAD)  # refuses any plan at this precision
        path = out_dir / f"{component}_encoder.{precision}.onnx"
        fp32_path = path if precision == "fp32" else out_dir / f".{component}_encoder.fp32.onnx"
        # Quantized and fp16 graphs are measured on the dynamic graph, pinned afterwards.
        pin_later = precision != "fp32" and bool(options.static_shapes)
        report = export_tower_onnx(tower, fp32_path, "standard", options.allow_unfused,
                                   None if pin_later else options.static_shapes)
        fp32 = onnx.load(str(fp32_path))
        passes: dict[str, Any] = {"attention_blocks": report.blocks, "iattention": check_iattention(fp32, component)}
        runtime_options: dict[str, Any] = {}
        if precision == "fp16":
            from edgevl.exporters.tensorrt_fp16 import ort_fp32_fallbacks

            model, passes["fp16_guard"] = fp16_graph(spec, component, fp32)
            passes["onnxruntime_fp32_ops"] = ort_fp32_fallbacks(model)
        elif precision == "int8":
            model, passes["quantization"] = int8_graph(spec, component, fp32, options)
            runtime_options["qdq_as_written"] = True
        else:
            model = fp32
        if precision != "fp32":
            passes["iattention"] = check_iattention(model, component)
            save_checked(model, path)
            fp32_path.unlink(missing_ok=True)
            if pin_later:
                passes["static_shapes"] = pin_static_dims(path, tower, options.static_shapes or {})
        fused = count_fused_attention(onnx.load(str(path)))
        passes["attention_fused"] = fused
        files = [path]
        plugin_name = None
        if options.trt_attention == "plugin":
            plugin_graph = onnx.load(str(path))
            rewritten = to_plugin_nodes(plugin_graph, UNMASKED, MASKED)
            plugin_path = out_dir / f"{component}_encoder.{precision}.plugin.onnx"
            save_checked(plugin_graph, plugin_path)
            plugin_name = plugin_path.name
            files.append(plugin_path)
            passes["plugin"] = {"file": str(plugin_path), "rewritten": rewritten,
                                "plugin_nodes": count_plugin_nodes(plugin_graph, PLUGINS),
                                "plugins": [f"{p.namespace}::{p.name} v{p.version}" for p in PLUGINS]}
        profile = profiles(tower, spec.preprocess.context_length, options.static_shapes)
        engine_name = f"{component}_encoder.{precision}.engine"
        script, lines = write_script(out_dir, path.name, engine_name, profile, plugin_name)
        files.append(script)
        passes["profiles"] = profile
        passes["trtexec"] = {"script": str(script), **lines}
        notes = [f"tensorrt attention: {options.trt_attention}"]
        if precision == "int8" and not passes["quantization"]["quantized_layers"]:
            notes.append(f"{component} tower: the accuracy gate kept every layer float; this artifact computes in float")
        if tensorrt_available():
            engine = build_engine(path, out_dir / engine_name, profile)
            files.append(engine)
            runtime_options["engine"] = engine.name
            passes["engine"] = str(engine)
        else:
            passes["engine"] = None
            notes.append(NO_TENSORRT)
        runtime_options["profile"] = profile
        if options.trt_attention == "plugin":
            notes.append("parity ran the native Attention graph; the plugin graph differs only in its attention nodes")
        return ExportedArtifact(
            target=self.name, precision=precision, component=component, path=path, files=files,
            fused_attention=fused, unfused_attention=report.unfused, unfused_blocks=report.unfused_blocks,
            runtime=self.runtime, runtime_options=runtime_options, passes=passes, notes=notes,
        )

    def describe(self, artifact: ExportedArtifact) -> ArtifactFacts:
        """The default's compression, and once per export that no engine was built here."""
        from edgevl.exporters.tensorrt_engine import NO_TENSORRT

        facts = super().describe(artifact)
        if artifact.passes.get("engine") is None:
            facts.export_notes["tensorrt_engine"] = NO_TENSORRT
        return facts
