"""`edgevl` command line. Nothing heavy is imported at module level: `edgevl --help` must not
import torch (optimum CLI habit); each command imports what it needs when it runs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, NoReturn, Optional, Sequence

from edgevl.compress.config import DEFAULT_PALETTE_TUNE_STEPS
from edgevl.compress.ort_graph import ONNX_FLAVORS

MODEL_HELP = {
    "effnet-minilm": "embedded default: EfficientNet-Lite0 image tower + all-MiniLM-L6-v2 text tower, "
    "real weights, aligned by a projection edgevl fits offline",
    "hf-clip": "any local Hugging Face CLIPModel / SiglipModel checkpoint folder (pass its path as MODEL)",
    "edgevl-student": "a folder written by `edgevl distill` (pass its path as MODEL)",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as ONE line, `edgevl: error: ...`, exit code 2
    (argparse's own form prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        hint = f"; see `{self.prog} --help`"
        self.exit(2, f"edgevl: error: {' '.join(message.split())}{hint}\n")


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"empty list {value!r}; give comma-separated names, e.g. onnx,openvino")
    return items


def _static_shapes(value: str) -> dict[str, int]:
    shapes: dict[str, int] = {}
    for item in value.split(","):
        name, _, size = (part.strip() for part in item.partition("="))
        if not name or not size.isdigit() or int(size) < 1:
            raise argparse.ArgumentTypeError(
                f"bad item {item!r}; use AXIS=N with N a positive integer, e.g. batch=1,seq=77"
            )
        if name in shapes:
            raise argparse.ArgumentTypeError(f"axis {name!r} is given twice; give each axis once")
        shapes[name] = int(size)
    return shapes


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; give a fraction in [0, 1), e.g. 0.01") from None
    if not 0.0 <= number < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1); give a fraction such as 0.01")
    return number


def _steps(value: str) -> int:
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a step count; give 0 (no tuning) or more, e.g. 400")
    return int(value)


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number; give seconds, e.g. 3") from None
    if not 0.0 < number <= 3600.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 3600] seconds; give e.g. 3")
    return number


def _tokens(value: str) -> object:
    from edgevl.compress.tokens_config import parse_tokens
    from edgevl.errors import InputError

    try:
        return parse_tokens(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--tokens {value!r}: ")) from None


def _batches(value: str) -> list[int]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or not all(v.isdigit() and 1 <= int(v) <= 1024 for v in items):
        raise argparse.ArgumentTypeError(f"bad batch sizes {value!r}; give comma-separated integers in 1..1024, e.g. 1,8")
    return sorted({int(v) for v in items})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgevl",
        description="Deploy vision-language models on device: export with fused attention, verify on real data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    export = sub.add_parser(
        "export",
        help="export a model's towers to one or more targets and verify them",
        description="Export each tower (image, text) to every target and precision, verify each artifact "
        "against the PyTorch reference on real photos and captions, and write OUT/manifest.json. "
        "Exit codes: 0 ok; 2 bad input, a missing SDK, an attention block not fused, or output not writable; "
        "3 a compressed precision compressed no layer of a tower (refused before parity runs) or parity failed.",
    )
    export.add_argument("model", nargs="?", default=None,
                        help="registered model name (see `edgevl models`) or a checkpoint folder; default: effnet-minilm")
    export.add_argument("--target", type=_csv, default=("onnx",), help="comma-separated targets (see `edgevl targets`); default: onnx")
    export.add_argument("--precision", type=_csv, default=("fp32",), help="comma-separated precisions, e.g. fp32,int8; default: fp32")
    export.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty unless --force)")
    export.add_argument("--force", action="store_true", help="replace an output folder that holds an earlier edgevl export (never a folder of other files)")
    export.add_argument("--components", type=_csv, default=("image", "text"), help="towers to export; default: image,text")
    export.add_argument("--onnx-flavor", choices=ONNX_FLAVORS, default="standard",
                        help="standard (default): ai.onnx ops only, attention as `Attention` (opset 23), int8 as "
                             "MatMulInteger or QuantizeLinear/DequantizeLinear, int8w/int4w as blocked DequantizeLinear + MatMul; ort: may "
                             "hold ONNX Runtime's com.microsoft ops (MultiHeadAttention, QAttention, "
                             "EmbedLayerNormalization, MatMulNBits, GatherBlockQuantized)")
    export.add_argument("--coreml-input", choices=("image", "tensor"), default="image",
                        help="Core ML image tower input: a Core ML image (RGB 0-255, normalisation folded in) "
                             "or the normalised float tensor; default: image")
    export.add_argument("--palette-tune-steps", type=_steps, default=DEFAULT_PALETTE_TUNE_STEPS, metavar="N",
                        help="coreml palettize4: fine-tuning steps around the 4-bit palettes (6-bit for the most "
                             "damaging layers, within 0.3x of fp16) when the tower misses its row without them "
                             f"(0: none); default: {DEFAULT_PALETTE_TUNE_STEPS}")
    export.add_argument("--trt-attention", choices=("native", "plugin"), default="native",
                        help="tensorrt target: native (standard Attention, TensorRT >= 10.14 IAttention; default) or "
                        "plugin (also writes a plugin-node graph for older TensorRT; that graph was never loaded by "
                        "TensorRT here: parity runs the native graph)")
    export.add_argument("--allow-unfused", action="store_true", help="do not fail when an attention block is not fused")
    export.add_argument("--allow-pickle", action="store_true",
                        help="accept a pickle checkpoint (pytorch_model.bin), loaded with torch.load(weights_only=True)")
    export.add_argument("--static-shapes", type=_static_shapes, default=None, metavar="AXIS=N,...",
                        help="fix dynamic axes, e.g. batch=1,seq=77 (for NPUs)")
    export.add_argument("--calib", default=None, metavar="DATA",
                        help="calibration data for int8: an image folder or a JSON-lines caption file; default: the bundled calibration split")
    export.add_argument("--max-drop", type=_fraction, default=0.01,
                        help="quantized precisions: the largest zero-shot top-1 agreement drop you accept, in the accuracy "
                        "gate and in the parity verdict (the cosine floors stay), and for --tokens r=auto / keep=auto the largest "
                        "drop against the unreduced tower; default 0.01")
    export.add_argument("--cpu-isa", choices=("any", "vnni"), default="any",
                        help="int8 dot products the deployment CPU computes exactly: any (default; 7-bit "
                        "weights, same numbers on every x86 CPU) or vnni (AVX512-VNNI / AVX-VNNI / AMX: full 8-bit weights)")
    export.add_argument("--speed-guard", action="store_true",
                        help="time int8 against float on this machine and keep float what is not faster "
                        "(makes the artifact depend on the building machine; timings go to the manifest)")
    export.add_argument("--tokens", type=_tokens, default=None, metavar="METHOD:KEY=V",
                        help="ViT image towers (CLIP, SigLIP, ViT students): fewer tokens per layer, counts fixed at "
                        "export. tome:r=N merges N tokens per layer (add ,schedule=decreasing for 1.5N falling to "
                        "0.5N); evit:keep=F keeps the F most attended patch tokens at 1/4, 1/2, 3/4 depth and fuses "
                        "the rest (class-token towers only); r=auto / keep=auto: the largest reduction whose zero-shot "
                        "agreement with the unreduced tower drops by at most --max-drop on the gate split")
    export.add_argument("--keep-failed", action="store_true", help="publish the artifacts even if parity fails (exit code stays 3)")
    export.add_argument("--allow-float-fallback", action="store_true",
                        help="compressed precisions: when the accuracy gate keeps every layer of a tower float, ship "
                        "that float tower under the precision's name instead of failing with exit 3; its summary "
                        "line says so (0/N layers, float fallback) and the manifest records float_fallback")
    export.add_argument("--profile", type=_seconds, nargs="?", const=3.0, default=None, metavar="S",
                        help="after the export, run `edgevl profile OUT --budget S` (default 3 s per artifact) "
                        "and fold its summary into manifest.json")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    profile = sub.add_parser(
        "profile",
        help="time, size and accuracy of every artifact of an export, against this machine's peak",
        description="Measure every artifact of an `edgevl export` folder that can run here, each in its own "
        "process (load time, latency p50/p90/p99, throughput, peak memory, FLOP/s against this machine's GEMM "
        "peak), and write profile.json, report.md and report.html. Exit codes: 0 ok, 2 bad input.",
    )
    profile.add_argument("folder", type=Path, metavar="DIR", help="an export folder (holds manifest.json)")
    profile.add_argument("--budget", type=_seconds, default=3.0, metavar="S",
                         help="seconds of timed runs per artifact, shared by its batch sizes and text lengths; default 3")
    profile.add_argument("--out", type=Path, default=None, help="where the reports go; default: DIR")
    profile.add_argument("--batch", type=_batches, default=[1, 8], metavar="N,...",
                         help="batch sizes timed; default 1,8 (batch 1 is always timed)")
    profile.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    from edgevl.distill.command import add_distill_parser

    add_distill_parser(sub)
    sub.add_parser("models", help="list registered models")
    sub.add_parser("targets", help="list targets and whether their SDK is installed")
    return parser


def _cmd_models() -> int:
    from edgevl.registry import MODELS

    for name in MODELS.names():
        print(f"{name:16s} {MODEL_HELP.get(name, '')}")
    return 0


def _cmd_targets() -> int:
    from edgevl.registry import EXPORTERS

    for name in EXPORTERS.names():
        exporter = EXPORTERS.get(name)()
        missing = exporter.missing_modules()
        state = "installed" if not missing else f"missing {', '.join(missing)}: pip install 'edgevl[{exporter.extra}]'"
        print(f"{name:10s} precisions {','.join(exporter.precisions):28s} {state}")
        if getattr(exporter, "verification", ""):
            print(f"{'':10s} {exporter.verification}")
    return 0


@contextlib.contextmanager
def _quiet_libraries(quiet: bool) -> Iterator[None]:
    """With -q, the libraries edgevl drives print nothing either: transformers' and the Hub's
    progress bars and log lines, tqdm bars. Their switches are restored afterwards."""
    if not quiet:
        yield
        return
    switches = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    saved = {k: os.environ.get(k) for k in switches}
    os.environ.update(switches)
    if "transformers" in sys.modules:  # already imported: its settings were read at import
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cmd_export(args: argparse.Namespace) -> int:
    from edgevl.manifest import summary_line
    from edgevl.pipeline import ExportRequest, run_export
    from edgevl.progress import Progress

    request = ExportRequest(
        model=args.model,
        targets=args.target,
        precisions=args.precision,
        out=args.out,
        force=args.force,
        components=args.components,
        onnx_flavor=args.onnx_flavor,
        allow_unfused=args.allow_unfused,
        allow_pickle=args.allow_pickle,
        keep_failed=args.keep_failed,
        static_shapes=args.static_shapes,
        calibration=args.calib,
        max_drop=args.max_drop,
        cpu_isa=args.cpu_isa,
        speed_guard=args.speed_guard,
        coreml_input=args.coreml_input,
        palette_tune_steps=args.palette_tune_steps,
        trt_attention=args.trt_attention,
        allow_float_fallback=args.allow_float_fallback,
        tokens=args.tokens,
    )
    with _quiet_libraries(args.quiet):
        outcome = run_export(request, Progress(enabled=not args.quiet))
    for a in outcome.manifest.artifacts:
        print(summary_line(a))
    for key, note in outcome.notes.items():
        print(f"{key}: {note}")
    if args.profile is not None:
        from edgevl.profile.run import profile_into_export
        from edgevl.profile.tables import terminal_table

        profile = profile_into_export(outcome.out, args.profile, [1, 8], Progress(enabled=not args.quiet))
        print(terminal_table(profile))
        print(f"wrote {outcome.out / 'profile.json'}, report.md, report.html")
    print(f"wrote {outcome.out / 'manifest.json'}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from edgevl.profile.run import (
        HTML_NAME, MARKDOWN_NAME, PROFILE_NAME, check_out, profile_export, read_manifest, report_files, write_outputs,
    )
    from edgevl.profile.tables import terminal_table
    from edgevl.progress import Progress

    manifest = read_manifest(args.folder)
    out = args.out if args.out is not None else args.folder
    check_out(out)
    batches = sorted({1, *args.batch})
    profile = profile_export(args.folder, manifest, args.budget, batches, Progress(enabled=not args.quiet))
    write_outputs(out, report_files(profile))
    print(terminal_table(profile))
    print(f"wrote {out / PROFILE_NAME}, {out / MARKDOWN_NAME}, {out / HTML_NAME}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad command line already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    from edgevl.errors import EdgevlError

    try:
        if args.command == "models":
            return _cmd_models()
        if args.command == "targets":
            return _cmd_targets()
        if args.command == "profile":
            return _cmd_profile(args)
        if args.command == "distill":
            from edgevl.distill.command import cmd_distill

            return cmd_distill(args)
        return _cmd_export(args)
    except EdgevlError as exc:
        print(f"edgevl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgevl: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
