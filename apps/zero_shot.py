"""Zero-shot image classification with an edgevl export and no torch: a thin example over the
runtime library in apps/runtime (`pip install -e 'apps/runtime[onnx]'`), which reads the export's
manifest, preprocess.json and tokenizer exactly as an app on the device does.

    python apps/zero_shot.py OUT_DIR photo.jpg --labels cat,dog,car,coffee [--target onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgevl_runtime import AppError, EdgeModel, classify
from edgevl_runtime.classify import parse_labels

TARGET_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--labels", required=True, help="comma-separated labels")
    parser.add_argument("--target", default="onnx", choices=sorted(TARGET_RUNTIME))
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    try:
        model = EdgeModel(args.export_dir, runtime=TARGET_RUNTIME[args.target], precision=args.precision)
        ranking = classify(model, [args.image], parse_labels(args.labels))[0]
    except AppError as exc:
        print(f"zero_shot: {exc}", file=sys.stderr)
        return 2
    for label, score in zip(ranking.labels, ranking.scores):
        print(f"{score:7.4f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
