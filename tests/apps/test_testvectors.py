"""The shared test vectors (apps/testvectors/default.json) are what edgevl's PyTorch reference
computes today: regenerated here and compared, so a change to the default model, its
preprocessing or its tokenizer fails this test until the file is regenerated
(`.venv/bin/python apps/testvectors/generate.py`) and every app is checked against it again."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from appvectors import REPO, VECTORS

pytestmark = pytest.mark.slow  # loads the default model and runs its PyTorch reference


def test_vectors_equal_a_fresh_run_of_the_reference(vectors):
    spec = importlib.util.spec_from_file_location("generate", REPO / "apps" / "testvectors" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    fresh = generate.build()
    assert VECTORS.stat().st_size < 1_000_000
    for key in ("model", "preprocess", "template", "labels", "resample_checks"):
        assert fresh[key] == vectors[key], key
    assert len(vectors["images"]) == 3 and len(vectors["texts"]) == len(vectors["labels"]) + 3
    for new, old in zip(fresh["images"], vectors["images"]):
        for key in ("file", "sha256", "crop_rgb_base64", "crop_shape", "ranking"):
            assert new[key] == old[key], (old["file"], key)
        np.testing.assert_allclose(new["tensor_channel_sums"], old["tensor_channel_sums"], atol=1e-3)
        assert new["tensor_samples"] == old["tensor_samples"]
        np.testing.assert_allclose(new["embedding"], old["embedding"], atol=1e-5)
        np.testing.assert_allclose(new["scores"], old["scores"], atol=1e-5)
    for new, old in zip(fresh["texts"], vectors["texts"]):
        assert (new["text"], new["input_ids"], new["attention_mask"]) == (old["text"], old["input_ids"], old["attention_mask"])
        np.testing.assert_allclose(new["embedding"], old["embedding"], atol=1e-5)
