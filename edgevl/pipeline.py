"""`edgevl export`: model -> per-target artifacts -> parity on real data -> manifest.

Data moves forward only: the pipeline loads a ModelSpec, asks each exporter for an artifact in a
staging folder, runs it with the target's runtime (by path and name), compares with the PyTorch
reference, writes the manifest and only then moves the folder into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgevl import __version__
from edgevl.errors import InputError, ModelLoadError, ParityError
from edgevl.exporters.base import ExportedArtifact, Exporter, ExportOptions, check_static_shapes
from edgevl.fsutil import check_output_dir, publish, staging_dir
from edgevl.manifest import ArtifactEntry, Manifest, sha256_of
from edgevl.models.spec import LoadOptions, ModelSpec
from edgevl.progress import Progress
from edgevl.registry import EXPORTERS, MODELS, RUNTIMES

DEFAULT_MODEL = "effnet-minilm"
COMPONENTS = ("image", "text")


@dataclass(frozen=True)
class ExportRequest:
    """Everything `edgevl export` was asked to do (validated by `validate`)."""

    model: Optional[str]
    targets: tuple[str, ...]
    precisions: tuple[str, ...]
    out: Path
    force: bool = False
    components: tuple[str, ...] = COMPONENTS
    onnx_flavor: str = "standard"
    allow_unfused: bool = False
    allow_pickle: bool = False
    keep_failed: bool = False
    static_shapes: Optional[dict[str, int]] = None
    calibration: Optional[str] = None
    max_drop: float = 0.01


@dataclass
class ExportOutcome:
    """A successful export (a failed one raises): its manifest and where it was published."""

    manifest: Manifest
    out: Path


def check_model_name(name_or_path: Optional[str]) -> None:
    if name_or_path is None or name_or_path in MODELS.names():
        return
    if not Path(name_or_path).expanduser().exists():
        raise ModelLoadError(
            f"model path {name_or_path} does not exist and is not a registered model "
            f"({', '.join(MODELS.names())}); check the path"
        )


def resolve_model(name_or_path: Optional[str], options: LoadOptions) -> ModelSpec:
    """A registered name, or a checkpoint folder (loaded by the hf-clip adapter)."""
    check_model_name(name_or_path)
    if name_or_path is None:
        return MODELS.get(DEFAULT_MODEL)(None, options)
    if name_or_path in MODELS.names():
        return MODELS.get(name_or_path)(None, options)
    return MODELS.get("hf-clip")(str(Path(name_or_path).expanduser()), options)


def validate(request: ExportRequest) -> list[Exporter]:
    """Check names, combinations, SDKs and the output folder before any work is done."""
    if not request.targets:
        raise InputError("--target is empty; choose from: " + ", ".join(EXPORTERS.names()))
    exporters: list[Exporter] = [EXPORTERS.get(t)() for t in request.targets]
    for precision in request.precisions:
        unsupported = [e.name for e in exporters if precision not in e.precisions]
        if unsupported:
            valid = sorted({p for e in exporters for p in e.precisions})
            raise InputError(
                f"precision {precision!r} is not supported by target {', '.join(unsupported)}; "
                f"choose from: {', '.join(valid)}"
            )
    for component in request.components:
        if component not in COMPONENTS:
            raise InputError(f"unknown component {component!r}; choose from: {', '.join(COMPONENTS)}")
    check_model_name(request.model)
    check_output_dir(request.out, request.force)
    for exporter in exporters:
        for precision in request.precisions:
            exporter.check_available(precision)
    return exporters


def _verify(
    artifact: ExportedArtifact, data, spec: ModelSpec, static_shapes: Optional[dict[str, int]]
) -> tuple[str, dict, list[str]]:
    from edgevl.paritydata import run_batched, verify_outputs
    from edgevl.tolerances import tolerance_for

    if not artifact.runtime:
        return "not-run", {"passed": None}, []
    runtime = RUNTIMES.get(artifact.runtime)()
    loaded = runtime.load(artifact.path, artifact.runtime_options)
    tower = spec.tower(artifact.component)
    output_name = loaded.output_names[0]
    batch = (static_shapes or {}).get("batch", 16)
    candidate = run_batched(lambda f: loaded.run(f)[output_name], data.feeds(artifact.component), batch)
    tolerance = tolerance_for(artifact.target, artifact.precision)
    label = f"{artifact.target}/{artifact.precision}/{artifact.component}"
    result = verify_outputs(data, artifact.component, candidate, tolerance, f"{label} {tower.output.name}")
    return "runtime", result.to_json(), result.failures


def run_export(request: ExportRequest, progress: Optional[Progress] = None) -> ExportOutcome:
    progress = progress or Progress()
    exporters = validate(request)
    calibration = None
    if request.calibration is not None:
        from edgevl.calibration.datasets import load_calibration

        # Read before the (slow) model load, so a bad --calib fails at once.
        calibration = load_calibration(request.calibration)
    with progress.step(f"loading model {request.model or DEFAULT_MODEL}") as details:
        spec = resolve_model(request.model, LoadOptions(allow_pickle=request.allow_pickle))
        details.append(f"{spec.params / 1e6:.1f} M params" if spec.params >= 1e5 else f"{spec.params} params")
    check_static_shapes([spec.tower(c) for c in request.components], request.static_shapes)
    for note in spec.notes:
        progress.info(f"  note: {note}")
    manifest = Manifest(
        edgevl_version=__version__,
        model={"name": spec.name, "source": spec.source, "params": spec.params},
    )
    failures: list[str] = []
    with staging_dir(request.out) as stage:
        spec.preprocess.save(stage / "preprocess.json")
        if spec.tokenizer_files:
            (stage / "tokenizer").mkdir()
            for f in spec.tokenizer_files:
                shutil.copy2(f, stage / "tokenizer" / f.name)
        with progress.step("computing PyTorch reference on the held-out parity split") as details:
            from edgevl.paritydata import build_parity_data

            data = build_parity_data(spec, static_seq=(request.static_shapes or {}).get("seq"))
            d = data.describe()
            details.append(f"{d['images']} real images, {d['texts']} texts: {d['text_source']}")
        manifest.extra["parity_set"] = data.describe()
        manifest.extra["data_splits"] = data_splits(calibration)
        manifest.extra["preprocess"] = "preprocess.json"
        if spec.tokenizer_files:
            manifest.extra["tokenizer"] = "tokenizer"
        for exporter in exporters:
            for precision in request.precisions:
                options = ExportOptions(
                    precision=precision,
                    onnx_flavor=request.onnx_flavor,
                    allow_unfused=request.allow_unfused,
                    static_shapes=request.static_shapes,
                    calibration=calibration,
                    max_drop=request.max_drop,
                    progress=lambda line: progress.info(f"  {line}"),
                )
                for component in request.components:
                    folder = stage / exporter.name / precision
                    with progress.step(f"exporting {component} tower to {exporter.name} {precision}") as details:
                        artifact = exporter.export(spec, component, folder, options)
                        details.append(
                            f"attention fused {artifact.fused_attention}, unfused {artifact.unfused_attention}"
                        )
                    with progress.step(f"verifying with {artifact.runtime or 'no runtime'}") as details:
                        verified, parity, misses = _verify(artifact, data, spec, request.static_shapes)
                        if verified == "runtime" and parity["cosine_min"] is None:
                            details.append("output shape differs from the reference")
                        elif verified == "runtime":
                            details.append(
                                f"min cosine {parity['cosine_min']:.6f}, max abs {parity['max_abs']:.2e}, "
                                f"SQNR {parity['sqnr_db']:.1f} dB, top-1 agreement "
                                f"{format_agreement(parity['top1_agreement'], parity['top1_agreement_strict'])}"
                            )
                        else:
                            details.append("not run: no runtime for this target on this machine")
                    failures += misses
                    manifest.artifacts.append(_entry(artifact, stage, verified, parity))
        manifest.write(stage)
        passed = not failures
        if passed or request.keep_failed:
            publish(stage, request.out)
        else:
            shutil.rmtree(stage, ignore_errors=True)
    if failures:
        where = f"artifacts kept in {request.out}" if request.keep_failed else "nothing was written"
        raise ParityError(f"parity failed ({where}): " + "; ".join(failures))
    return ExportOutcome(manifest, request.out)


def format_agreement(tie_aware: Optional[float], strict: Optional[float] = None) -> str:
    """Top-1 agreement for people, both figures: the tie-aware one (gated) then the strict one
    (reported), e.g. "0.982 (strict 0.964)". None (no zero-shot task on this tower) reads n/a."""
    if tie_aware is None:
        return "n/a"
    return f"{tie_aware:.3f}" if strict is None else f"{tie_aware:.3f} (strict {strict:.3f})"


def data_splits(calibration: "Optional[object]") -> dict:
    """The manifest's record of the three disjoint data splits: what int8 calibrates on (the
    user's `--calib` data when given, else the bundled calibration split), what the int8 accuracy
    gate measures on, and the held-out parity split every artifact is judged on. Each holds its
    source, photo / image / text counts and a content hash."""
    from edgevl.calibration.samples import split_record

    return {
        "calibration": calibration.record() if calibration is not None else split_record("calibration"),
        "gate": split_record("gate"),
        "parity": split_record("parity"),
    }


def _entry(artifact: ExportedArtifact, stage: Path, verified: str, parity: dict) -> ArtifactEntry:
    files = [f for f in artifact.files if f.exists()]
    extra = {
        "files": [str(f.relative_to(stage)) for f in files],
        "unfused_blocks": artifact.unfused_blocks,
        "passes": artifact.passes,
    }
    if artifact.runtime_options:
        extra["runtime_options"] = artifact.runtime_options
    if artifact.notes:
        extra["notes"] = artifact.notes
    return ArtifactEntry(
        target=artifact.target,
        precision=artifact.precision,
        component=artifact.component,
        path=str(artifact.path.relative_to(stage)),
        sha256=sha256_of(artifact.path),
        bytes=sum(f.stat().st_size for f in files),
        fused_attention=artifact.fused_attention,
        unfused_attention=artifact.unfused_attention,
        verified=verified,
        parity=parity,
        extra=extra,
    )
