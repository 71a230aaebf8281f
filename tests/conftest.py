"""Shared fixtures: tiny random CLIP / SigLIP checkpoints saved with transformers' own
`save_pretrained`, so the real loading path (config.json + model.safetensors) is exercised."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16)
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)


def make_tiny_checkpoint(kind: str, folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    torch.manual_seed(0)
    if kind == "clip":
        text = dict(TEXT, bos_token_id=97, eos_token_id=98, pad_token_id=1)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24))
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION))
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    return folder


def _private_folder(tmp_path_factory, variable: str, name: str) -> Iterator[Path]:
    """`variable` points at a new folder for the whole run, and is restored afterwards."""
    folder = tmp_path_factory.mktemp(name)
    previous = os.environ.get(variable)
    os.environ[variable] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = previous


@pytest.fixture(scope="session", autouse=True)
def edgevl_cache(tmp_path_factory) -> Iterator[Path]:
    """A cache private to this test run (hermetic: the user's ~/.cache/edgevl is never read), shared
    by every test (a projection fitted for other weights is fitted once per run)."""
    yield from _private_folder(tmp_path_factory, "EDGEVL_CACHE", "edgevl-cache")


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory) -> Iterator[Path]:
    """edgevl-runtime's label banks go to a folder private to this test run, never ~/.cache."""
    yield from _private_folder(tmp_path_factory, "EDGEVL_RUNTIME_CACHE", "edgevl-runtime-cache")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint("clip", tmp_path_factory.mktemp("ckpt") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint("siglip", tmp_path_factory.mktemp("ckpt") / "tiny-siglip")


@pytest.fixture(scope="session")
def default_export_fp32(tmp_path_factory) -> Path:
    """The embedded default model exported once per run to ONNX and OpenVINO, fp32, shared by the
    default-model tests and the apps' tests."""
    from edgevl.cli import main

    out = tmp_path_factory.mktemp("default-fp32") / "out"
    assert main(["export", "--target", "onnx,openvino", "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="session")
def default_int8_exports(tmp_path_factory):
    """component ("image" / "text") -> (output folder, printed summary) of the embedded default
    model's tower exported once per run to ONNX and OpenVINO at int8 (default --max-drop), each
    target through its own accuracy gate: the ONNX and the OpenVINO default-model int8 tests
    read the same export (one model load, one PyTorch reference on the parity split)."""
    import contextlib
    import io

    from edgevl.cli import main

    built: dict[str, tuple[Path, str]] = {}

    def get(component: str) -> tuple[Path, str]:
        if component not in built:
            out = tmp_path_factory.mktemp(f"default-int8-{component}") / "out"
            printed, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                code = main(["export", "--target", "onnx,openvino", "--precision", "int8", "--components", component,
                             "--out", str(out), "-q"])
            assert code == 0, f"default {component} int8 export exited {code}: {errors.getvalue()}"
            built[component] = (out, printed.getvalue())
        return built[component]

    return get


# Tiny trained checkpoints' shapes for the int8 exports: head widths 8, 12 and 16, CLIP towers
# of different widths (shapes the other tiny fixtures do not use).
TINY_INT8_SHAPES = {
    "clip": (dict(num_attention_heads=3), dict(hidden_size=40, intermediate_size=80, num_attention_heads=5)),
    "siglip": (dict(num_attention_heads=4), dict(intermediate_size=72, num_attention_heads=3)),
}


@pytest.fixture(scope="session")
def tiny_int8_exports(tmp_path_factory):
    """kind ("clip" / "siglip") -> a small checkpoint trained on the bundled photos
    (`edgevl.models.tiny`) exported once per run to ONNX and OpenVINO at int8 (both towers, the
    default --max-drop): the int8 family test and the apps' int8 tests share it."""
    from edgevl.cli import main
    from edgevl.models.tiny import tiny_checkpoint

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            root = tmp_path_factory.mktemp(f"tiny-int8-{kind}")
            text, vision = TINY_INT8_SHAPES[kind]
            ckpt = tiny_checkpoint(kind, root / f"tiny-{kind}", text=text, vision=vision)
            code = main(["export", str(ckpt), "--target", "onnx,openvino", "--precision", "int8",
                         "--out", str(root / "out"), "--quiet"])
            assert code == 0, f"tiny {kind} int8 export failed with exit code {code}"
            built[kind] = root / "out"
        return built[kind]

    return get
