"""Core ML: `MLModel.predict` on macOS (verified "runtime"); on any other system edgevl's numpy
reference interpreter of the ML Program (`mil_interpreter`, verified "reference-interpreter").

Options (all optional):
    pad_token_id   the text tower's pad id: token ids shorter than the program's fixed length
                   are padded with it (and the attention mask with 0), as the tokenizer does.
    interpreter    True: use the reference interpreter even on macOS.
    image_input    the export's Core ML image input ({"scale", "bias", "channel_factor"}): the
                   image feed, a normalised tensor as for the other targets, is turned back into
                   RGB pixels 0-255, which the package's folded preprocessing normalises again.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from edgevl.errors import InputError
from edgevl.registry import register_runtime
from edgevl.runtimes.base import LoadedModel, Runtime


def _input_lengths(path: Path) -> dict[str, int]:
    """Fixed last-axis sizes of the package's inputs (from its description)."""
    from edgevl.runtimes.mil_interpreter import import_coremltools

    ct = import_coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    lengths = {}
    for feature in spec.description.input:
        array = feature.type.multiArrayType
        ranges = list(array.shapeRange.sizeRanges)
        if len(ranges) >= 2 and ranges[-1].lowerBound == ranges[-1].upperBound:
            lengths[feature.name] = int(ranges[-1].lowerBound)
        elif len(array.shape) >= 2 and not ranges:
            lengths[feature.name] = int(array.shape[-1])
    return lengths


# The numpy interpreter runs an image tower orders of magnitude slower than Core ML: it judges
# the parity split's first images only (the package photos' 55 views come first), so an export
# with the Tux Paint stamps costs what one without them did.
INTERPRETER_PARITY_IMAGES = 64

class _CoreMLModel(LoadedModel):
    def __init__(self, path: Path, options: dict[str, Any]) -> None:
        self._pad = options.get("pad_token_id")
        self._image = options.get("image_input")
        use_interpreter = bool(options.get("interpreter")) or platform.system() != "Darwin"
        self._lengths = _input_lengths(path)
        if use_interpreter:
            from edgevl.runtimes.mil_interpreter import load_interpreter

            self._interpreter = load_interpreter(path)
            self._model = None
            self.input_names = self._interpreter.input_names
            self.output_names = self._interpreter.output_names
            self.verified = "reference-interpreter"
            self.parity_images = INTERPRETER_PARITY_IMAGES
        else:
            import coremltools as ct

            self._interpreter = None
            self._model = ct.models.MLModel(str(path))
            spec = self._model.get_spec()
            self.input_names = [f.name for f in spec.description.input]
            self.output_names = [f.name for f in spec.description.output]
            self.verified = "runtime"

    def _fit(self, name: str, value: np.ndarray) -> np.ndarray:
        """Token ids and masks shorter than the program's length are padded (see module doc)."""
        length = self._lengths.get(name)
        if length is None or value.ndim != 2 or value.shape[1] == length or value.dtype.kind not in "iu":
            return value
        if value.shape[1] > length:
            raise InputError(f"input {name} has {value.shape[1]} tokens; the Core ML program takes at most {length}")
        if name == "input_ids" and self._pad is None:
            raise InputError(f"input {name} is shorter than {length} tokens and no pad_token_id was given")
        fill = self._pad if name == "input_ids" else 0
        extra = np.full((value.shape[0], length - value.shape[1]), fill, dtype=value.dtype)
        return np.concatenate([value, extra], axis=1)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(
                f"Core ML model needs inputs {', '.join(missing)}; it takes: {', '.join(self.input_names)}"
            )
        inputs = {n: self._fit(n, np.asarray(feeds[n])) for n in self.input_names}
        inputs = {n: v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(np.float32) for n, v in inputs.items()}
        if self._image is not None:
            name = self.input_names[0]
            inputs[name] = _pixels(inputs[name], self._image)
        if self._interpreter is not None:
            outputs = self._interpreter.run(inputs)
        elif self._image is not None:
            outputs = _predict_images(self._model, inputs, self.input_names[0], self.output_names)
        else:
            outputs = self._model.predict(inputs)
        return {n: np.asarray(outputs[n], dtype=np.float32) for n in self.output_names}


def _pixels(normalised: np.ndarray, image: dict[str, Any]) -> np.ndarray:
    """The RGB pixels [batch, 3, H, W] (0-255, float) a normalised image tensor came from:
    the inverse of `channel_factor_c * (scale * pixel + bias_c)`."""
    factor = np.asarray(image["channel_factor"], dtype=np.float64).reshape(1, 3, 1, 1)
    bias = np.asarray(image["bias"], dtype=np.float64).reshape(1, 3, 1, 1)
    return ((normalised / factor - bias) / float(image["scale"])).astype(np.float32)


def _predict_images(model: Any, inputs: dict[str, np.ndarray], name: str, outputs: list[str]) -> dict:
    """Core ML takes an image input as a PIL image, one per prediction."""
    from PIL import Image

    rows = []
    for pixels in inputs[name]:
        rgb = np.clip(np.round(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        rows.append(model.predict({name: Image.fromarray(rgb, "RGB")}))
    return {n: np.concatenate([np.asarray(r[n]) for r in rows], axis=0) for n in outputs}


@register_runtime("coreml")
class CoreMLRuntime(Runtime):
    name = "coreml"
    requires = ("coremltools",)
    extra = "coreml"

    def _load(self, path: Path, options: dict[str, Any]) -> LoadedModel:
        if path.suffix != ".mlpackage" or not path.is_dir():
            raise InputError(f"{path} is not a Core ML package; pass the .mlpackage folder")
        return _CoreMLModel(path, options)
