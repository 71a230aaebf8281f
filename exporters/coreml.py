"""Core ML target: each tower becomes one ML Program (`.mlpackage`, iOS 18) with a flexible
batch, every attention block ONE `scaled_dot_product_attention` op. On macOS Core ML itself runs
it; elsewhere edgevl's numpy reference interpreter does (`runtimes/coreml.py`), and the manifest
says which (`verified`: "runtime" or "reference-interpreter").

Conversion is `coreml_convert`'s job (with `coreml_ops`' attention converter), the fp16 guard
`coreml_fp16`'s; this module is the exporter.

Precisions:
    fp32        computes in fp32.
    fp16        Core ML's default: computes in fp16, except the ops the fp16 guard keeps fp32
                (their fp16 values overflow, or the program misses the fp16 parity bar on the
                gate split without them); the manifest lists them.
    int8w       fp16 compute (guarded), weights linearly quantized to int8 per output channel
                (`coremltools.optimize.coreml.linear_quantize_weights`).
    palettize4  fp16 compute (guarded), weights palettized to 16 values per group of output
                channels (`coremltools.optimize.coreml.palettize_weights`, k-means, 4 bits).
    int8        W8A8: refused. `linear_quantize_activations` calibrates through
                `MLModel.predict`, which needs macOS.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any, Optional

from edgevl.errors import ExportError, InputError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, refuse_unfused
from edgevl.exporters.coreml_convert import convert_tower, op_types, silent
from edgevl.exporters.coreml_ops import SDPA_OP
from edgevl.models.spec import Component, ModelSpec
from edgevl.registry import register_exporter

__all__ = ["SDPA_OP", "CoreMLExporter", "count_sdpa", "compress_weights"]

INT8_REFUSAL = (
    "Core ML int8 (W8A8) calibrates activations through MLModel.predict, which runs on macOS only; "
    "use --precision int8w (int8 weights) or palettize4 here"
)
# Weight compression skips tensors smaller than this (coremltools' own default is 2048):
# norms, biases and the tiny test models' layers would gain nothing.
MIN_COMPRESSED_WEIGHTS = 512
# Output channels that share one 16-entry table: a table per tensor (coremltools' default) lost
# zero-shot agreement on the tiny test towers; the tables cost 32 bytes per group.
PALETTE_GROUP = 16


def count_sdpa(model: Any) -> int:
    return op_types(model).count(SDPA_OP)


def output_layer(model: Any) -> Optional[str]:
    """Name of the last `linear` / `conv` / `matmul` op: the tower's output projection, whose
    weight error goes straight into the embedding; weight compression leaves it fp16."""
    names = [op.name for op in model._mil_program.functions["main"].operations
             if op.op_type in ("linear", "conv", "matmul")]
    return names[-1] if names else None


def compress_weights(model: Any, precision: str) -> tuple[Any, dict]:
    """int8w / palettize4 graph passes on a converted model (no macOS needed). They compress the
    weights of linear / matmul layers and embedding tables, as the other targets' weight-only
    precisions do; conv weights (EfficientNet's, with batch norms folded in) stay fp16: per
    output channel they lost too much zero-shot agreement on the default model's image tower."""
    with silent():
        import coremltools.optimize.coreml as cto

    last = output_layer(model)
    skip = {last: None} if last else {}
    if precision == "int8w":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=MIN_COMPRESSED_WEIGHTS)
        config = cto.OptimizationConfig(global_config=op, op_type_configs={"conv": None}, op_name_configs=skip)
        with silent():
            model = cto.linear_quantize_weights(model, config)
        return model, {"scheme": "linear_symmetric int8, per output channel", "min_weights": MIN_COMPRESSED_WEIGHTS,
                       "kept_fp16": sorted(skip) + ["every conv"]}
    grouped = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_grouped_channel",
                                     group_size=PALETTE_GROUP, weight_threshold=MIN_COMPRESSED_WEIGHTS)
    config = cto.OptimizationConfig(global_config=grouped, op_type_configs={"conv": None}, op_name_configs=skip)
    with silent():
        model = cto.palettize_weights(model, config)
    return model, {"scheme": f"k-means palettization, 4 bits, a table per {PALETTE_GROUP} output channels",
                   "min_weights": MIN_COMPRESSED_WEIGHTS, "kept_fp16": sorted(skip) + ["every conv"]}


@register_exporter("coreml")
class CoreMLExporter(Exporter):
    name = "coreml"
    requires = ("coremltools",)
    extra = "coreml"
    precisions = ("fp32", "fp16", "int8w", "palettize4")
    refused = {"int8": INT8_REFUSAL}
    runtime = "coreml"
    verification = "exports; verified by the reference interpreter here, by Core ML on macOS"

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        from edgevl.exporters.coreml_fp16 import guarded_fp16
        from edgevl.ops.attention import attention_blocks, unrouted_blocks

        precision = options.precision
        static_batch = (options.static_shapes or {}).get("batch")
        if (options.static_shapes or {}).get("seq") not in (None, spec.preprocess.context_length):
            raise InputError(
                f"--static-shapes seq: the Core ML text tower takes the context length "
                f"({spec.preprocess.context_length}) only; drop seq or give seq={spec.preprocess.context_length}"
            )
        tower = spec.tower(component)
        module = tower.module.eval()
        blocks = attention_blocks(module)
        unrouted = unrouted_blocks(module, lambda: module(**tower.example_inputs))

        passes: dict[str, Any] = {"conversion": "torch.jit.trace -> coremltools ML Program (iOS18)"}
        if precision == "fp32":
            model = convert_tower(tower, fp16=False, static_batch=static_batch)
        else:
            model, passes["fp16_guard"] = guarded_fp16(spec, tower, static_batch, out_dir)
        fused = count_sdpa(model)
        unfused = max(len(blocks) - fused, 0)
        unfused_blocks = list(unrouted) if unfused else []
        refuse_unfused(component, unfused, unfused_blocks, len(blocks), options.allow_unfused, f"one {SDPA_OP} op")
        passes.update({"attention_fused": fused, "attention_blocks": len(blocks)})
        if precision in ("int8w", "palettize4"):
            model, passes["compression"] = compress_weights(model, precision)
            if count_sdpa(model) != fused:
                raise ExportError(
                    f"{component} tower: {precision} compression changed the {SDPA_OP} count "
                    f"({fused} -> {count_sdpa(model)})"
                )

        package = out_dir / f"{component}_encoder.{precision}.mlpackage"
        if package.exists():
            shutil.rmtree(package)
        with silent():
            model.save(str(package))
        files = sorted(p for p in package.rglob("*") if p.is_file())
        notes = [
            "verified by edgevl's numpy reference interpreter of the ML Program, not by Core ML"
            if platform.system() != "Darwin" else "verified by Core ML (MLModel.predict)",
        ]
        if unrouted and not unfused:
            notes.append("fused though not routed through edgevl's attention op: " + ", ".join(unrouted))
        options_out: dict[str, Any] = {}
        if component == "text":
            options_out["pad_token_id"] = int(spec.preprocess.pad_token_id)
        return ExportedArtifact(
            target=self.name,
            precision=precision,
            component=component,
            path=package,
            files=files,
            fused_attention=fused,
            unfused_attention=unfused,
            unfused_blocks=unfused_blocks,
            runtime=self.runtime,
            runtime_options=options_out,
            passes=passes,
            notes=notes,
        )
