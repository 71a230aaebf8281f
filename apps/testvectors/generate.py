"""Shared test vectors for every app, computed by edgevl's PyTorch reference of the embedded
default model (effnet-minilm): three bundled real photos (their resized, center-cropped RGB bytes,
checks on the normalised tensor, their embeddings), a few texts (token ids, embeddings) and the
zero-shot ranking of each photo over the labels. The Python runtime library, the browser page
and the Swift package test against this one file; tests/apps/test_testvectors.py regenerates it
and compares, so it cannot go stale.

    .venv/bin/python apps/testvectors/generate.py          # rewrites apps/testvectors/default.json
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("default.json")
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's bundled data folder
LABELS = ("cat", "dog", "car", "coffee", "rocket")
TEMPLATE = "a photo of a {}."
# The last caption is longer than the default model's 32-token context: it checks truncation.
CAPTIONS = ("A ginger cat lying on a rug.", "A space rocket on its launch pad, ready for lift-off!",
            "A tabby cat with green eyes and long white whiskers looks straight at the camera from a "
            "warm living room, while a cup of coffee, a toy car and a small model rocket sit on the "
            "wooden table behind it.")
SAMPLES = 24  # tensor values recorded per photo, at seeded positions
# Pillow's resampling on a small patch of the first photo, down and up, for ports of it that
# cannot decode the photos themselves (the Swift package's tests).
PATCH = (120, 80, 157, 109)  # left, top, right, bottom: 37 x 29 pixels
RESAMPLE_SIZES = ((16, 21), (53, 41))


def _floats(values: np.ndarray) -> list[float]:
    return [round(float(v), 7) for v in np.asarray(values, dtype=np.float64).ravel()]


def resample_checks(photo: Path) -> dict:
    from PIL import Image

    with Image.open(photo) as im:
        patch = im.convert("RGB").crop(PATCH)
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}
    encode = lambda im: base64.b64encode(np.asarray(im, dtype=np.uint8).tobytes()).decode()  # noqa: E731
    return {
        "source_size": list(patch.size), "source_rgb_base64": encode(patch),
        "outputs": [{"interpolation": name, "size": list(size), "rgb_base64": encode(patch.resize(size, flt))}
                    for name, flt in filters.items() for size in RESAMPLE_SIZES],
    }


def build() -> dict:
    import skimage
    from PIL import Image

    import edgevl
    from edgevl.preprocess import preprocess_images

    spec = edgevl.load()
    config = spec.preprocess
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    data = Path(skimage.__file__).parent / "data"
    images = []
    for name in PHOTOS:
        with Image.open(data / name) as im:
            tensor = preprocess_images([im], config)[0]
        # The tensor is an affine map of the cropped uint8 pixels: invert it and check the bytes
        # reproduce the tensor exactly, so the bytes stand for the reference's preprocessing.
        crop = np.rint((tensor.transpose(1, 2, 0) * std + mean) * 255.0).astype(np.uint8)
        again = ((crop.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(2, 0, 1)
        if not np.array_equal(again, tensor):
            raise RuntimeError(f"{name}: the normalised tensor is not an affine map of uint8 pixels")
        positions = np.random.default_rng(0).integers(0, [3, config.crop, config.crop], size=(SAMPLES, 3))
        images.append({
            "file": f"skimage/data/{name}",
            "sha256": hashlib.sha256((data / name).read_bytes()).hexdigest(),
            "crop_rgb_base64": base64.b64encode(crop.tobytes()).decode(),
            "crop_shape": list(crop.shape),
            "tensor_channel_sums": _floats(tensor.astype(np.float64).sum(axis=(1, 2))),
            "tensor_samples": [[int(c), int(y), int(x), round(float(tensor[c, y, x]), 7)] for c, y, x in positions],
            "tensor": tensor,
        })
    prompts = [TEMPLATE.format(label) for label in LABELS]
    texts = prompts + list(CAPTIONS)
    feeds = spec.tokenize(texts)
    text_emb = spec.text.forward_numpy(feeds)
    image_emb = spec.image.forward_numpy({"pixel_values": np.stack([im.pop("tensor") for im in images])})
    scores = image_emb.astype(np.float64) @ text_emb[: len(LABELS)].astype(np.float64).T
    for entry, emb, row in zip(images, image_emb, scores):
        order = np.argsort(-row, kind="stable")
        entry.update(embedding=_floats(emb), scores=_floats(row), ranking=[LABELS[i] for i in order])
    return {
        "about": "edgevl PyTorch reference of the default model; regenerate with apps/testvectors/generate.py",
        "model": "effnet-minilm",
        "edgevl_version": edgevl.__version__,
        "preprocess": config.to_json(),
        "template": TEMPLATE,
        "labels": list(LABELS),
        "images": images,
        "resample_checks": resample_checks(data / PHOTOS[0]),
        "texts": [
            {"text": text, "n_tokens": int(feeds["attention_mask"][i].sum()),
             "input_ids": feeds["input_ids"][i].tolist(),
             **({"attention_mask": feeds["attention_mask"][i].tolist()} if "attention_mask" in feeds else {}),
             "embedding": _floats(text_emb[i])}
            for i, text in enumerate(texts)
        ],
    }


def main() -> int:
    OUT.write_text(json.dumps(build(), separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
