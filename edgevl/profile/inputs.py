"""The feeds an artifact is timed on, built from the export folder alone (torch-free).

image: float32 [batch, 3, crop, crop] with crop from preprocess.json, seeded normal values (the
       range of normalised pixels; a float or int8 graph's work does not depend on the values).
text:  real captions tokenized with the export's own tokenizer, padded to `seq` tokens, as the
       preprocessing feeds the text tower; without a tokenizer, seeded ids below 1000, full mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgevl.preprocess import PreprocessConfig

CAPTIONS = (
    "a photo of a cat sleeping on a sofa",
    "two people riding bicycles along a river at sunset",
    "a plate of pasta with tomato sauce and basil",
    "an old stone bridge over a mountain stream",
)
SHORT_SEQ = 16


@dataclass(frozen=True)
class ExportInputs:
    """What the export folder says about its towers' inputs."""

    preprocess: PreprocessConfig
    tokenizer_json: Optional[Path]

    @classmethod
    def from_manifest(cls, folder: Path, manifest: dict) -> "ExportInputs":
        preprocess = PreprocessConfig.load(folder / str(manifest.get("preprocess", "preprocess.json")))
        tokenizer = manifest.get("tokenizer")
        tokenizer_json = folder / str(tokenizer) / "tokenizer.json" if tokenizer else None
        if tokenizer_json is not None and not tokenizer_json.is_file():
            tokenizer_json = None
        return cls(preprocess, tokenizer_json)

    def text_lengths(self) -> list[int]:
        """The preprocessing's context length and a short caption's length, longest first."""
        context = self.preprocess.context_length
        return sorted({context, min(SHORT_SEQ, context)}, reverse=True)

    def feeds(self, component: str, batch: int, seq: Optional[int] = None) -> dict[str, np.ndarray]:
        if component == "image":
            crop = self.preprocess.crop
            rng = np.random.default_rng(0)
            return {"pixel_values": rng.standard_normal((batch, 3, crop, crop), dtype=np.float32)}
        seq = seq or self.preprocess.context_length
        texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
        if self.tokenizer_json is not None:
            from edgevl.tokenize import TextTokenizer

            tok = TextTokenizer(self.tokenizer_json, seq, self.preprocess.pad_token_id, self.preprocess.text_inputs)
            return tok(texts)
        rng = np.random.default_rng(0)
        made = {"input_ids": rng.integers(1, 1000, (batch, seq), dtype=np.int64),
                "attention_mask": np.ones((batch, seq), dtype=np.int64)}
        return {name: made[name] for name in self.preprocess.text_inputs if name in made}


def bind(feeds: dict[str, np.ndarray], input_names: list[str], component: str) -> dict[str, np.ndarray]:
    """Feeds under the loaded model's input names: the image tower's one input takes the pixels
    whatever its name; text inputs are matched by name."""
    if component == "image" and len(input_names) == 1:
        return {input_names[0]: next(iter(feeds.values()))}
    return {name: feeds[name] for name in input_names if name in feeds}
