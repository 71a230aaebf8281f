"""The torch-free runtime library (apps/runtime, `edgevl_runtime`) on real exports: its
preprocessing, tokens and embeddings equal the shared test vectors (edgevl's PyTorch reference),
classify and search pick the reference's top-1 on ONNX Runtime and OpenVINO, fp32 (the default
model) and int8 (a small CLIP trained on the bundled photos, most layers int8), the label bank
and the image index are reused and updated incrementally."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from appvectors import crop_of

from edgevl_runtime import EdgeModel, ImageIndex, LabelBank, classify
from edgevl_runtime.preprocess import crop_rgb, normalise

pytestmark = pytest.mark.slow  # uses the session's default-model export (fp32, two targets) and tiny CLIP int8 export
RUNTIMES = ["onnxruntime", "openvino"]


def test_preprocessing_and_tokens_equal_the_vectors(default_export_fp32, vectors, photos):
    model = EdgeModel(default_export_fp32)
    assert model.preprocess.__dict__ == {**{k: v for k, v in vectors["preprocess"].items() if k != "extra"},
                                         "mean": tuple(vectors["preprocess"]["mean"]),
                                         "std": tuple(vectors["preprocess"]["std"]),
                                         "text_inputs": tuple(vectors["preprocess"]["text_inputs"])}
    for entry, photo in zip(vectors["images"], photos):
        crop = crop_rgb(photo, model.preprocess)
        np.testing.assert_array_equal(crop, crop_of(entry))
        tensor = normalise(crop, model.preprocess)
        np.testing.assert_allclose(tensor.astype(np.float64).sum(axis=(1, 2)), entry["tensor_channel_sums"], atol=1e-3)
        for c, y, x, value in entry["tensor_samples"]:
            assert abs(float(tensor[c, y, x]) - value) <= 1e-6
    feeds = model.tokenizer([t["text"] for t in vectors["texts"]])
    assert feeds["input_ids"].tolist() == [t["input_ids"] for t in vectors["texts"]]
    assert feeds["attention_mask"].tolist() == [t["attention_mask"] for t in vectors["texts"]]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_embeddings_and_classify_match_the_vectors(default_export_fp32, vectors, photos, runtime, tmp_path):
    model = EdgeModel(default_export_fp32, runtime=runtime, precision="fp32")
    assert {a.runtime for a in model.artifacts.values()} == {runtime}
    if runtime == "openvino":  # the manifest's option, applied: fp32 where this CPU's default is bf16
        assert model.artifacts["image"].runtime_options == {"INFERENCE_PRECISION_HINT": "f32"}
    images = model.embed_images(photos)
    texts = model.embed_texts([t["text"] for t in vectors["texts"]])
    np.testing.assert_allclose(images, [e["embedding"] for e in vectors["images"]], atol=1e-4)
    np.testing.assert_allclose(texts, [t["embedding"] for t in vectors["texts"]], atol=1e-4)
    rankings = classify(model, photos, vectors["labels"], LabelBank(model, vectors["template"], tmp_path))
    for ranking, entry in zip(rankings, vectors["images"]):
        assert ranking.labels == entry["ranking"]
        expected = dict(zip(vectors["labels"], entry["scores"]))
        assert max(abs(s - expected[label]) for label, s in zip(ranking.labels, ranking.scores)) <= 1e-4


def _decisive_queries(labels: list[str], scores: np.ndarray, margin: float) -> dict[int, int]:
    """query (label index) -> the reference's best image, for queries whose best image beats the
    second by more than `margin` (closer ones are ties any rounding may flip)."""
    out = {}
    for j in range(len(labels)):
        order = np.argsort(-scores[:, j])
        if scores[order[0], j] - scores[order[1], j] > margin:
            out[j] = int(order[0])
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_search_top1_equals_the_reference(default_export_fp32, vectors, photos, runtime, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    model = EdgeModel(default_export_fp32, runtime=runtime)
    index = ImageIndex(model, folder)
    update = index.update()
    assert (update.added, update.kept, update.removed) == (len(photos), 0, 0)
    scores = np.array([e["scores"] for e in vectors["images"]])
    queries = _decisive_queries(vectors["labels"], scores, margin=1e-3)
    assert len(queries) >= 3
    for j, best in queries.items():
        hits = index.search(vectors["template"].format(vectors["labels"][j]), k=len(photos))
        assert hits[0].path.name == photos[best].name


def _tiny_reference(export) -> tuple[list, list[str], list[str], np.ndarray, np.ndarray]:
    """(images, their names `photo#view`, labels, image embeddings, label-prompt embeddings) of the bundled parity
    split's package photos (labels "a photo of a {label}.") under the tiny CLIP's PyTorch reference, the checkpoint read back from the export's manifest."""
    import json

    import edgevl
    from edgevl.calibration.samples import bundled_split
    from edgevl.preprocess import preprocess_images

    source = json.loads((export / "manifest.json").read_text())["model"]["source"]
    spec = edgevl.load(source)
    split = bundled_split("parity", stamps=False)  # the package photos the tiny CLIP was trained on
    image = spec.image.forward_numpy({"pixel_values": preprocess_images(split.images, spec.preprocess)})
    text = spec.text.forward_numpy(spec.tokenize(split.prompts))
    labels = [p[len("a photo of a "):-1] for p in split.prompts]
    return list(split.images), list(split.image_names), labels, image.astype(np.float64), text.astype(np.float64)


def _int8_ties(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Tie bands as parity draws them at the int8 row's cosine floor, with both towers int8 (the
    query side and the ranked side both move)."""
    from edgevl.parity import tie_bands
    from edgevl.tolerances import tolerance_for

    floor = tolerance_for("onnx", "int8").cosine_min
    return tie_bands(queries, items, floor, moved="queries") + tie_bands(queries, items, floor, moved="labels")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_classify_and_search_top1_equal_the_reference(tiny_int8_exports, runtime, tmp_path):
    """int8 on both runtimes, on a CLIP whose towers are mostly int8: the int8 family test's
    export, shared through the session. Tie-aware as parity is: a pick within its tie band at
    the int8 floor agrees, and every decisive pick must equal the reference's."""
    export = tiny_int8_exports("clip")
    images, names, labels, image_emb, text_emb = _tiny_reference(export)
    scores = image_emb @ text_emb.T
    model = EdgeModel(export, runtime=runtime, precision="int8")
    assert {a.precision for a in model.artifacts.values()} == {"int8"}
    rankings = classify(model, images, labels, LabelBank(model, folder=tmp_path))
    bands = _int8_ties(image_emb, text_emb)
    for ranking, row, band in zip(rankings, scores, bands):
        pick = labels.index(ranking.top)
        assert row.max() - row[pick] <= band[pick], (ranking.labels[:3], np.sort(row)[-3:])
    # Search over one view of each photo: the other crops of the same photo tie with it.
    first = [i for i, name in enumerate(names) if name.endswith("#0")]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in first:
        images[i].save(folder / f"{i:02d}.png")
    ImageIndex(model, folder).update()
    search_bands = _int8_ties(text_emb, image_emb[first])  # a query is a label prompt, the ranked items photos
    queries = {}
    for j in range(len(labels)):
        column = scores[first, j]
        best = int(np.argmax(column))
        if np.sum(column[best] - column <= search_bands[j]) == 1:  # no other photo within its band
            queries[j] = first[best]
    assert len(queries) >= len(labels) // 2
    for j, best in queries.items():
        assert ImageIndex(model, folder).search(f"a photo of a {labels[j]}.", k=1)[0].path.name == f"{best:02d}.png"


def test_label_bank_is_cached_on_disk_and_extended(default_export_fp32, vectors, photos, tmp_path):
    model = EdgeModel(default_export_fp32)
    first = LabelBank(model, folder=tmp_path)
    a = first.embeddings(["cat", "dog"])
    assert first.computed == 2 and first.path.is_file()
    again = LabelBank(EdgeModel(default_export_fp32), folder=tmp_path)  # another process would do the same
    np.testing.assert_array_equal(again.embeddings(["dog", "cat"]), a[::-1])
    assert again.computed == 0
    again.embeddings(["cat", "rocket"])
    assert again.computed == 1
    other = LabelBank(model, template="a picture of a {}.", folder=tmp_path)
    other.embeddings(["cat"])
    assert other.computed == 1  # another template is another prompt


def test_index_updates_incrementally(default_export_fp32, photos, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos[:2]:
        shutil.copy(photo, folder / photo.name)
    model = EdgeModel(default_export_fp32)
    index = ImageIndex(model, folder)
    assert str(index.update()) == "index updated: 2 added, 0 changed, 0 removed, 0 unchanged"
    stored = index.load()
    assert str(index.update()) == "index updated: 0 added, 0 changed, 0 removed, 2 unchanged"
    shutil.copy(photos[2], folder / photos[2].name)
    (folder / photos[0].name).unlink()
    Image.open(photos[2]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / photos[1].name)
    update = index.update()
    assert (update.added, update.changed, update.removed, update.kept) == (1, 1, 1, 0)
    now = index.load()
    assert sorted(now) == sorted([photos[1].name, photos[2].name])
    assert not np.array_equal(now[photos[1].name][1], stored[photos[1].name][1])  # re-embedded: new pixels
    assert index.search("a photo of a rocket.", k=2)[0].path.name in {photos[1].name, photos[2].name}
