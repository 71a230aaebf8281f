"""transformers stays quiet while edgevl loads and exports, and only then (edgevl/models/quiet.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from transformers.utils import logging as tf_logging

from edgevl.models.quiet import quiet_transformers


def test_an_export_prints_no_transformers_bar_or_warning(tiny_clip_dir, tmp_path):
    # A fresh process: transformers' `warning_once` remembers a warning issued earlier in this
    # one. OpenVINO and Core ML walk the model's attributes, which logs `loss_type=None`; loading
    # draws the "Loading weights" bar (both seen in this output with edgevl.models.quiet disabled).
    proc = subprocess.run(
        [sys.executable, "-m", "edgevl.cli", "export", str(tiny_clip_dir), "--target", "openvino,coreml",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "info"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert "exporting text tower to coreml" in printed  # edgevl's own progress is still there
    for needle in ("Loading weights", "loss_type", "it/s]"):
        assert needle not in printed, f"{needle!r} printed:\n{printed[-3000:]}"


def test_the_callers_transformers_settings_come_back():
    before, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    hook = lambda factory, args, kwargs: factory(*args, **kwargs)  # noqa: E731 - a caller's own hook
    previous = tf_logging.set_tqdm_hook(hook)
    tf_logging.set_verbosity_info()
    tf_logging.enable_progress_bar()
    try:
        with quiet_transformers():
            assert tf_logging.get_verbosity() == tf_logging.ERROR
            with tf_logging.tqdm(range(3)) as bar:
                assert bar.disable  # a real tqdm, drawn disabled
        assert tf_logging.get_verbosity() == tf_logging.INFO
        assert tf_logging.set_tqdm_hook(None) is hook
        with open(os.devnull, "w") as sink, tf_logging.tqdm(range(3), file=sink) as bar:
            assert not bar.disable
    finally:
        tf_logging.set_tqdm_hook(previous)
        tf_logging.set_verbosity(before)
        (tf_logging.enable_progress_bar if bars else tf_logging.disable_progress_bar)()
