"""Zero-shot classification on a Jetson (or any NVIDIA GPU) with the TensorRT engines of an
`edgevl export --target tensorrt` folder: an image file, or frames from a camera (OpenCV; a
number for /dev/videoN or a GStreamer pipeline string).

    python apps/jetson/zero_shot_trt.py OUT image.jpg --labels cat,dog,car --precision fp16
    python apps/jetson/zero_shot_trt.py OUT --camera 0 --labels cat,dog,car

Preprocessing and tokenizer come from apps/runtime (`edgevl_runtime`, no torch needed for them),
read from the export's preprocess.json and tokenizer/; the engines are those `trtexec.sh` builds
next to each tower's engine-ready ONNX (`<tower>_encoder.<precision>.engine`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from edgevl_runtime.errors import AppError, BadInput, NoArtifact
from edgevl_runtime.manifest import read_manifest
from edgevl_runtime.preprocess import Preprocess, pixel_values
from edgevl_runtime.tokenize import Tokenizer

TEMPLATE = "a photo of a {}."
BATCH = 16  # the engines' largest profile batch (edgevl's exporters/trtexec.py MAX_BATCH)


@dataclass(frozen=True)
class Plan:
    """What the app runs: each tower's engine (and the ONNX it was built from)."""

    folder: Path
    precision: str
    onnx: dict[str, Path]
    engines: dict[str, Path]

    def missing_engines(self) -> list[Path]:
        return [p for p in self.engines.values() if not p.is_file()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zero_shot_trt", description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("image", type=Path, nargs="?", help="an image file (or use --camera)")
    parser.add_argument("--camera", default=None, help="camera index or GStreamer pipeline (OpenCV)")
    parser.add_argument("--frames", type=int, default=0, help="with --camera: stop after N frames (0 = until Ctrl-C)")
    parser.add_argument("--labels", required=True, help="comma-separated labels, e.g. cat,dog,car")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--template", default=TEMPLATE)
    args = parser.parse_args(argv)
    if (args.image is None) == (args.camera is None):
        parser.error("give an image file or --camera, not both")
    args.labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(args.labels) < 2 or len(set(args.labels)) != len(args.labels):
        parser.error("--labels: give two or more distinct comma-separated labels")
    return args


def plan(folder: Path, precision: str) -> Plan:
    """The export's tensorrt artifacts at `precision` for both towers, from manifest.json."""
    manifest = read_manifest(folder)
    found = {a["component"]: folder / a["path"] for a in manifest.get("artifacts", [])
             if a.get("target") == "tensorrt" and a.get("precision") == precision}
    missing = [c for c in ("image", "text") if c not in found]
    if missing:
        raise NoArtifact(f"{folder} has no tensorrt {precision} artifact for the {', '.join(missing)} tower; "
                         f"export with: edgevl export --target tensorrt --precision {precision}")
    engines = {c: p.with_name(p.name.removesuffix(".onnx") + ".engine") for c, p in found.items()}
    return Plan(folder, precision, found, engines)


def check_engines(p: Plan) -> None:
    missing = p.missing_engines()
    if missing:
        scripts = sorted({str(m.with_name(m.name.removesuffix(".engine") + ".trtexec.sh")) for m in missing})
        raise NoArtifact(f"engine {missing[0]} is not built; on the device run: sh {scripts[0]}")


def image_feeds(images: Sequence[object], config: Preprocess) -> dict[str, np.ndarray]:
    """Image paths / Pillow images -> the image engine's feeds."""
    return {"pixel_values": pixel_values(images, config)}


def frame_to_image(frame_bgr: np.ndarray) -> object:
    """An OpenCV BGR frame -> an RGB Pillow image (the preprocessing's input)."""
    from PIL import Image

    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise BadInput(f"camera frame of shape {frame_bgr.shape}: expected height x width x 3 (BGR)")
    return Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))


def embed(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run in batches of at most BATCH rows; rows L2-normalised."""
    n = next(iter(feeds.values())).shape[0]
    out = np.concatenate([run({k: v[i:i + BATCH] for k, v in feeds.items()}) for i in range(0, n, BATCH)])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def rank(image_emb: np.ndarray, text_emb: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
    scores = image_emb[0].astype(np.float64) @ text_emb.astype(np.float64).T
    order = np.argsort(-scores, kind="stable")
    return [(labels[i], float(scores[i])) for i in order]


def camera_frames(source: str, limit: int) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise BadInput(f"camera {source!r} cannot be opened; check the index or the GStreamer pipeline")
    count = 0
    try:
        while limit <= 0 or count < limit:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            yield frame
    finally:
        cap.release()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        p = plan(args.export_dir, args.precision)
        config = Preprocess.load(args.export_dir / "preprocess.json")
        tokenizer = Tokenizer(args.export_dir / "tokenizer" / "tokenizer.json", config.context_length,
                              config.pad_token_id, config.text_inputs)
        check_engines(p)
        from trt_engine import Engine

        image_engine, text_engine = Engine(p.engines["image"]), Engine(p.engines["text"])
        texts = embed(text_engine, tokenizer([args.template.format(label) for label in args.labels]))
        if args.image is not None:
            frames: Iterator[object] = iter([args.image])
        else:
            frames = (frame_to_image(f) for f in camera_frames(args.camera, args.frames))
        for image in frames:
            ranking = rank(embed(image_engine, image_feeds([image], config)), texts, args.labels)
            print("  ".join(f"{label} {score:.3f}" for label, score in ranking[:3]), flush=True)
    except AppError as exc:
        print(f"zero_shot_trt: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
