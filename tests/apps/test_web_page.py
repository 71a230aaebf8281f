"""The browser page (apps/web): onnxruntime-web (WASM) and Hugging Face tokenizers.js from the npm
lock file, driven in Debian's headless chromium through playwright (no browser download). It
loads the default export over localhost, classifies a bundled real photo, and its crop bytes,
token ids, top label and scores match the shared test vectors. Its Pillow-exact resampler is
also checked against Pillow under node. Skips, with the reason, where chromium, node or the npm
packages (`make setup` runs `npm ci`) are missing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from appvectors import REPO, crop_of

WEB = REPO / "apps" / "web"


def _need_npm_packages() -> None:
    for package in ("onnxruntime-web", "@huggingface/tokenizers"):
        if not (WEB / "node_modules" / package / "package.json").is_file():
            pytest.skip(f"apps/web/node_modules/{package} is missing: run `npm ci` in apps/web (`make setup` does)")


class _Handler(SimpleHTTPRequestHandler):
    """apps/web at /, the export folder at /export/."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm"}

    def __init__(self, *args, export: Path, **kwargs) -> None:
        self.export = export
        super().__init__(*args, directory=str(WEB), **kwargs)

    def translate_path(self, path: str) -> str:
        if path.startswith("/export/"):
            rel = path.split("?", 1)[0][len("/export/"):]
            # Lexical containment: the export's files may be symlinks, but no path climbs out.
            target = Path(os.path.normpath(self.export / rel))
            return str(target) if self.export in target.parents else str(self.export / "missing")
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serve(export: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, export=Path(os.path.abspath(export))))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def served(default_export_fp32):
    with _serve(default_export_fp32) as url:
        yield url


def _browser_or_skip() -> tuple[str, object]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed on this machine (apt-get install chromium)")
    _need_npm_packages()
    return chromium, pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


STATUS = "document.getElementById('status').textContent"


@pytest.mark.slow  # uses the default model's export (shared with the runtime library's tests)
def test_page_classifies_a_real_photo_like_the_reference(served, vectors, photos, tmp_path):
    chromium, playwright = _browser_or_skip()
    entry, photo = vectors["images"][0], photos[0]  # chelsea.png: PNG, so no JPEG decoder differences
    console: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 900, "height": 1000})
        page.on("console", lambda m: console.append(m.text))
        page.on("pageerror", lambda e: console.append(str(e)))
        page.goto(f"{served}/index.html?export=/export/")
        status = STATUS
        page.wait_for_function(f"{status}.startsWith('ready') || {status}.startsWith('error')", timeout=120_000)
        assert page.text_content("#status").startswith("ready"), (page.text_content("#status"), console)
        page.fill("#labels", ", ".join(vectors["labels"]))
        page.fill("#template", vectors["template"])
        page.set_input_files("#file", str(photo))
        page.click("#run")
        page.wait_for_function(f"{status} === 'done' || {status}.startsWith('error')", timeout=120_000)
        assert page.text_content("#status") == "done", (page.text_content("#status"), console)
        result = page.evaluate("window.edgevlResult")
        timings = page.text_content("#timings")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    import base64

    crop = np.frombuffer(base64.b64decode(result["cropBase64"]), np.uint8).reshape(entry["crop_shape"])
    np.testing.assert_array_equal(crop, crop_of(entry))  # Pillow-exact resize and crop
    by_text = {t["text"]: t for t in vectors["texts"]}
    for prompt, ids in zip(result["prompts"], result["inputIds"]):
        assert ids == by_text[prompt]["input_ids"][: by_text[prompt]["n_tokens"]]
    expected = dict(zip(vectors["labels"], entry["scores"]))
    got = {r["label"]: r["score"] for r in result["ranking"]}
    assert result["ranking"][0]["label"] == entry["ranking"][0]
    assert max(abs(got[label] - expected[label]) for label in expected) <= 1e-3, (got, expected)
    assert result["timingsMs"]["image"] > 0 and result["timingsMs"]["text"] > 0
    assert "image tower" in timings and "text tower" in timings
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # not a blank page


@pytest.mark.slow  # uses the default model's export (shared with the runtime library's tests)
def test_page_refuses_a_newer_manifest_and_changed_bytes(default_export_fp32, tmp_path):
    chromium, playwright = _browser_or_skip()
    copy = tmp_path / "copy"
    shutil.copytree(default_export_fp32, copy, copy_function=os.symlink)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    cases = {
        "manifest_version 2.0 is newer than this page reads": dict(manifest, manifest_version="2.0"),
        "sha256 differs from the manifest": dict(manifest, artifacts=[
            dict(a, sha256="0" * 64) if (a["target"], a["component"]) == ("onnx", "image") else a
            for a in manifest["artifacts"]]),
    }
    with _serve(copy) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        for needle, edited in cases.items():
            manifest_path.unlink()
            manifest_path.write_text(json.dumps(edited))
            page = browser.new_page()
            page.goto(f"{url}/index.html?export=/export/")
            page.wait_for_function(f"{STATUS}.startsWith('ready') || {STATUS}.startsWith('error')", timeout=120_000)
            assert needle in page.text_content("#status"), page.text_content("#status")
            assert page.is_disabled("#run")
            page.close()
        browser.close()


def test_js_resampler_equals_pillow(vectors, photos, tmp_path):
    """preprocess.js's resize against Pillow's, byte for byte: bilinear, bicubic and lanczos, down
    and up, on the bundled photos."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (apt-get install nodejs)")
    from PIL import Image

    cases = []
    for photo in photos:
        with Image.open(photo) as im:
            im = im.convert("RGB")
        (tmp_path / f"{photo.name}.rgb").write_bytes(np.asarray(im).tobytes())
        w, h = im.size
        for name, flt in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC),
                          ("lanczos", Image.Resampling.LANCZOS)):
            for nw, nh in ((224, 224), (w * 2 // 3 + 1, h + 5)):
                want = f"{photo.name}.{name}.{nw}x{nh}.rgb"
                (tmp_path / want).write_bytes(np.asarray(im.resize((nw, nh), flt)).tobytes())
                cases.append(dict(src=f"{photo.name}.rgb", w=w, h=h, nw=nw, nh=nh, interp=name, want=want))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([node, str(WEB / "test" / "resize_check.mjs"), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cases) == 18
    assert [r for r in results if r["differing"]] == []


@pytest.mark.slow  # uses the default model's export (its tokenizer), shared with the other apps tests
def test_js_tokenizer_equals_the_reference(default_export_fp32, vectors, tmp_path):
    """The page's text encoding (tokenizers.js over the export's tokenizer.json, truncated and padded
    by zeroshot.js) gives the reference's ids and masks for every vector text, the one longer than
    the context length included."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (apt-get install nodejs)")
    _need_npm_packages()
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([t["text"] for t in vectors["texts"]]))
    proc = subprocess.run([node, str(WEB / "test" / "tokenize_check.mjs"), str(default_export_fp32), str(texts)],
                          capture_output=True, text=True, timeout=120, cwd=WEB)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert max(t["n_tokens"] for t in vectors["texts"]) == vectors["preprocess"]["context_length"]
    assert [r["input_ids"] for r in rows] == [t["input_ids"] for t in vectors["texts"]]
    assert [r["attention_mask"] for r in rows] == [t["attention_mask"] for t in vectors["texts"]]
