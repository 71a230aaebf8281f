"""apps/runtime installs into a fresh virtual environment that has no torch, and classifies there:
the package is built as a wheel and pip-installed (no index, no network); its dependencies
(numpy, Pillow, tokenizers, onnxruntime) come from the packages already installed here, exposed
to the fresh environment one by one through a .pth file, so nothing else (torch, edgevl) is
importable in it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from appvectors import REPO

pytestmark = pytest.mark.slow  # builds a venv and a wheel, and uses the default export
DEPENDENCIES = ("numpy", "PIL", "tokenizers", "onnxruntime")


def _expose(dependencies: tuple[str, ...], farm: Path) -> None:
    """Symlink each dependency's package folder, its bundled shared libraries (`numpy.libs`,
    `pillow.libs`) and its dist-info into `farm`."""
    farm.mkdir()
    for name in dependencies:
        spec = importlib.util.find_spec(name)
        folder = Path(spec.origin).parent
        site = folder.parent
        (farm / folder.name).symlink_to(folder)
        dist = {"PIL": "pillow"}.get(name, name).lower()
        for extra in site.iterdir():
            lowered = extra.name.lower()
            if lowered.startswith(f"{dist}.libs") or (lowered.startswith(f"{dist}-") and lowered.endswith(".dist-info")):
                (farm / extra.name).symlink_to(extra)


def test_installs_without_torch_and_classifies(default_export_fp32, vectors, photos, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # Built from a copy: a build writes build/ and *.egg-info beside the sources.
    shutil.copytree(REPO / "apps" / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(wheels), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("edgevl_runtime-*.whl"))
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The fresh venv has no pip of its own: this interpreter's pip installs into it.
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    _expose(DEPENDENCIES, tmp_path / "deps")
    (site / "edgevl_runtime_test_deps.pth").write_text(str(tmp_path / "deps") + "\n")

    probe = (
        "import importlib.util, json, sys\n"
        "from edgevl_runtime.cli import main\n"
        "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('edgevl') is None\n"
        f"code = main(['classify', {str(default_export_fp32)!r}, {str(photos[0])!r}, "
        f"'--labels', {','.join(vectors['labels'])!r}, '--json', '--runtime', 'onnxruntime'])\n"
        "print(json.dumps({'code': code, 'torch_loaded': 'torch' in sys.modules,"
        " 'module': __import__('edgevl_runtime').__file__}))\n"
    )
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "EDGEVL_RUNTIME_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    classified, status = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert status == {"code": 0, "torch_loaded": False, "module": status["module"]}
    assert status["module"].startswith(str(site))  # the installed wheel, not the source tree
    assert classified["results"][0]["labels"][0] == vectors["images"][0]["ranking"][0]
    assert (venv / "bin" / "edgevl-runtime").is_file()  # the console script came with the wheel
