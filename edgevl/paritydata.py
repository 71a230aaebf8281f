"""A bundled data split (parity or gate) turned into tower inputs, and the PyTorch reference
outputs on it. Parity judges artifacts on the held-out parity split; the int8 accuracy gate
measures on the gate split (`build_split_data(spec, "gate")`), so what verifies an artifact was
never seen while making it (`edgevl/calibration/samples.py` keeps the splits disjoint)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from edgevl.models.spec import Component, ModelSpec, random_token_feeds
from edgevl.parity import Agreement, ParityResult, agreement, check_parity, tie_bands, zero_shot_scores
from edgevl.preprocess import preprocess_images
from edgevl.tolerances import Tolerance

RANDOM_TEXTS = 24
# Seeds of the random token ids used when a checkpoint ships no tokenizer: one per split, and
# none equal to the calibration set's default seed (0), so no two of them share a text row.
RANDOM_TEXT_SEEDS = {"parity": 101, "gate": 202, "given": 303}


@dataclass
class ParityData:
    """Inputs for both towers and the reference embeddings on them.

    The text feeds hold the captions first and the `n_prompts` label prompts last; zero-shot
    agreement ranks the label prompts for every photo.
    """

    image_feeds: dict[str, np.ndarray]
    text_feeds: dict[str, np.ndarray]
    n_prompts: int
    text_source: str
    image_names: list[str]
    reference: dict[str, np.ndarray]  # component -> embeddings
    split: str = "parity"

    def feeds(self, component: Component) -> dict[str, np.ndarray]:
        return self.image_feeds if component == "image" else self.text_feeds

    def first_images(self, n: int) -> "ParityData":
        """The same data with only the first `n` images (their reference embeddings too); the
        texts are kept."""
        return replace(self, image_feeds={k: v[:n] for k, v in self.image_feeds.items()},
                       image_names=self.image_names[:n],
                       reference={**self.reference, "image": self.reference["image"][:n]})

    def describe(self) -> dict:
        return {
            "split": self.split,
            "images": len(self.image_names),
            "texts": int(next(iter(self.text_feeds.values())).shape[0]),
            "label_prompts": self.n_prompts,
            "text_source": self.text_source,
        }


def build_parity_data(
    spec: ModelSpec, parity_set: Optional[object] = None, static_seq: Optional[int] = None,
    split: str = "parity",
) -> ParityData:
    """Preprocess the parity set (default: the bundled held-out parity split; `split="gate"` the
    gate split) and run the reference on it. With `static_seq` (an artifact exported with a fixed
    sequence length) texts are padded or cut to that length first, so the reference sees exactly
    what the artifact sees. A bundled split's data is computed once per spec."""
    if parity_set is not None:
        return _build_parity_data(spec, parity_set, static_seq)
    return build_split_data(spec, split, static_seq)


def build_split_data(spec: ModelSpec, split: str = "gate", static_seq: Optional[int] = None) -> ParityData:
    """One bundled split ("gate" or "parity") as tower inputs with the reference outputs on
    them, cached on `spec.derived` (the int8 gate measures each tower on the same data)."""
    from edgevl.calibration.samples import bundled_split

    if split not in ("gate", "parity"):
        raise ValueError(f"split {split!r} has no reference data; use 'gate' or 'parity'")
    key = ("split_data", split, static_seq)
    if key not in spec.derived:
        spec.derived[key] = _build_parity_data(spec, bundled_split(split), static_seq)
    return spec.derived[key]


def _build_parity_data(spec: ModelSpec, ps: object, static_seq: Optional[int]) -> ParityData:
    split = getattr(ps, "split", "given")
    image_feeds = {"pixel_values": preprocess_images(ps.images, spec.preprocess)}
    if spec.tokenize is not None:
        text_feeds = spec.tokenize(ps.texts)
        n_prompts, source = len(ps.prompts), "real captions and label prompts"
    else:
        # No tokenizer shipped: the text tower still runs on every code path, on random ids.
        text_feeds = random_token_feeds(
            RANDOM_TEXTS, spec.preprocess.context_length, spec.vocab_size or 1000,
            spec.special_token_ids, spec.preprocess.text_inputs,
            seed=RANDOM_TEXT_SEEDS.get(split, RANDOM_TEXT_SEEDS["given"]),
        )
        n_prompts, source = RANDOM_TEXTS, "random token ids (the checkpoint has no tokenizer)"
    if static_seq is not None:
        pad = spec.preprocess.pad_token_id
        text_feeds = {name: _fit_length(v, static_seq, pad if name == "input_ids" else 0)
                      for name, v in text_feeds.items()}
    reference = {
        "image": spec.image.forward_numpy(image_feeds),
        "text": spec.text.forward_numpy(text_feeds),
    }
    return ParityData(image_feeds, text_feeds, n_prompts, source, list(ps.image_names), reference, split)


def _fit_length(values: np.ndarray, seq: int, pad: int) -> np.ndarray:
    if values.shape[1] >= seq:
        return np.ascontiguousarray(values[:, :seq])
    extra = np.full((values.shape[0], seq - values.shape[1]), pad, dtype=values.dtype)
    return np.concatenate([values, extra], axis=1)


def run_batched(run, feeds: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    """Run in chunks of exactly `batch` rows (a static-batch artifact takes no other size): the
    last chunk is filled up by repeating its last row, and the filler outputs are dropped."""
    n = next(iter(feeds.values())).shape[0]
    outs = []
    for i in range(0, n, batch):
        chunk = {k: v[i : i + batch] for k, v in feeds.items()}
        rows = next(iter(chunk.values())).shape[0]
        if rows < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - rows, axis=0)]) for k, v in chunk.items()}
        outs.append(run(chunk)[:rows])
    return np.concatenate(outs, axis=0)


def verify_outputs(
    data: ParityData, component: Component, candidate: np.ndarray, tolerance: Tolerance, output_name: str
) -> ParityResult:
    """Figures for one tower's artifact output, including zero-shot agreement against the
    reference of the other tower (ties judged at the row's cosine floor, `parity.tie_bands`)."""
    top1 = None
    if candidate.shape == data.reference[component].shape:
        top1 = zero_shot_agreement(data, component, data.reference[component], candidate, tolerance.cosine_min)
    return check_parity(data.reference[component], candidate, tolerance, top1, output_name)


def zero_shot_agreement(
    data: ParityData, component: Component, reference: np.ndarray, candidate: np.ndarray, cosine_floor: float
) -> Optional[Agreement]:
    """Agreement of `candidate` (this tower's outputs on `data`) with `reference` (the same
    tower's outputs that it is judged against): the photos rank the label prompts, the other
    tower's side taken from the PyTorch reference. None when the towers' widths differ (no
    zero-shot task) or there are no label prompts. The parity check and the accuracy gate both
    judge through this function, so the gate measures exactly what parity will."""
    n = data.n_prompts
    if n == 0 or data.reference["image"].shape[-1] != data.reference["text"].shape[-1]:
        return None
    if component == "image":
        prompts = data.reference["text"][-n:]
        bands = tie_bands(reference, prompts, cosine_floor, moved="queries")
        return agreement(zero_shot_scores(reference, prompts), zero_shot_scores(candidate, prompts), bands)
    images = data.reference["image"]
    bands = tie_bands(images, reference[-n:], cosine_floor, moved="labels")
    return agreement(zero_shot_scores(images, reference[-n:]), zero_shot_scores(images, candidate[-n:]), bands)
