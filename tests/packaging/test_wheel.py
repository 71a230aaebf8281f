"""edgevl as a user gets it: the wheel built from the sources a fresh clone holds, installed
without `-e` into a fresh virtual environment, run from a folder outside the checkout.

The fresh environment reuses the packages this suite runs on: a .pth file adds this interpreter's
site-packages folder to its path. A folder added that way has its own .pth files ignored, so the
editable install's import hook living there is never installed, and `edgevl` can only come from
the wheel (checked through `edgevl.__file__`). The same .pth file hides the `photos` extra's
packages, so the export runs on what `pip install 'edgevl[onnx,openvino]'` gives: the core pool
of bundled photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from edgevl.calibration.samples import CORE_PACKAGES, PHOTOS_EXTRA_PACKAGES

REPO = Path(__file__).resolve().parents[2]
# Source folder -> where it lies inside the wheel (pyproject's package-dir mapping).
INSTALLED_AS = {"edgevl": "edgevl", "exporters": "edgevl/exporters", "runtimes": "edgevl/runtimes",
                "calibration": "edgevl/calibration"}
BUILD_OUTPUTS = (".git", ".venv", "build", "out", "*.egg-info", "__pycache__", ".pytest_cache", "node_modules",
                 "*.onnx", "*.onnx.data")


def _clone_files(dest: Path) -> Path:
    """The files a fresh clone plus this checkout's uncommitted work holds (git's tracked and
    untracked-but-not-ignored files), copied to `dest`; without git, the folder less its build
    outputs. A build writes build/ and *.egg-info beside the sources, so it never runs in the
    checkout."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True) if shutil.which("git") and (REPO / ".git").exists() else None
    if listed is None or listed.returncode != 0:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the sources it was built from)."""
    root = tmp_path_factory.mktemp("wheel")
    source = _clone_files(root / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(root / "dist"), str(source)], capture_output=True, text=True)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    # pip shows the backend's warnings (setuptools' deprecation notices, data folders missing from
    # the package list) at this verbosity.
    assert "Warning" not in log, log
    return next((root / "dist").glob("edgevl-*.whl")), source


def test_the_wheel_holds_every_package_and_file_of_the_source_folders(built):
    """Every file of edgevl/, exporters/, runtimes/ and calibration/ (modules of every subpackage,
    and data such as edgevl/models/data) lands where the package-dir mapping puts it, and nothing
    installs as a bare top-level `exporters`."""
    wheel, source = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{installed}/{path.relative_to(source / folder).as_posix()}"
        for folder, installed in INSTALLED_AS.items() for path in (source / folder).rglob("*") if path.is_file()
    }
    assert {"edgevl/distill/__init__.py", "edgevl/models/data/imagenet_classes.txt"} <= expected
    assert sorted(expected - names) == []
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    assert {name.split("/")[0] for name in names} == {"edgevl", dist_info}


def _purelib(python: Path | str) -> Path:
    probe = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True)
    return Path(probe.stdout.strip())


@pytest.mark.slow  # a venv, then a real default export to ONNX from the installed wheel
def test_installed_wheel_runs_the_cli_and_a_default_export_outside_the_checkout(built, default_export_fp32, tmp_path):
    """The installed wheel's default export (ONNX alone) is byte-identical to the checkout's
    (the session's ONNX + OpenVINO export): nothing that shapes an artifact depends on timing,
    run-to-run state, the other targets of the command, the photo pool the data splits read, or
    where edgevl is installed."""
    wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The fresh venv has no pip of its own: this interpreter's pip installs into it.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    site = _purelib(python)
    suite_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    hidden = ", ".join(repr(p) for p in PHOTOS_EXTRA_PACKAGES)
    (site / "edgevl_test_suite_packages.pth").write_text(
        "\n".join(sorted(suite_site)) + f"\nimport sys; sys.modules.update(dict.fromkeys(({hidden},)))\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "EDGEVL_CACHE": os.environ["EDGEVL_CACHE"]}

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), capture_output=True, text=True, cwd=outside, env=env, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc

    assert "distill" in run(str(venv / "bin" / "edgevl"), "--help").stdout  # the parser imports every command
    where = run(str(python), "-c", "import json, edgevl, edgevl.distill, edgevl.exporters, edgevl.calibration.samples"
                " as s; print(json.dumps([edgevl.__file__, edgevl.distill.__file__, edgevl.exporters.__file__,"
                " s.pool()]))")
    *files, pool = json.loads(where.stdout)
    assert all(Path(f).is_relative_to(site) for f in files), files  # the wheel, not the checkout
    assert pool == "core"
    assert "--teacher" in run("edgevl", "distill", "--help").stdout
    targets = run("edgevl", "targets").stdout
    assert all(f"{t} " in targets for t in ("onnx", "openvino", "coreml", "tensorrt")), targets

    started = time.perf_counter()
    run("edgevl", "export", "--target", "onnx", "--out", "out", "-q", timeout=900)
    print(f"default export from the installed wheel: {time.perf_counter() - started:.1f} s")
    out = outside / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    artifacts = manifest["artifacts"]
    assert {(a["target"], a["precision"]) for a in artifacts} == {("onnx", "fp32")}
    assert len(artifacts) == 2 and all((out / a["path"]).is_file() and a["parity"]["passed"] for a in artifacts)
    session = json.loads((default_export_fp32 / "manifest.json").read_text())["artifacts"]
    digests = {(a["component"], a["path"]): a["sha256"] for a in session if a["target"] == "onnx"}
    assert {(a["component"], a["path"]): a["sha256"] for a in artifacts} == digests
    for split, record in manifest["data_splits"].items():
        # The core pool, with Debian's Tux Paint stamps where that package is installed.
        stamps = " + Tux Paint stamps" if record["pool"]["tuxpaint"] else ""
        assert record["source"] == f"bundled {split} split, core pool{stamps}"
        assert {f.split("/")[0] for f in record["files"]} <= set(CORE_PACKAGES) | ({"tuxpaint"} if stamps else set())
