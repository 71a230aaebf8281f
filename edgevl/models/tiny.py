"""Small Hugging Face CLIP and SigLIP checkpoints trained on the bundled photos, for tests and
benchmarks of the checkpoint families users bring.

Random weights put every zero-shot score within a few 1e-3 of the others, so any rounding flips
the picks and agreement measures ties, not the artifact. A few hundred steps of contrastive
training (InfoNCE, both directions) on the bundled photos and their captions and label prompts
make the picks decisive, as a trained model's are. The training reads every split, the parity
split included: the checkpoint plays a trained model, and the int8 calibration and gate still
never see the parity split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

TEMPERATURE = 0.05


def word_tokenizer(folder: Path, bos: int, eos: int, pad: int, size: int) -> None:
    """Save a word-level tokenizer over the bundled photos' captions and prompts (ids below `size`, the
    special ids as given) into `folder`, so the text tower reads real sentences of real lengths."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from edgevl.calibration.samples import SPLITS, class_prompts, split_texts

    # The package photos' own texts only: the ImageNet class prompts and Tux Paint captions the
    # splits also hold would crowd them out of the vocabulary, and training never reads them.
    texts = [t for split in SPLITS for t in split_texts(split, stamps=False) if t not in set(class_prompts(split))]
    words = sorted({w for t in texts for w in t.lower().replace(".", " ").split()})
    vocab = {"<unk>": 0, "<pad>": pad, **{w: i + 2 for i, w in enumerate(words[: size - 2])}}
    vocab.update({"<bos>": bos, "<eos>": eos})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))


def _bundled_pairs(preprocess: "object", tokenize: "object") -> tuple["object", dict, dict]:
    """(pixel values [photos, views, 3, H, W], caption tokens, label-prompt tokens), one caption
    and one prompt per photo, over every bundled split's package photos (not the Tux Paint stamps)."""
    import torch

    from edgevl.calibration.samples import SPLITS, VIEWS_PER_PHOTO, bundled_split
    from edgevl.preprocess import preprocess_images

    pixels, captions, prompts = [], [], []
    for split in SPLITS:
        ps = bundled_split(split, stamps=False)
        pixels.append(preprocess_images(ps.images, preprocess))
        captions += ps.captions
        prompts += ps.prompts
    if len(prompts) != len(captions):
        raise RuntimeError("the bundled splits share a label between photos; one prompt per photo is needed")
    pix = torch.from_numpy(np.concatenate(pixels)).view(len(captions), VIEWS_PER_PHOTO, *pixels[0].shape[1:])
    as_torch = lambda feeds: {k: torch.from_numpy(v) for k, v in feeds.items()}  # noqa: E731
    return pix, as_torch(tokenize(captions)), as_torch(tokenize(prompts))


def train_contrastive(model: "object", preprocess: "object", tokenize: "object", steps: int = 200,
                      lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Train a transformers CLIP/SigLIP model in place with the symmetric InfoNCE loss on the
    bundled photos (one random view each per step) against their captions and label prompts in
    turn; returns the loss every step."""
    import torch

    torch.manual_seed(seed)
    pix, captions, prompts = _bundled_pairs(preprocess, tokenize)
    n = pix.shape[0]
    labels = torch.arange(n)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    losses = []
    model.train()
    for step in range(steps):
        texts = prompts if step % 2 == 0 else captions
        image = _pooled(model.get_image_features(pixel_values=pix[labels, torch.randint(0, pix.shape[1], (n,))]))
        text = _pooled(model.get_text_features(**_text_inputs(texts)))
        loss = _info_nce(image, text)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_clip_projections(model: "object", preprocess: "object", tokenize: "object", steps: int = 300,
                           lr: float = 2e-3, seed: int = 0) -> list[float]:
    """`train_contrastive` for a `CLIPModel` too large to train here: the towers stay as they are
    and only `visual_projection` and `text_projection` learn, on tower outputs computed once."""
    import torch

    torch.manual_seed(seed)
    pix, captions, prompts = _bundled_pairs(preprocess, tokenize)
    n, views = pix.shape[:2]
    with torch.no_grad():
        image_feats = torch.cat([model.vision_model(pixel_values=chunk).pooler_output
                                 for chunk in pix.flatten(0, 1).split(16)]).view(n, views, -1)
        text_feats = [model.text_model(**_text_inputs(t)).pooler_output for t in (prompts, captions)]
    params = [*model.visual_projection.parameters(), *model.text_projection.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    labels = torch.arange(n)
    losses = []
    for step in range(steps):
        image = model.visual_projection(image_feats[labels, torch.randint(0, views, (n,))])
        loss = _info_nce(image, model.text_projection(text_feats[step % 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _text_inputs(tokens: dict) -> dict:
    return {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}


def _pooled(out: "object") -> "object":
    """The embedding from a transformers `get_*_features` result (a tensor, or an output object
    holding it as `pooler_output`)."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


def _info_nce(image: "object", text: "object") -> "object":
    """Symmetric InfoNCE of matching rows (CLIP's loss) at a fixed temperature."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / TEMPERATURE
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def tiny_checkpoint(kind: str, folder: Path, text: Optional[dict] = None, vision: Optional[dict] = None,
                    steps: int = 200, seed: int = 1) -> Path:
    """A small `CLIPModel` or `SiglipModel` (`kind` "clip" / "siglip") of the given text and
    vision configs, with a word-level tokenizer, trained by `train_contrastive` and saved as a
    user's checkpoint folder (safetensors)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from edgevl.models.hf_clip import load_hf_clip
    from edgevl.models.spec import LoadOptions

    text = {**dict(vocab_size=1024, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                   max_position_embeddings=32), **(text or {})}
    vision = {**dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3, image_size=48,
                     patch_size=16), **(vision or {})}
    vocab = text["vocab_size"]
    bos, eos, pad = vocab - 2, vocab - 1, 1
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=dict(text, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
                                     vision_config=vision, projection_dim=32))
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    else:
        raise ValueError(f"kind {kind!r} is not a tiny checkpoint kind; use 'clip' or 'siglip'")
    model.save_pretrained(folder)
    word_tokenizer(folder, bos=bos, eos=eos, pad=pad, size=vocab - 2)
    spec = load_hf_clip(str(folder), LoadOptions())  # the preprocessing and tokenizer edgevl will use
    train_contrastive(model, spec.preprocess, spec.tokenize, steps=steps)
    model.save_pretrained(folder)
    return folder
