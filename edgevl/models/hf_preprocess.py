"""A Hugging Face checkpoint's preprocessing: the image processor's config, the tokenizer (read
and checked against the text tower's vocabulary), the pad token and the special ids."""

from __future__ import annotations

from pathlib import Path

from edgevl.errors import ModelLoadError
from edgevl.models.hf_checkpoint import read_json
from edgevl.preprocess import CLIP_MEAN, CLIP_STD, PreprocessConfig

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "spiece.model", "vocab.txt",
)


def preprocess_config(folder: Path, model_type: str, config: dict, tokenizer_pad: int) -> PreprocessConfig:
    """The checkpoint's image and text preprocessing: its processor's mean / std where given, else
    the family's (SigLIP squashes to a square, CLIP resizes the short edge and crops)."""
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    size = int(vision.get("image_size", 224))
    proc = read_preprocessor_config(folder / "preprocessor_config.json")
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


def read_preprocessor_config(path: Path) -> dict:
    """preprocessor_config.json, if present: image_mean / image_std must be 3 numbers (std > 0)."""
    if not path.is_file():
        return {}
    proc = read_json(path)
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


def load_tokenizer_json(path: Path):  # noqa: ANN202 - tokenizers.Tokenizer
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


def check_tokenizer_fits(path: Path, vocab_size: int) -> None:
    """Token ids past the text tower's embedding table would crash the reference mid-export."""
    if not path.is_file() or vocab_size < 1:
        return
    top = max(load_tokenizer_json(path).get_vocab().values())
    if top >= vocab_size:
        raise ModelLoadError(
            f"{path} yields token ids up to {top} but the text tower's vocab_size is {vocab_size}; "
            "the tokenizer belongs to another model: use the checkpoint's own tokenizer"
        )



def text_tokenizer(folder: Path, preprocess: PreprocessConfig):  # noqa: ANN201 - TextTokenizer or None
    """The checkpoint's tokenizer, or None when it ships no tokenizer.json."""
    from edgevl.tokenize import TextTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    return TextTokenizer(path, preprocess.context_length, preprocess.pad_token_id, preprocess.text_inputs)


def pad_token_id(folder: Path, config: dict) -> int:
    """The tokenizer's pad token id where tokenizer_config.json names one, else the text config's."""
    tok_config = folder / "tokenizer_config.json"
    tok_json = folder / "tokenizer.json"
    if tok_config.is_file() and tok_json.is_file():
        settings = read_json(tok_config)
        if not isinstance(settings, dict):
            raise ModelLoadError(f"{tok_config} holds a JSON {type(settings).__name__}, not an object; re-save the tokenizer")
        pad = settings.get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad and isinstance(pad, str):
            pad_id = load_tokenizer_json(tok_json).token_to_id(pad)
            if pad_id is not None:
                return int(pad_id)
    return int(config.get("text_config", {}).get("pad_token_id") or 0)


def special_ids(text_cfg: dict, pad: int) -> dict[str, int]:
    """bos/eos/pad ids that exist in the vocabulary (configs may carry ids from a bigger one)."""
    vocab = int(text_cfg.get("vocab_size", 0)) or None
    special = {"pad": pad} if vocab is None or pad < vocab else {"pad": 0}
    for key in ("bos", "eos"):
        value = text_cfg.get(f"{key}_token_id")
        if value is not None and (vocab is None or int(value) < vocab):
            special[key] = int(value)
    return special
