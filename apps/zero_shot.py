"""Zero-shot image classification with an edgevl export, using runtimes only (no torch).

    python apps/zero_shot.py OUT_DIR photo.jpg --labels cat,dog,car,coffee [--target onnx]

It reads OUT_DIR/manifest.json, runs the image and text artifacts of one target/precision with
that target's runtime, preprocesses with OUT_DIR/preprocess.json and tokenises with
OUT_DIR/tokenizer/tokenizer.json: exactly what an app on the device does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgevl.preprocess import PreprocessConfig, preprocess_images
from edgevl.registry import RUNTIMES
from edgevl.tokenize import TextTokenizer

TARGET_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def _artifact(manifest: dict, target: str, precision: str, component: str) -> dict:
    for entry in manifest["artifacts"]:
        if (entry["target"], entry["precision"], entry["component"]) == (target, precision, component):
            return entry
    available = sorted({(a["target"], a["precision"]) for a in manifest["artifacts"]})
    raise SystemExit(f"zero_shot: no {component} artifact for {target}/{precision}; the export has {available}")


def classify(export_dir: Path, image_path: Path, labels: list[str], target: str = "onnx",
             precision: str = "fp32", template: str = "a photo of a {}.") -> list[tuple[str, float]]:
    from PIL import Image

    manifest = json.loads((export_dir / "manifest.json").read_text())
    preprocess = PreprocessConfig.load(export_dir / "preprocess.json")
    tokenizer_json = export_dir / "tokenizer" / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise SystemExit(f"zero_shot: {export_dir} has no tokenizer/tokenizer.json; this model shipped none")
    tokenize = TextTokenizer(tokenizer_json, preprocess.context_length, preprocess.pad_token_id, preprocess.text_inputs)
    runtime = RUNTIMES.get(TARGET_RUNTIME[target])()
    embeddings = {}
    for component in ("image", "text"):
        entry = _artifact(manifest, target, precision, component)
        model = runtime.load(export_dir / entry["path"], entry.get("runtime_options", {}))
        if component == "image":
            with Image.open(image_path) as im:
                feeds = {"pixel_values": preprocess_images([im], preprocess)}
        else:
            feeds = tokenize([template.format(label) for label in labels])
        embeddings[component] = model.run(feeds)[model.output_names[0]]
    scores = (embeddings["image"] @ embeddings["text"].T)[0]
    order = np.argsort(-scores)
    return [(labels[i], float(scores[i])) for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--labels", required=True, help="comma-separated labels")
    parser.add_argument("--target", default="onnx", choices=sorted(TARGET_RUNTIME))
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    for label, score in classify(args.export_dir, args.image, labels, args.target, args.precision):
        print(f"{score:7.4f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
