"""Adapter for a local Hugging Face CLIP-family checkpoint folder (`CLIPModel`, `SiglipModel`).

The folder holds config.json, safetensors weights and, usually, tokenizer and preprocessor
files. Nothing is fetched from the network. Pickle weights (`pytorch_model.bin`) are refused unless
the user opts in, and then read with `torch.load(weights_only=True)`. Reading and checking the
folder is `hf_checkpoint`'s job, its preprocessing `hf_preprocess`'s; this module builds the towers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgevl.errors import InputError, ModelLoadError
from edgevl.models.hf_checkpoint import check_architecture, load_model, read_config, weights_file
from edgevl.models.hf_preprocess import (
    TOKENIZER_FILES, check_tokenizer_fits, load_tokenizer_json, pad_token_id, preprocess_config,
    read_preprocessor_config, special_ids, text_tokenizer,
)
from edgevl.models.spec import LoadOptions, ModelSpec, TensorSig, TowerSpec, existing_files
from edgevl.preprocess import PreprocessConfig
from edgevl.registry import register_model


def _check_widths(image, text) -> None:  # noqa: ANN001 - TowerSpec
    """Zero-shot scores are dot products of image and text embeddings: their widths must match."""
    import torch

    with torch.no_grad():
        widths = {
            tower.component: int(tower.module(**{k: v[:1] for k, v in tower.example_inputs.items()}).shape[-1])
            for tower in (image, text)
        }
    if widths["image"] != widths["text"]:
        raise ModelLoadError(
            f"the image tower's embeddings are {widths['image']} wide but the text tower's are {widths['text']}; "
            "a dual encoder needs one shared width: fix projection_dim / hidden_size in config.json"
        )


def _towers(model, model_type: str, preprocess: PreprocessConfig, config: dict) -> tuple[TowerSpec, TowerSpec]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgevl.models.spec import random_token_feeds
    from edgevl.ops.attention import use_edgevl_attention

    use_edgevl_attention(model)

    class ImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model = model.vision_model
            self.projection = getattr(model, "visual_projection", None)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = self.vision_model(pixel_values=pixel_values).pooler_output
            if self.projection is not None:
                pooled = self.projection(pooled)
            return F.normalize(pooled, dim=-1)

    class ClipTextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model = model.text_model
            self.projection = model.text_projection

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            # The end-of-text token is the last attended one; indexing by the mask's length
            # replaces transformers' int64 ArgMax over ids, which ONNX Runtime cannot run.
            last = (attention_mask.sum(-1) - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            return F.normalize(self.projection(pooled), dim=-1)

    class SiglipTextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_model = model.text_model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            # SigLIP was trained on max_length-padded ids without an attention mask.
            return F.normalize(self.text_model(input_ids=input_ids).pooler_output, dim=-1)

    size = preprocess.crop
    gen = torch.Generator().manual_seed(0)
    image = TowerSpec(
        component="image",
        module=ImageTower().eval(),
        inputs=(TensorSig("pixel_values", "float32", ("batch", 3, size, size)),),
        output=TensorSig("image_embeds", "float32", ("batch", "dim")),
        example_inputs={"pixel_values": torch.randn(2, 3, size, size, generator=gen)},
    )
    text_cfg = config.get("text_config", {})
    special = special_ids(text_cfg, preprocess.pad_token_id)
    feeds = random_token_feeds(2, preprocess.context_length, int(text_cfg.get("vocab_size", 1000)), special, preprocess.text_inputs)
    text_module = SiglipTextTower() if model_type == "siglip" else ClipTextTower()
    text = TowerSpec(
        component="text",
        module=text_module.eval(),
        inputs=tuple(TensorSig(n, "int64", ("batch", "seq")) for n in preprocess.text_inputs),
        output=TensorSig("text_embeds", "float32", ("batch", "dim")),
        example_inputs={k: torch.from_numpy(v) for k, v in feeds.items()},
    )
    return image, text


@register_model("hf-clip")
def load_hf_clip(source: Optional[str], options: LoadOptions) -> ModelSpec:
    if source is None:
        raise InputError("model 'hf-clip' needs a checkpoint folder: edgevl export PATH/TO/CHECKPOINT ...")
    folder = Path(source).expanduser()
    config = read_config(folder)
    model_type = check_architecture(folder, config)
    weights, is_pickle = weights_file(folder, options.allow_pickle)
    # Small files first: a broken tokenizer or processor config fails before the weights load.
    read_preprocessor_config(folder / "preprocessor_config.json")
    if (folder / "tokenizer.json").is_file():
        load_tokenizer_json(folder / "tokenizer.json")
    model = load_model(folder, model_type, weights, is_pickle)
    config_full = model.config.to_dict()
    pad = pad_token_id(folder, config_full)
    preprocess = preprocess_config(folder, model_type, config_full, pad)
    check_tokenizer_fits(folder / "tokenizer.json", int(config_full.get("text_config", {}).get("vocab_size", 0)))
    image, text = _towers(model, model_type, preprocess, config_full)
    _check_widths(image, text)
    tokenize = text_tokenizer(folder, preprocess)
    text_cfg = config_full.get("text_config", {})
    notes = [f"weights: {weights.name}" + (" (pickle, loaded with weights_only=True)" if is_pickle else "")]
    if tokenize is None:
        notes.append("no tokenizer files in the checkpoint: text parity uses random token ids")
    return ModelSpec(
        name=folder.name,
        source=str(folder.resolve()),
        image=image,
        text=text,
        preprocess=preprocess,
        tokenize=tokenize,
        tokenizer_files=existing_files(folder, TOKENIZER_FILES),
        vocab_size=int(text_cfg.get("vocab_size", 0)),
        special_token_ids=special_ids(text_cfg, pad),
        notes=tuple(notes),
    )
