"""`edgevl export`: model -> per-target artifacts -> parity on real data -> manifest.

Data moves forward only: the pipeline loads a ModelSpec, asks each exporter for an artifact in a
staging folder, runs it with the target's runtime (by path and name), compares with the PyTorch
reference, writes the manifest and only then moves the folder into place.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgevl.version import __version__
from edgevl.compress.config import DEFAULT_PALETTE_TUNE_STEPS
from edgevl.compress.tokens_config import as_token_config
from edgevl.errors import InputError, ModelLoadError, NothingCompressedError, OutputWriteError, ParityError
from edgevl.exporters.base import (
    STATIC_AXES, TRT_ATTENTION, ExportedArtifact, Exporter, ExportOptions, check_static_shapes,
    check_static_sizes,
)
from edgevl.fsutil import check_output_dir, publish, staging_dir
from edgevl.manifest import (  # noqa: F401  (format_agreement, format_parity: re-exported)
    VERIFIED_LABELS, ArtifactEntry, Compression, Manifest, format_agreement, format_attention, format_parity,
    sha256_of,
)
from edgevl.models.resolve import DEFAULT_MODEL, check_model_name, resolve_model
from edgevl.models.spec import LoadOptions, ModelSpec
from edgevl.progress import Progress
from edgevl.registry import EXPORTERS, RUNTIMES

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
    cpu_isa: str = "any"
    speed_guard: bool = False
    coreml_input: str = "image"
    palette_tune_steps: int = DEFAULT_PALETTE_TUNE_STEPS
    trt_attention: str = "native"
    allow_float_fallback: bool = False
    # Token reduction of a ViT image tower: a `--tokens` string or a TokenConfig (None: none).
    tokens: Optional[Any] = None


@dataclass
class ExportOutcome:
    """A successful export (a failed one raises): its manifest, where it was published, and the
    exporters' export-wide notes (manifest key -> one line)."""

    manifest: Manifest
    out: Path
    notes: dict[str, str]


def validate(request: ExportRequest) -> list[Exporter]:
    """Check names, combinations, SDKs and the output folder before any work is done (the model
    load is the slow part: everything that can be refused without it is refused here)."""
    if not request.targets:
        raise InputError("--target is empty; choose from: " + ", ".join(EXPORTERS.names()))
    if not request.precisions:
        raise InputError("--precision is empty; give one or more, e.g. fp32,int8")
    if not request.components:
        raise InputError(f"--components is empty; choose from: {', '.join(COMPONENTS)}")
    for flag, values in (("--target", request.targets), ("--precision", request.precisions),
                         ("--components", request.components)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise InputError(f"{flag} names {', '.join(twice)} more than once; give each once")
    if not 0.0 <= request.max_drop < 1.0:  # also refuses nan
        raise InputError(f"--max-drop {request.max_drop} is outside [0, 1); give a fraction such as 0.01")
    _check_static_axes(request.static_shapes)
    exporters: list[Exporter] = [EXPORTERS.get(t)() for t in request.targets]
    for precision in request.precisions:
        for exporter in exporters:
            exporter.check_not_refused(precision)
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
    if request.onnx_flavor == "ort" and "onnx" in request.targets and "int8" in request.precisions:
        # ORT's quantizer mistakes com.microsoft.MultiHeadAttention for an op it quantizes itself.
        raise InputError(
            "--onnx-flavor ort cannot be combined with --precision int8 on the onnx target; "
            "use --onnx-flavor standard (the default) for int8, or ort for fp32/int8w/int4w"
        )
    if request.trt_attention not in TRT_ATTENTION:
        raise InputError(f"unknown trt_attention {request.trt_attention!r}; use one of: {', '.join(TRT_ATTENTION)}")
    if request.trt_attention != "native" and "tensorrt" not in request.targets:
        raise InputError("--trt-attention applies to the tensorrt target only; add --target tensorrt or drop it")
    if as_token_config(request.tokens) is not None and "image" not in request.components:
        raise InputError("--tokens reduces the image tower's tokens but --components leaves the image tower out; "
                         "add image to --components or drop --tokens")
    check_model_name(request.model)
    check_output_dir(request.out, request.force)
    for exporter in exporters:
        for precision in request.precisions:
            exporter.check_available(precision)
    return exporters



def _check_static_axes(static_shapes: Optional[dict[str, int]]) -> None:
    """The axis names edgevl's towers can have; which of them a tower has is checked after load."""
    if static_shapes is None:
        return
    if not static_shapes:
        raise InputError("--static-shapes is empty; give AXIS=N pairs, e.g. batch=1,seq=77")
    unknown = sorted(set(static_shapes) - set(STATIC_AXES))
    if unknown:
        raise InputError(
            f"--static-shapes names unknown axis {', '.join(unknown)}; the axes edgevl can fix are: "
            f"{', '.join(STATIC_AXES)} (e.g. batch=1,seq=77)"
        )
    bad = {k: v for k, v in static_shapes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise InputError(f"--static-shapes sizes must be positive integers, got {bad}; e.g. batch=1,seq=77")


def _check_reference_finite(reference: dict, components: tuple[str, ...]) -> None:
    import numpy as np

    for component in components:
        values = reference[component]
        if not np.all(np.isfinite(values)):
            raise ModelLoadError(
                f"the PyTorch reference of the {component} tower gives NaN/Inf on the parity set "
                f"({int(np.sum(~np.isfinite(values)))} values); the checkpoint's weights or config are broken: re-save it"
            )


def _verify(
    artifact: ExportedArtifact, data, spec: ModelSpec, static_shapes: Optional[dict[str, int]],
    max_drop: Optional[float] = None,
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
    total, capped, cap = len(data.image_names), None, getattr(loaded, "parity_images", None)
    if artifact.component == "image" and cap is not None and total > cap:
        data, capped = data.first_images(cap), {"judged": cap, "of": total}
    candidate = run_batched(lambda f: loaded.run(f)[output_name], data.feeds(artifact.component), batch)
    tolerance = tolerance_for(artifact.target, artifact.precision, max_drop)
    label = f"{artifact.target}/{artifact.precision}/{artifact.component}"
    result = verify_outputs(data, artifact.component, candidate, tolerance, f"{label} {tower.output.name}")
    record = result.to_json()
    if capped is not None:
        record["parity_images"] = {**capped, "why": f"{loaded.verified}: the first images only (a slow interpreter)"}
    return loaded.verified, record, result.failures


def run_export(
    request: ExportRequest, progress: Optional[Progress] = None, spec: Optional[ModelSpec] = None,
) -> ExportOutcome:
    """Export and verify as `request` says. `spec`: an already loaded (e.g. `quantize_`d) model,
    used instead of loading `request.model`."""
    progress = progress or Progress()
    exporters = validate(request)
    calibration = None
    if request.calibration is not None:
        from edgevl.compress.plan import resolve_calibration

        # Read before the (slow) model load, so a bad --calib fails at once.
        calibration = resolve_calibration(request.calibration)
    with progress.step(f"loading model {spec.name if spec else request.model or DEFAULT_MODEL}") as details:
        if spec is None:
            spec = resolve_model(request.model, LoadOptions(allow_pickle=request.allow_pickle))
        details.append(f"{spec.params / 1e6:.1f} M params" if spec.params >= 1e5 else f"{spec.params} params")
    tokens = as_token_config(request.tokens)
    if tokens is not None:
        from edgevl.compress.tokens_gate import apply_tokens_with_progress

        apply_tokens_with_progress(spec, tokens, request.max_drop, progress)
    check_static_shapes([spec.tower(c) for c in request.components], request.static_shapes)
    check_static_sizes(spec, request.static_shapes)
    for note in spec.notes:
        progress.info(f"  note: {note}")
    manifest = Manifest(
        edgevl_version=__version__,
        model={"name": spec.name, "source": spec.source, "params": spec.params},
    )
    if "tokens" in spec.derived and "image" in request.components:
        manifest.extra["tokens"] = spec.derived["tokens"]
    failures: list[str] = []
    notes: dict[str, str] = {}
    doing = "creating the staging folder"  # named in the message if writing fails
    try:
        with staging_dir(request.out) as stage:
            doing = "writing preprocess.json"
            spec.preprocess.save(stage / "preprocess.json")
            if spec.tokenizer_files:
                doing = "copying the tokenizer files"
                (stage / "tokenizer").mkdir()
                for f in spec.tokenizer_files:
                    shutil.copy2(f, stage / "tokenizer" / f.name)
            doing = "computing the PyTorch reference"
            with progress.step("computing PyTorch reference on the held-out parity split") as details:
                from edgevl.paritydata import build_parity_data

                data = build_parity_data(spec, static_seq=(request.static_shapes or {}).get("seq"))
                _check_reference_finite(data.reference, request.components)
                d = data.describe()
                details.append(f"{d['images']} real images, {d['texts']} texts: {d['text_source']}")
            manifest.extra["parity_set"] = data.describe()
            manifest.extra["data_splits"] = data_splits(calibration, spec, tuple(request.components))
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
                        cpu_isa=request.cpu_isa,
                        speed_guard=request.speed_guard,
                        coreml_input=request.coreml_input,
                        palette_tune_steps=request.palette_tune_steps,
                        trt_attention=request.trt_attention,
                        progress=lambda line: progress.info(f"  {line}"),
                    )
                    for component in request.components:
                        folder = stage / exporter.name / precision
                        doing = f"exporting the {component} tower to {exporter.name} {precision}"
                        with progress.step(f"exporting {component} tower to {exporter.name} {precision}") as details:
                            artifact = exporter.export(spec, component, folder, options)
                            facts = exporter.describe(artifact)
                            details.append(format_attention(artifact.fused_attention, artifact.unfused_attention))
                            if facts.compression is not None:
                                details.append(f"{precision} {facts.compression.share()}")
                        fallback = _check_compressed(exporter, artifact, facts.compression, request.allow_float_fallback)
                        if fallback:
                            progress.info(f"  {fallback}")
                        doing = f"verifying the {component} tower's {exporter.name} {precision} artifact"
                        with progress.step(doing) as details:
                            verified, parity, misses = _verify(artifact, data, spec, request.static_shapes,
                                                               request.max_drop)
                            if verified != "not-run":
                                details.append(format_parity(parity, long=True))
                            details.append(VERIFIED_LABELS[verified])
                        failures += misses
                        manifest.artifacts.append(_entry(artifact, stage, verified, parity, facts.compression))
                        notes.update(facts.export_notes)
                        manifest.extra.update(facts.export_notes)
            doing = "writing manifest.json"
            manifest.write(stage)
            doing = f"moving the export to {request.out}"
            passed = not failures
            if passed or request.keep_failed:
                publish(stage, request.out)
            else:
                shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        # A full disk, a file-size limit, a folder that became read-only: the staging folder is
        # already gone (staging_dir removes it on any error); say what failed in one line.
        raise OutputWriteError(
            f"cannot write the export for --out {request.out} ({doing}): {_os_reason(exc)}; "
            "free disk space or choose another --out (nothing was written)"
        ) from exc
    if failures:
        where = f"artifacts kept in {request.out}" if request.keep_failed else "nothing was written"
        raise ParityError(f"parity failed ({where}): " + "; ".join(failures))
    return ExportOutcome(manifest, request.out, notes)


def _check_compressed(exporter: Exporter, artifact: ExportedArtifact, compression: Optional[Compression],
                      allow_float_fallback: bool) -> str:
    """Refuse a compressed precision that compressed no layer of the tower (NothingCompressedError,
    before parity runs) unless the user allowed the float fallback: then the line that says so."""
    if compression is None or not compression.nothing_compressed:
        return ""
    what = f"{artifact.target} {artifact.precision} {artifact.component} tower"
    if compression.compressible:
        found = (f"the accuracy gate kept all {compression.compressible} compressible layers float"
                 + (f" ({compression.best})" if compression.best else ""))
    else:
        found = f"{artifact.target} {artifact.precision} finds no layer to compress in this tower"
    if allow_float_fallback:
        return f"{what}: {found}; shipped float as --allow-float-fallback asks"
    # --max-drop loosens the agreement floor only: offered unless the gate's candidates were
    # measured to miss the cosine floor.
    fixes = ["a looser --max-drop (e.g. 0.05)"] if compression.compressible and compression.max_drop_helps is not False else []
    fixes += [f"--precision {p}" for p in ("int8w",) if p != artifact.precision and p in exporter.precisions]
    fixes.append("--allow-float-fallback to ship the float tower (the summary says so)")
    raise NothingCompressedError(
        f"{what}: {found}, so the artifact would be a float tower named {artifact.precision}; nothing was "
        f"written; try {', or '.join(fixes)}"
    )


def data_splits(calibration: "Optional[object]", spec: Optional[ModelSpec] = None,
                components: tuple[str, ...] = ()) -> dict:
    """The manifest's record of the three disjoint data splits: what int8 calibrates on (the
    user's `--calib` data when given, else the bundled calibration split), what the int8 accuracy
    gate measures on, and the held-out parity split every artifact is judged on. Each holds its
    source, photo / image / text counts and a content hash. Without `--calib`, a tower of `spec`
    whose `quantize_` plan carries its own data calibrates on that instead, at the plan's
    precision: `quantize_calibration` records it per tower."""
    from edgevl.calibration.datasets import load_calibration
    from edgevl.calibration.samples import split_record

    splits = {
        "calibration": calibration.record() if calibration is not None else split_record("calibration"),
        "gate": split_record("gate"),
        "parity": split_record("parity"),
    }
    if calibration is None and spec is not None:
        planned = {}
        for component in components:
            tower = spec.tower(component)
            config, data = getattr(tower, "quant_config", None), getattr(tower, "calibration", None)
            if config is not None and data is not None:
                planned[component] = {"precision": config.precision, **load_calibration(data).record()}
        if planned:
            splits["quantize_calibration"] = planned
    return splits


def _os_reason(exc: OSError) -> str:
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" on {exc.filename}" if exc.filename else ""
    return f"{reason}{f' ({name})' if name else ''}{where}"


def _relative_paths(value: Any, stage: Path) -> Any:
    """Passes name the files they wrote by their path in the staging folder, which is renamed
    into place: the manifest names them relative to the export folder."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, stage) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_paths(v, stage) for v in value]
    if isinstance(value, (str, Path)) and Path(value).is_absolute() and Path(value).is_relative_to(stage):
        return Path(value).relative_to(stage).as_posix()
    return value


def _entry(artifact: ExportedArtifact, stage: Path, verified: str, parity: dict,
           compression: Optional[Compression]) -> ArtifactEntry:
    files = [f for f in artifact.files if f.exists()]
    extra = {
        "files": [str(f.relative_to(stage)) for f in files],
        "unfused_blocks": artifact.unfused_blocks,
        "passes": _relative_paths(artifact.passes, stage),
    }
    if compression is not None:
        extra["compression"] = compression.to_json(float_fallback=compression.nothing_compressed)
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
