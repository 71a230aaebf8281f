"""Package discovery (everything else is in pyproject.toml). `edgevl/` and the three top-level
folders that install under it (exporters/ -> edgevl.exporters, runtimes/ -> edgevl.runtimes,
calibration/ -> edgevl.calibration) are searched, so a new subpackage or data folder is packaged
without anyone listing it; pyproject's tables cannot rename a found folder, hence this file."""

from setuptools import find_namespace_packages, setup

MAPPED = ("exporters", "runtimes", "calibration")
SKIP = ["*.__pycache__", "*.__pycache__.*"]


def _found(top: str) -> list[str]:
    return find_namespace_packages(include=[top, f"{top}.*"], exclude=SKIP)


setup(
    packages=_found("edgevl") + [f"edgevl.{name}" for top in MAPPED for name in _found(top)],
    package_dir={f"edgevl.{top}": top for top in MAPPED},
)
