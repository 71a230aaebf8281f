"""Adapter for a local Hugging Face CLIP-family checkpoint folder (`CLIPModel`, `SiglipModel`).

The folder holds config.json, safetensors weights and, usually, tokenizer and preprocessor
files. Nothing is fetched from the network. Pickle weights (`pytorch_model.bin`) are refused unless
the user opts in, and then read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from edgevl.errors import ModelLoadError, UnsupportedModelError, InputError
from edgevl.models.spec import LoadOptions, ModelSpec, TensorSig, TowerSpec
from edgevl.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig
from edgevl.registry import register_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# model_type in config.json -> (class name in transformers, display name)
SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel"}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "spiece.model", "vocab.txt",
)


def _read_config(folder: Path) -> dict:
    if not folder.exists():
        raise ModelLoadError(f"model path {folder} does not exist; pass a checkpoint folder or a registered model name (edgevl models)")
    if not folder.is_dir():
        raise ModelLoadError(f"model path {folder} is a file; pass the checkpoint folder that holds config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; pass a Hugging Face checkpoint folder (config.json + model.safetensors)"
        )
    try:
        return json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}); re-save the checkpoint") from exc


def _check_architecture(folder: Path, config: dict) -> str:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        archs = ", ".join(config.get("architectures") or []) or "unknown"
        supported = ", ".join(f"{cls} ({mt})" for mt, cls in SUPPORTED.items())
        raise UnsupportedModelError(
            f"{folder}: architecture {archs} (model_type {model_type!r}) is not supported; supported: {supported}"
        )
    return model_type


def _weights_file(folder: Path, allow_pickle: bool) -> tuple[Path, bool]:
    """The weights file and whether it is pickle."""
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        _check_safetensors(safetensors)
        return safetensors, False
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        for shard in sorted(set(index.get("weight_map", {}).values())):
            _check_safetensors(folder / shard)
        return folder / "model.safetensors.index.json", False
    pickle = folder / "pytorch_model.bin"
    if pickle.is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"{folder} holds only a pickle checkpoint (pytorch_model.bin), which can run code when loaded; "
                "convert it to safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)"
            )
        return pickle, True
    raise ModelLoadError(f"{folder} has no weights (model.safetensors); save the model with save_pretrained()")


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise ModelLoadError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}); re-save or re-download it"
        ) from exc
    if not keys:
        raise ModelLoadError(f"{path} holds no tensors; re-save the checkpoint")


def _load_model(folder: Path, model_type: str, weights: Path, is_pickle: bool):
    import torch
    import transformers

    from edgevl.ops.attention import ATTN_IMPLEMENTATION, register_with_transformers

    register_with_transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cls = getattr(transformers, SUPPORTED[model_type])
    try:
        if is_pickle:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            config._attn_implementation = ATTN_IMPLEMENTATION
            model = cls(config)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            missing, _unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing:
                raise ModelLoadError(f"{weights} lacks {len(missing)} weights (e.g. {missing[0]}); it does not match config.json")
        else:
            model = cls.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, attn_implementation=ATTN_IMPLEMENTATION
            )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {folder} as {cls.__name__}: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def _preprocess_config(folder: Path, model_type: str, config: dict, tokenizer_pad: int) -> PreprocessConfig:
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    size = int(vision.get("image_size", 224))
    proc = {}
    if (folder / "preprocessor_config.json").is_file():
        proc = json.loads((folder / "preprocessor_config.json").read_text())
    if model_type == "siglip":
        mean, std, mode = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash"
        context, inputs = int(text.get("max_position_embeddings", 64)), ("input_ids",)
    else:
        mean, std, mode = CLIP_MEAN, CLIP_STD, "shortest_edge"
        context, inputs = int(text.get("max_position_embeddings", 77)), ("input_ids", "attention_mask")
    return PreprocessConfig(
        resize=size, crop=size,
        mean=tuple(proc.get("image_mean", mean)), std=tuple(proc.get("image_std", std)),
        interpolation="bicubic", resize_mode=mode, context_length=context,
        text_inputs=inputs, pad_token_id=tokenizer_pad,
    )


def _tokenizer(folder: Path, preprocess: PreprocessConfig):
    from edgevl.tokenize import TextTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    return TextTokenizer(path, preprocess.context_length, preprocess.pad_token_id, preprocess.text_inputs)


def _pad_token_id(folder: Path, config: dict) -> int:
    tok_config = folder / "tokenizer_config.json"
    tok_json = folder / "tokenizer.json"
    if tok_config.is_file() and tok_json.is_file():
        pad = json.loads(tok_config.read_text()).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad:
            from tokenizers import Tokenizer

            pad_id = Tokenizer.from_file(str(tok_json)).token_to_id(pad)
            if pad_id is not None:
                return int(pad_id)
    return int(config.get("text_config", {}).get("pad_token_id") or 0)


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
    special = _special_ids(text_cfg, preprocess.pad_token_id)
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


def _special_ids(text_cfg: dict, pad: int) -> dict[str, int]:
    """bos/eos/pad ids that exist in the vocabulary (configs may carry ids from a bigger one)."""
    vocab = int(text_cfg.get("vocab_size", 0)) or None
    special = {"pad": pad} if vocab is None or pad < vocab else {"pad": 0}
    for key in ("bos", "eos"):
        value = text_cfg.get(f"{key}_token_id")
        if value is not None and (vocab is None or int(value) < vocab):
            special[key] = int(value)
    return special


@register_model("hf-clip")
def load_hf_clip(source: Optional[str], options: LoadOptions) -> ModelSpec:
    if source is None:
        raise InputError("model 'hf-clip' needs a checkpoint folder: edgevl export PATH/TO/CHECKPOINT ...")
    folder = Path(source).expanduser()
    config = _read_config(folder)
    model_type = _check_architecture(folder, config)
    weights, is_pickle = _weights_file(folder, options.allow_pickle)
    model = _load_model(folder, model_type, weights, is_pickle)
    config_full = model.config.to_dict()
    pad = _pad_token_id(folder, config_full)
    preprocess = _preprocess_config(folder, model_type, config_full, pad)
    image, text = _towers(model, model_type, preprocess, config_full)
    tokenize = _tokenizer(folder, preprocess)
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
        tokenizer_files=tuple(folder / f for f in TOKENIZER_FILES if (folder / f).is_file()),
        vocab_size=int(text_cfg.get("vocab_size", 0)),
        special_token_ids=_special_ids(text_cfg, pad),
        notes=tuple(notes),
    )
