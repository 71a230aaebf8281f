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
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
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
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{config_path} holds a JSON {type(config).__name__}, not an object; re-save the checkpoint with save_pretrained()"
        )
    _check_config_types(config_path, config)
    return config


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror}); check its permissions") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError (a binary file)
        raise ModelLoadError(f"{path} is not valid JSON ({str(exc).splitlines()[0]}); re-save the checkpoint") from exc


# Sizes transformers reads from the tower configs: each must be a positive integer.
_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
              "max_position_embeddings", "image_size", "patch_size", "projection_dim", "num_channels")


def _check_config_types(path: Path, config: dict) -> None:
    """Wrong types in config.json fail deep inside transformers or torch; name the key here."""
    for key in ("model_type",):
        if key in config and not isinstance(config[key], str):
            raise ModelLoadError(f"{path}: {key} must be a string, got {config[key]!r}; re-save the checkpoint")
    if "architectures" in config and not (
        isinstance(config["architectures"], list) and all(isinstance(a, str) for a in config["architectures"])
    ):
        raise ModelLoadError(f"{path}: architectures must be a list of class names, got {config['architectures']!r}")
    scopes = [("", config)]
    for sub in ("text_config", "vision_config"):
        if sub in config and config[sub] is not None:
            if not isinstance(config[sub], dict):
                raise ModelLoadError(
                    f"{path}: {sub} must be an object, got {type(config[sub]).__name__}; re-save the checkpoint"
                )
            scopes.append((f"{sub}.", config[sub]))
    for prefix, scope in scopes:
        for key in _SIZE_KEYS:
            value = scope.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelLoadError(
                    f"{path}: {prefix}{key} must be a positive integer, got {value!r}; fix config.json or re-save the checkpoint"
                )


def _check_architecture(folder: Path, config: dict) -> str:
    model_type = config.get("model_type")
    if model_type is None:
        archs = ", ".join(config.get("architectures") or []) or "none"
        raise UnsupportedModelError(
            f"{folder / 'config.json'} has no model_type (architectures: {archs}); edgevl reads model_type "
            f"to pick the model class: set it to one of {', '.join(repr(m) for m in SUPPORTED)} or re-save the checkpoint"
        )
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
        index = _read_json(folder / "model.safetensors.index.json")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(
                f"{folder / 'model.safetensors.index.json'} has no weight_map; re-save the checkpoint with save_pretrained()"
            )
        for shard in sorted(set(map(str, weight_map.values()))):
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

    if not path.is_file():
        raise ModelLoadError(f"{path} is missing (listed in the safetensors index); re-download the checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise ModelLoadError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}); re-save or re-download it"
        ) from exc
    if not keys:
        raise ModelLoadError(f"{path} holds no tensors; re-save the checkpoint")
    # Weights are floating point; integer tensors are only the position-id buffers.
    wrong = [(k, d) for k, d in dtypes.items() if d not in FLOAT_DTYPES and not k.endswith("position_ids")]
    if wrong:
        key, dtype = wrong[0]
        raise ModelLoadError(
            f"{path}: tensor {key} has dtype {dtype} ({len(wrong)} tensors not floating point); "
            f"weights must be {', '.join(FLOAT_DTYPES)}: re-save the checkpoint"
        )


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
            _check_shapes(weights, cls, transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True))
            model, info = cls.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, attn_implementation=ATTN_IMPLEMENTATION,
                output_loading_info=True,
            )
            _check_loading_info(weights, info)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load {folder} as {cls.__name__}: {_first_reason(exc)}; re-save it with save_pretrained()") from exc
    _check_finite(weights, model)
    return model.eval()


def _check_shapes(weights: Path, cls, config) -> None:  # noqa: ANN001 - transformers class, config
    """Each stored tensor must have the shape the config gives it (checked on the meta device:
    no memory, no weights read), so the error names the tensor and both shapes."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    files = [weights]
    if weights.name.endswith(".index.json"):
        index = json.loads(weights.read_text())
        files = [weights.parent / shard for shard in sorted(set(index.get("weight_map", {}).values()))]
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                want = expected.get(key)
                got = tuple(f.get_slice(key).get_shape())
                if want is not None and got != want:
                    raise ModelLoadError(
                        f"{path}: tensor {key} has shape {list(got)} but config.json gives {list(want)}; "
                        "the weights and config.json belong to different models: re-save the checkpoint"
                    )


def _first_reason(exc: Exception) -> str:
    """The line of a loading error that names the tensor (torch lists them after a header line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    for line in lines:
        if "mismatch" in line or "shape" in line:
            return line
    return lines[0]


def _check_loading_info(weights: Path, info: dict) -> None:
    """transformers fills weights a checkpoint lacks with random values and only logs it;
    exporting such a model would verify a random network, so missing or mis-shaped ones are refused."""
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise ModelLoadError(
            f"{weights} lacks {len(missing)} weights the config needs (e.g. {sorted(missing)[0]}); "
            "it does not match config.json: re-save the checkpoint"
        )
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0]
        raise ModelLoadError(
            f"{weights}: {len(mismatched)} weights have shapes that do not match config.json (e.g. {first}); "
            "re-save the checkpoint"
        )


def _check_finite(weights: Path, model) -> None:  # noqa: ANN001 - a transformers model
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"{weights}: weight {name} holds NaN or Inf values; re-save or re-download the checkpoint")


def _preprocess_config(folder: Path, model_type: str, config: dict, tokenizer_pad: int) -> PreprocessConfig:
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    size = int(vision.get("image_size", 224))
    proc = _read_preprocessor_config(folder / "preprocessor_config.json")
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


def _read_preprocessor_config(path: Path) -> dict:
    """preprocessor_config.json, if present: image_mean / image_std must be 3 numbers (std > 0)."""
    if not path.is_file():
        return {}
    proc = _read_json(path)
    if not isinstance(proc, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(proc).__name__}, not an object; re-save the image processor")
    for key in ("image_mean", "image_std"):
        value = proc.get(key)
        if value is None:
            continue
        ok = (isinstance(value, list) and len(value) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        if not ok or (key == "image_std" and min(value) <= 0):
            raise ModelLoadError(
                f"{path}: {key} must be 3 numbers{' above 0' if key == 'image_std' else ''} (one per RGB channel), "
                f"got {value!r}; fix it or re-save the image processor"
            )
    return proc


def _load_tokenizer_json(path: Path):  # noqa: ANN202 - tokenizers.Tokenizer
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ModelLoadError(
            f"{path} is not a readable tokenizer ({str(exc).splitlines()[0]}); re-save the tokenizer "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(folder)) or remove the tokenizer files"
        ) from exc
    if tok.get_vocab_size() == 0:
        raise ModelLoadError(f"{path} has an empty vocabulary; re-save the tokenizer or remove the tokenizer files")
    return tok


def _check_tokenizer_fits(path: Path, vocab_size: int) -> None:
    """Token ids past the text tower's embedding table would crash the reference mid-export."""
    if not path.is_file() or vocab_size < 1:
        return
    top = max(_load_tokenizer_json(path).get_vocab().values())
    if top >= vocab_size:
        raise ModelLoadError(
            f"{path} yields token ids up to {top} but the text tower's vocab_size is {vocab_size}; "
            "the tokenizer belongs to another model: use the checkpoint's own tokenizer"
        )


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
        settings = _read_json(tok_config)
        if not isinstance(settings, dict):
            raise ModelLoadError(f"{tok_config} holds a JSON {type(settings).__name__}, not an object; re-save the tokenizer")
        pad = settings.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad and isinstance(pad, str):
            pad_id = _load_tokenizer_json(tok_json).token_to_id(pad)
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
    # Small files first: a broken tokenizer or processor config fails before the weights load.
    _read_preprocessor_config(folder / "preprocessor_config.json")
    if (folder / "tokenizer.json").is_file():
        _load_tokenizer_json(folder / "tokenizer.json")
    model = _load_model(folder, model_type, weights, is_pickle)
    config_full = model.config.to_dict()
    pad = _pad_token_id(folder, config_full)
    preprocess = _preprocess_config(folder, model_type, config_full, pad)
    _check_tokenizer_fits(folder / "tokenizer.json", int(config_full.get("text_config", {}).get("vocab_size", 0)))
    image, text = _towers(model, model_type, preprocess, config_full)
    _check_widths(image, text)
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
