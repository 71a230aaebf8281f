"""Torch-free text tokenisation from a `tokenizer.json` (Hugging Face `tokenizers`), used by the
reference, the parity checks and the apps alike, so all three feed the text tower the same ids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


class TextTokenizer:
    """Texts -> `{"input_ids": int64 [n, L], "attention_mask": int64 [n, L]}` padded to L."""

    def __init__(
        self,
        tokenizer_json: Path,
        context_length: int,
        pad_token_id: int,
        input_names: Sequence[str] = ("input_ids", "attention_mask"),
    ) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.input_names = tuple(input_names)

    def vocabulary(self) -> list[str]:
        """The tokenizer's vocabulary entries as written in its `tokenizer.json`."""
        return list(self._tok.get_vocab())

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        n, length = len(texts), self.context_length
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        for row, enc in enumerate(self._tok.encode_batch(list(texts))):
            tokens = enc.ids[:length]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        return {name: feeds[name] for name in self.input_names}
