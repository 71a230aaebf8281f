"""The package's shape, read from its source over EVERY import statement (module level, inside
functions, under `if TYPE_CHECKING:`): no import cycle between modules, calls go one way between
the layers of /work/shared/ARCHITECTURE.md, no module imports another module's private name, and
no module is over the line limit.

An edge is an `import` / `from ... import` naming a module of these folders (relative imports
resolved); `from pkg import name` is an edge to `pkg.name` where that is a module, else to `pkg`.
A submodule's implicit import of its parent package is not an edge (Python runs a package's
`__init__` before any of its submodules, so counting it would make every package a cycle). The
registries' lazy lookups (`importlib.import_module` of a name from a table in edgevl/registry.py,
edgevl/compress/handlers.py) are not import statements: registration is how a low layer reaches
a module it must not import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Source folder -> the package name it installs as (the package-dir mapping in setup.py).
PACKAGES = {"edgevl": "edgevl", "exporters": "edgevl.exporters", "runtimes": "edgevl.runtimes",
            "calibration": "edgevl.calibration", "apps/runtime/edgevl_runtime": "edgevl_runtime"}

# The direction of calls, from ARCHITECTURE.md: "Calls go one way: cli -> pipeline -> exporters ->
# compress / runtimes -> core. An exporter may run a runtime; a runtime never imports an exporter."
# (rank, group, modules): a module may import its own group and any group of a LOWER rank; groups
# that share a rank do not import each other (compress and runtimes are independent halves under the
# exporters; the pipeline and the profiler are two flows the CLI starts). "x.*" is x and everything
# beneath it, a bare name that one module. A module in no row fails the test: place it here.
# - cli: the command line, nothing imports it (distill.command is the `edgevl distill` subcommand).
# - api: the package __init__, the public Python API; it calls the pipeline, so nothing under it
#   may import from it (`__version__` comes from edgevl.version).
# - core: data and definitions every layer may use. distill is core: a distilled student is a model
#   family (models/student.py builds its towers from distill/students.py) and palette tuning reuses
#   its data views; so nothing in it calls the pipeline (the trainer loads its teacher through models).
# - edgevl_runtime (apps/runtime) is its own torch-free distribution; see DISTRIBUTIONS.
LAYERS = (
    (6, "cli", ("edgevl.cli", "edgevl.__main__", "edgevl.distill.command")),
    (5, "api", ("edgevl",)),
    (4, "pipeline", ("edgevl.pipeline",)),
    (4, "profile", ("edgevl.profile.*",)),
    (3, "exporters", ("edgevl.exporters.*",)),
    (2, "compress", ("edgevl.compress.*",)),
    (2, "runtimes", ("edgevl.runtimes.*",)),
    (1, "core", ("edgevl.models.*", "edgevl.ops.*", "edgevl.calibration.*", "edgevl.distill.*",
                 "edgevl.parity", "edgevl.paritydata", "edgevl.manifest", "edgevl.errors", "edgevl.registry",
                 "edgevl.tolerances", "edgevl.preprocess", "edgevl.tokenize", "edgevl.progress", "edgevl.fsutil",
                 "edgevl.version")),
    (1, "edgevl_runtime", ("edgevl_runtime.*",)),
)
# Separately installed distributions never import each other (the apps' library ships without edgevl).
DISTRIBUTIONS = {"edgevl": "edgevl", "edgevl_runtime": "edgevl_runtime"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    path: Path
    line: int
    text: str

    def where(self) -> str:
        path = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{path}:{self.line} `{self.text}`"


def find_modules(root: Path, packages: dict[str, str]) -> dict[str, Path]:
    found = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            found[".".join([package, *(p for p in rel.parts if p != "__init__")])] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules` (None: outside the folders)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def _targets(module: str, path: Path, node: ast.AST) -> list[tuple[str, list[str]]]:
    """(imported dotted name, names imported from it) for one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [(base, [a.name for a in node.names])]


def find_edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for module, path in modules.items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            text = " ".join((ast.get_source_segment(source, node) or "").replace("(", " ").replace(")", " ").split())
            text = text if len(text) <= 100 else text[:97] + "..."
            for name, names in _targets(module, path, node):
                dsts = {_known(f"{name}.{n}", modules) for n in names} if names else {_known(name, modules)}
                edges += [Edge(module, dst, path, node.lineno, text) for dst in sorted(d for d in dsts if d)
                          if dst != module]
    return edges


def find_cycles(edges: list[Edge]) -> list[str]:
    """One message per strongly connected group of modules: its shortest cycle, each step's file:line."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.src, {}).setdefault(e.dst, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    messages = []
    for group in sorted(groups):
        start, members = group[0], set(group)
        paths, frontier = {start: [start]}, [start]
        while frontier:  # breadth first inside the group: the shortest way back to start
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start and "cycle" not in paths:
                        paths["cycle"] = paths[v] + [start]
                    elif w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt if "cycle" not in paths else []
        cycle = paths["cycle"]
        steps = "; ".join(graph[a][b].where() for a, b in zip(cycle, cycle[1:]))
        messages.append(f"import cycle {' -> '.join(cycle)}: {steps} "
                        f"(all modules on cycles with it: {', '.join(group)})")
    return messages


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, group) of `module` in LAYERS (None: in no row)."""
    for rank, group, patterns in LAYERS:
        for p in patterns:
            if module == p.removesuffix(".*") or (p.endswith(".*") and module.startswith(p[:-1])):
                return rank, group
    return None


def find_layer_violations(modules: dict[str, Path], edges: list[Edge]) -> list[str]:
    """One message per module in no row of LAYERS and per import against the direction of calls."""
    unplaced = [f"{m} ({modules[m]}) is in no row of LAYERS; give it a layer" for m in modules if layer_of(m) is None]
    wrong = []
    for e in edges:
        src, dst = layer_of(e.src), layer_of(e.dst)
        if src is None or dst is None:
            continue
        (src_rank, src_group), (dst_rank, dst_group) = src, dst
        src_dist, dst_dist = (DISTRIBUTIONS.get(m.split(".")[0]) for m in (e.src, e.dst))
        if src_dist != dst_dist:
            wrong.append(f"{e.src} ({src_dist}) imports {e.dst} of another distribution ({dst_dist}) at {e.where()}")
        elif src_group != dst_group and (dst_rank >= src_rank):
            why = "a higher layer" if dst_rank > src_rank else "a sibling layer"
            wrong.append(f"{e.src} ({src_group}) imports {e.dst} ({dst_group}, {why}) at {e.where()}")
    return unplaced + wrong


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], list[Edge]]:
    modules = find_modules(REPO, PACKAGES)
    return modules, find_edges(modules)


def test_no_import_cycle_between_modules(tree):
    cycles = find_cycles(tree[1])
    assert not cycles, "\n".join(cycles)


def test_calls_go_one_way_between_layers(tree):
    """cli -> api -> pipeline / profile -> exporters -> compress / runtimes -> core (LAYERS); in
    particular no runtime imports an exporter, and nothing imports the CLI."""
    violations = find_layer_violations(*tree)
    assert not violations, "\n".join(violations)


def test_no_runtime_imports_an_exporter(tree):
    """The rule ARCHITECTURE.md names, on its own, so its failure reads as what it is."""
    bad = [e.where() for e in tree[1] if e.src.startswith("edgevl.runtimes.") and e.dst.startswith("edgevl.exporters.")]
    assert not bad, "a runtime imports an exporter: " + "; ".join(bad)


def test_no_module_imports_another_modules_private_names(tree):
    modules, _ = tree
    offenders = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module != module \
                    and node.module.split(".")[0] in DISTRIBUTIONS:
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, "; ".join(offenders)


def _plant(root: Path, files: dict[str, str]) -> tuple[dict[str, Path], list[Edge]]:
    for rel, source in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(source)
    modules = find_modules(root, {"edgevl": "edgevl", "exporters": "edgevl.exporters", "runtimes": "edgevl.runtimes"})
    return modules, find_edges(modules)


def test_the_checker_flags_a_planted_cycle_and_a_planted_runtime_to_exporter_import(tmp_path):
    """A tmp tree of small sources: a cycle through a TYPE_CHECKING import and a function-level
    relative one, a runtime importing an exporter inside a function, compress importing a runtime
    (a sibling layer), a module in no layer, and the allowed exporter -> runtime beside them."""
    modules, edges = _plant(tmp_path, {
        "edgevl/__init__.py": "",
        "edgevl/errors.py": "class InputError(ValueError): ...\n",
        "edgevl/models/__init__.py": "",
        "edgevl/models/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from edgevl.models.b import B\n",
        "edgevl/models/b.py": "def f():\n    from . import a\n    return a\n",
        "edgevl/compress/__init__.py": "",
        "edgevl/compress/q.py": "from edgevl.runtimes.base import *\n",
        "edgevl/newthing.py": "",
        "exporters/__init__.py": "",
        "exporters/fast.py": "import edgevl.runtimes.base\nfrom edgevl.errors import InputError\n",
        "runtimes/__init__.py": "",
        "runtimes/base.py": "",
        "runtimes/fast.py": "from edgevl.errors import InputError\n\n\ndef load():\n"
                            "    from edgevl.exporters import fast\n    return fast\n",
    })
    cycles = find_cycles(edges)
    assert len(cycles) == 1, cycles
    assert cycles[0].startswith("import cycle edgevl.models.a -> edgevl.models.b -> edgevl.models.a: ")
    assert "edgevl/models/a.py:3 `from edgevl.models.b import B`" in cycles[0]
    assert "edgevl/models/b.py:2 `from . import a`" in cycles[0]
    assert find_layer_violations(modules, edges) == [
        f"edgevl.newthing ({tmp_path / 'edgevl/newthing.py'}) is in no row of LAYERS; give it a layer",
        f"edgevl.compress.q (compress) imports edgevl.runtimes.base (runtimes, a sibling layer) at "
        f"{tmp_path / 'edgevl/compress/q.py'}:1 `from edgevl.runtimes.base import *`",
        f"edgevl.runtimes.fast (runtimes) imports edgevl.exporters.fast (exporters, a higher layer) at "
        f"{tmp_path / 'runtimes/fast.py'}:5 `from edgevl.exporters import fast`",
    ]
    # Without the planted faults the same tree is clean: the checker does not flag everything.
    (tmp_path / "runtimes/fast.py").write_text("from edgevl.errors import InputError\n")
    (tmp_path / "edgevl/models/b.py").write_text("B = 1\n")
    (tmp_path / "edgevl/compress/q.py").write_text("from edgevl.models import a\n")
    (tmp_path / "edgevl/newthing.py").unlink()
    modules, edges = _plant(tmp_path, {})
    assert find_cycles(edges) == [] and find_layer_violations(modules, edges) == []
    assert {("edgevl.exporters.fast", "edgevl.runtimes.base"), ("edgevl.compress.q", "edgevl.models.a")} <= {
        (e.src, e.dst) for e in edges}


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
