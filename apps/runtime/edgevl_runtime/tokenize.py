"""Texts -> the text tower's inputs with the export's tokenizer/tokenizer.json (Hugging Face
`tokenizers`): truncated to preprocess.json's context_length (special tokens kept), padded with
its pad_token_id, int64."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgevl_runtime.errors import RefusedExport


class Tokenizer:
    def __init__(self, tokenizer_json: Path, context_length: int, pad_token_id: int,
                 input_names: Sequence[str] = ("input_ids", "attention_mask")) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        if not Path(tokenizer_json).is_file():
            raise RefusedExport(f"{tokenizer_json} is missing; the export's text tower needs its tokenizer/ folder")
        try:
            self._tok = HfTokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise RefusedExport(f"{tokenizer_json} cannot be read by tokenizers ({exc}); re-export") from None
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.input_names = tuple(input_names)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.full((len(texts), self.context_length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, enc in enumerate(self._tok.encode_batch(texts)):
            tokens = enc.ids[: self.context_length]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        return {name: feeds[name] for name in self.input_names}
