"""A local Hugging Face CLIP-family checkpoint folder, read and checked before anything runs:
config.json (types and sizes), the architecture, the weights file (safetensors, sharded, or
pickle on request), and the loaded model (shapes, missing weights, finite values). Every
failure names the file and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgevl.errors import ModelLoadError, UnsupportedModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# model_type in config.json -> class name in transformers
SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel"}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def read_config(folder: Path) -> dict:
    """config.json of `folder`, with its key types and sizes checked."""
    if not folder.exists():
        raise ModelLoadError(f"model path {folder} does not exist; pass a checkpoint folder or a registered model name (edgevl models)")
    if not folder.is_dir():
        raise ModelLoadError(f"model path {folder} is a file; pass the checkpoint folder that holds config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; pass a Hugging Face checkpoint folder (config.json + model.safetensors)"
        )
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{config_path} holds a JSON {type(config).__name__}, not an object; re-save the checkpoint with save_pretrained()"
        )
    _check_config_types(config_path, config)
    return config


def read_json(path: Path) -> object:
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


def check_architecture(folder: Path, config: dict) -> str:
    """The config's model_type, refused unless edgevl supports it."""
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


def weights_file(folder: Path, allow_pickle: bool) -> tuple[Path, bool]:
    """The weights file and whether it is pickle."""
    safetensors = folder / "model.safetensors"
    if safetensors.is_file():
        _check_safetensors(safetensors)
        return safetensors, False
    if (folder / "model.safetensors.index.json").is_file():
        index = read_json(folder / "model.safetensors.index.json")
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


def load_model(folder: Path, model_type: str, weights: Path, is_pickle: bool):  # noqa: ANN201 - a transformers model
    """The checkpoint as its transformers class on edgevl's attention, in eval mode; refused when a
    weight is missing, mis-shaped or not finite. Callers load through `resolve_model`, which keeps
    transformers quiet meanwhile (edgevl.models.quiet)."""
    import torch
    import transformers

    from edgevl.ops.attention import ATTN_IMPLEMENTATION, register_with_transformers

    register_with_transformers()
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
