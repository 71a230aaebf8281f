"""Core ML target: each tower becomes one ML Program (`.mlpackage`, iOS 18) with a flexible
batch, every attention block ONE `scaled_dot_product_attention` op. On macOS Core ML itself runs
it; elsewhere edgevl's numpy reference interpreter does (`runtimes/coreml.py`), and the manifest
says which (`verified`: "runtime" or "reference-interpreter").

The image tower takes a Core ML image (RGB pixels 0-255) with the preprocessing's normalisation
folded into the model (`--coreml-input tensor`: the normalised float tensor instead); the
manifest's runtime options carry the folded scale and biases, which the runtime uses to turn a
normalised tensor back into pixels.

Conversion is `coreml_convert`'s job (with `coreml_ops`' attention converter), the fp16 guard
`coreml_fp16`'s; this module is the exporter.

Precisions (`coreml_compress` chooses the compressed layers with its accuracy gate):
    fp32        computes in fp32.
    fp16        Core ML's default: computes in fp16, except the ops the fp16 guard keeps fp32
                (their fp16 values overflow, or the program misses the fp16 parity bar on the
                gate split without them); the manifest lists them.
    int8w       fp16 compute (guarded), weights linearly quantized to int8 per output channel
                (`coremltools.optimize.coreml.linear_quantize_weights`).
    palettize4  fp16 compute (guarded), weights palettized to 16 values per group of channels
                (k-means in edgevl, stored by `coremltools.optimize.coreml.palettize_weights`).
    int8        W8A8: refused. `linear_quantize_activations` calibrates through
                `MLModel.predict`, which needs macOS.
A `quantize_` plan at the exported precision (WeightOnlyConfig(bits=8) at int8w) is refused with
an InputError: the compression is Core ML's own, chosen by its gate.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any, Optional

from edgevl.errors import ExportError, InputError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, refuse_unfused
from edgevl.exporters.coreml_compress import plan_compression, write_compressed
from edgevl.exporters.coreml_convert import ImageInput, convert_tower, op_types, silent
from edgevl.exporters.coreml_ops import SDPA_OP
from edgevl.manifest import ArtifactFacts, Compression
from edgevl.models.spec import Component, ModelSpec
from edgevl.registry import register_exporter

__all__ = ["SDPA_OP", "CoreMLExporter", "count_sdpa"]

INT8_REFUSAL = (
    "Core ML int8 (W8A8) calibrates activations through MLModel.predict, which runs on macOS only; "
    "use --precision int8w (int8 weights) or palettize4 here"
)
# What Core ML does instead of a `quantize_` plan (only WeightOnlyConfig(bits=8), at int8w, can
# reach it: its other precisions have no config).
PLAN_INSTEAD = ("it compresses weights with --precision int8w (symmetric int8 per output channel) or "
                "palettize4, the layers chosen by its own accuracy gate; export without quantize_, or to onnx")


def count_sdpa(model: Any) -> int:
    return op_types(model).count(SDPA_OP)


@register_exporter("coreml")
class CoreMLExporter(Exporter):
    name = "coreml"
    requires = ("coremltools",)
    extra = "coreml"
    precisions = ("fp32", "fp16", "int8w", "palettize4")
    refused = {"int8": INT8_REFUSAL}
    runtime = "coreml"

    @property
    def verification(self) -> str:
        """How this machine verifies a package: Core ML itself on macOS, the reference
        interpreter elsewhere (what `runtimes/coreml.py` loads)."""
        if platform.system() == "Darwin":
            return "exports; verified by Core ML itself (MLModel.predict) here"
        return "exports; verified by the reference interpreter here, by Core ML on macOS"

    def _export(
        self, spec: ModelSpec, component: Component, out_dir: Path, options: ExportOptions
    ) -> ExportedArtifact:
        from edgevl.compress.plan import tower_plan
        from edgevl.exporters.coreml_fp16 import guarded_fp16
        from edgevl.ops.attention import attention_blocks, unrouted_blocks

        precision = options.precision
        tower_plan(spec.tower(component), self.name, precision, (), PLAN_INSTEAD)  # refuses any plan here
        static_batch = (options.static_shapes or {}).get("batch")
        if (options.static_shapes or {}).get("seq") not in (None, spec.preprocess.context_length):
            raise InputError(
                f"--static-shapes seq: the Core ML text tower takes the context length "
                f"({spec.preprocess.context_length}) only; drop seq or give seq={spec.preprocess.context_length}"
            )
        if component == "image" and "tokens" in spec.derived and (options.static_shapes or {}).get("batch") is None:
            # coremltools loses the static head size on the token-merge path when batch is symbolic.
            raise InputError("--tokens on the coreml target needs a static batch: add --static-shapes batch=1")
        tower = spec.tower(component)
        module = tower.module.eval()
        blocks = attention_blocks(module)
        unrouted = unrouted_blocks(module, lambda: module(**tower.example_inputs))

        passes: dict[str, Any] = {"conversion": "torch.jit.trace -> coremltools ML Program (iOS18)"}
        plan, image_input = None, None
        if component == "image" and options.coreml_input == "image":
            image_input = ImageInput.from_normalisation(spec.preprocess.mean, spec.preprocess.std)
        if precision == "fp32":
            model = convert_tower(tower, fp16=False, static_batch=static_batch, image_input=image_input)
        elif precision in ("int8w", "palettize4"):
            compressed, plan = plan_compression(spec, tower, precision, options.progress or (lambda _m: None),
                                                options.palette_tune_steps)
            model, passes["fp16_guard"] = guarded_fp16(spec, tower, static_batch, out_dir, convert=compressed,
                                                       image_input=image_input)
        else:
            model, passes["fp16_guard"] = guarded_fp16(spec, tower, static_batch, out_dir, image_input=image_input)
        fused = count_sdpa(model)
        unfused = max(len(blocks) - fused, 0)
        unfused_blocks = list(unrouted) if unfused else []
        refuse_unfused(component, unfused, unfused_blocks, len(blocks), options.allow_unfused, f"one {SDPA_OP} op")
        passes.update({"attention_fused": fused, "attention_blocks": len(blocks)})
        if plan is not None:
            model = write_compressed(model, plan)
            passes["compression"] = plan.report()
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
        if plan is not None and plan.stored_compressed == 0:
            notes.append(f"the {precision} accuracy gate kept every layer float: the package holds fp16 weights "
                         "(passes.compression names the layers and their damage)")
        if unrouted and not unfused:
            notes.append("fused though not routed through edgevl's attention op: " + ", ".join(unrouted))
        options_out: dict[str, Any] = {}
        if component == "text":
            options_out["pad_token_id"] = int(spec.preprocess.pad_token_id)
        if image_input is not None:
            options_out["image_input"] = image_input.to_json()
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

    def describe(self, artifact: ExportedArtifact) -> ArtifactFacts:
        """The layers the package stores compressed, of the gate's candidates (those it stores
        dense and those kept float stay float); the best candidate is the least damaging layer
        compressed alone."""
        report = artifact.passes.get("compression")
        if not report:
            return ArtifactFacts()
        done = int(report["compressed_layers"])
        least = report.get("least_damage")
        best = (f"best {artifact.precision} candidate, the least damaging layer alone compressed: min cosine "
                f"{1.0 - least:.4f} on the gate split" if least is not None else "")
        return ArtifactFacts(Compression(done, done + len(report["stored_dense"]) + len(report["kept_float"]), best))
