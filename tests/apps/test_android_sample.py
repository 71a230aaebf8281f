"""The Android sample (apps/android, Kotlin, not built here: no Android SDK) checked where it can be:
what its ZeroShot.kt assumes about an export (target, input names and order, preprocess.json keys,
batch-1 text runs) against a real `edgevl export --target executorch` of a small trained CLIP,
and labels.py, which tokenizes the labels for it with the export's tokenizer; the ids it writes
run through the text program at batch 1 as the app runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "apps" / "android"
KOTLIN = (SAMPLE / "app" / "src" / "main" / "java" / "dev" / "edgevl" / "zeroshot" / "ZeroShot.kt").read_text()


def _const(name: str) -> str:
    return re.search(rf'const val {name} = "([^"]+)"', KOTLIN).group(1)


def _list(name: str) -> list[str]:
    body = re.search(rf"val {name} = (?:listOf|setOf)\(([^)]*)\)", KOTLIN, re.S).group(1)
    return re.findall(r'"([^"]+)"', body)


def test_the_sample_reads_every_preprocess_key_the_runtime_library_knows():
    from edgevl_runtime.preprocess import KNOWN_KEYS

    assert set(_list("PREPROCESS_KEYS")) == set(KNOWN_KEYS)
    assert "org.pytorch:executorch-android:" in (SAMPLE / "app" / "build.gradle.kts").read_text()
    assert "executorchVersion=1.5.1" in (SAMPLE / "gradle.properties").read_text()


@pytest.mark.slow  # trains a small CLIP and exports both towers to ExecuTorch fp32
def test_the_samples_assumptions_hold_for_a_real_executorch_export(tmp_path, capsys):
    pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'edgevl[executorch]'")
    from edgevl.cli import main
    from edgevl.models.tiny import tiny_checkpoint
    from edgevl.runtimes.executorch import ExecuTorchRuntime

    ckpt = tiny_checkpoint("clip", tmp_path / "tiny-clip")
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--target", "executorch", "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    preprocess = json.loads((out / "preprocess.json").read_text())
    assert preprocess["resize_mode"] == _const("RESIZE_MODE") and set(preprocess) <= set(_list("PREPROCESS_KEYS"))
    arts = {a["component"]: a for a in manifest["artifacts"]}
    assert {a["target"] for a in arts.values()} == {_const("TARGET")}
    assert all(a["verified"] == "runtime" and a["parity"]["passed"] and a["path"].endswith(".pte") for a in arts.values())
    assert arts["image"]["runtime_options"]["input_names"] == [_const("IMAGE_INPUT")]
    assert arts["text"]["runtime_options"]["input_names"] == _list("TEXT_INPUTS")
    # The app feeds [1, 3, crop, crop] and one [1, context_length] text per call.
    assert arts["image"]["passes"]["shapes"]["pixel_values"][1:] == [3, preprocess["crop"], preprocess["crop"]]
    assert arts["text"]["passes"]["shapes"]["input_ids"][0].startswith("batch 1..")

    labels = ["cat", "coffee", "rocket"]
    done = subprocess.run([sys.executable, str(SAMPLE / "labels.py"), str(out), *labels], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tokens = json.loads((out / "labels.json").read_text())
    assert tokens["labels"] == labels and len(tokens["input_ids"][0]) == preprocess["context_length"]
    text = ExecuTorchRuntime().load(out / arts["text"]["path"], arts["text"]["runtime_options"])
    image = ExecuTorchRuntime().load(out / arts["image"]["path"], arts["image"]["runtime_options"])
    crop = preprocess["crop"]
    pixels = np.zeros((1, 3, crop, crop), np.float32)
    image_embed = image.run({"pixel_values": pixels})["image_embeds"]
    for ids, mask in zip(tokens["input_ids"], tokens["attention_mask"]):
        embed = text.run({"input_ids": np.array([ids]), "attention_mask": np.array([mask])})["text_embeds"]
        assert embed.shape == image_embed.shape == (1, image_embed.shape[1])
        assert abs(float(np.linalg.norm(embed)) - 1.0) < 1e-4  # the app ranks by the plain dot product
