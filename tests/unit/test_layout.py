"""The package's shape, read from its source: no import cycle between modules, and no module
imports another module's private name (a leading underscore means "this module only")."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Source folder -> the package name it installs as (pyproject's package-dir mapping).
PACKAGES = {"edgevl": "edgevl", "exporters": "edgevl.exporters", "runtimes": "edgevl.runtimes",
            "calibration": "edgevl.calibration", "apps/runtime/edgevl_runtime": "edgevl_runtime"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module, names) for every `import` / `from ... import` (module level only if asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {
        name: {m for m, names in _imports(path, top_level_only=True) for m in [m, *(f"{m}.{n}" for n in names)]
               if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in _modules().items():
        for module, names in _imports(path, top_level_only=False):
            if module.startswith("edgevl") and module != name:
                offenders += [f"{name} imports {module}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not offenders, offenders


MAX_MODULE_LINES = 400


def test_no_module_is_over_the_line_limit():
    """Every module in the source folders (apps/runtime included) is at most MAX_MODULE_LINES long: past that a
    module holds more than one job and is split along a seam."""
    long = sorted(
        f"{path.relative_to(REPO)} has {n} lines (limit {MAX_MODULE_LINES})"
        for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert not long, "; ".join(long)
