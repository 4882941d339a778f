"""The package's layers: every import of ``src/sead`` runs down the layer order or stays in its folder, and no
modules import each other in a circle.

The order is written once, here (:data:`LAYERS`); docs/architecture.md shows it (and this test checks that it
shows the same). Imports are read from the code (``import``/``from`` statements anywhere, inside functions
too) and from string constants that name a module of the package (``importlib.import_module("sead.tasks.sums")``,
``python -m sead.experiments.worker``), so a dynamic import counts like a static one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: Bottom to top. A module may import its own folder and any folder of a lower rank; folders of one rank are
#: independent of each other. ``sead/__init__.py`` and ``sead/cli.py`` stand above all.
LAYERS: list[tuple[str, ...]] = [
    ("utils",),
    ("method", "checkpoints"),
    ("losses",),
    ("engines",),
    ("grading",),
    ("data", "tasks", "components"),
    ("training", "evaluation", "plan"),
    ("experiments",),
    ("bench",),
    ("commands",),
]
TOP = {"sead", "sead.cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "sead").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, read from the source."""
    modules = modules or _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from sead.x import name`: the submodule sead.x.name when there is one, else the module sead.x
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
                targets = [node.value]  # a dotted module name in a string: importlib, or a `python -m` worker
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """``(rank, folder)`` of a module; the top modules rank above every layer."""
    if module in TOP:
        return len(LAYERS), "(top)"
    folder = module.split(".")[1]
    for rank, folders in enumerate(LAYERS):
        if folder in folders:
            return rank, folder
    raise AssertionError(f"{module}: its folder `sead/{folder}` is in no layer; add it to LAYERS (tests/test_layers.py)")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        rank, folder = layer_of(module)
        for target in sorted(targets):
            t_rank, t_folder = layer_of(target)
            if t_folder == folder or t_rank < rank:
                continue
            how = "up" if t_rank > rank else "sideways, within one layer"
            bad.append(f"{module} (sead/{folder}, layer {rank}) imports {target} (sead/{t_folder}, layer {t_rank}): {how}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_runs_up_or_sideways():
    assert layer_violations(import_graph()) == []


def test_no_circles():
    assert cycles(import_graph()) == []


def test_every_folder_is_in_a_layer_and_every_layer_exists():
    folders = {p.name for p in (SRC / "sead").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    layered = {f for layer in LAYERS for f in layer}
    assert folders == layered
    loose = sorted(p.stem for p in (SRC / "sead").glob("*.py") if f"sead.{p.stem}" not in TOP and p.stem != "__init__")
    assert loose == [], f"modules outside a layer folder: {loose}"


def test_the_checks_catch_what_they_are_for():
    # the checks themselves, on made-up graphs: an upward import, a sideways one, a circle
    up = {"sead.method.zones": {"sead.training.trainer"}, "sead.training.trainer": set()}
    assert layer_violations(up) and "up" in layer_violations(up)[0]
    side = {"sead.data.difficulty": {"sead.tasks.sums"}, "sead.tasks.sums": set()}
    assert "sideways" in layer_violations(side)[0]
    down = {"sead.training.trainer": {"sead.method.zones", "sead.training.config", "sead.utils.errors"}}
    assert layer_violations(down) == []
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(circle) == [["a", "b", "c"]]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("sead.nowhere.x")


def test_dynamic_imports_are_read(tmp_path):
    pkg = tmp_path / "sead"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "tasks").mkdir()
    (pkg / "utils" / "a.py").write_text('import importlib\nimportlib.import_module("sead.tasks.b")\n')
    (pkg / "tasks" / "b.py").write_text("def f():\n    from sead.utils import a\n")
    modules = {"sead.utils.a": pkg / "utils" / "a.py", "sead.tasks.b": pkg / "tasks" / "b.py"}
    graph = import_graph(modules)
    assert graph == {"sead.utils.a": {"sead.tasks.b"}, "sead.tasks.b": {"sead.utils.a"}}
    assert cycles(graph) == [["sead.tasks.b", "sead.utils.a"]]


def test_docs_show_the_same_order():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n(.*?)<!-- /layers -->", text, re.S)
    assert block, "docs/architecture.md has no <!-- layers --> block"
    rows = [line for line in block.group(1).splitlines() if line.startswith("|") and re.match(r"\|\s*\d", line)]
    documented = {}
    for row in rows:
        rank, folders = row.split("|")[1:3]
        documented[int(rank)] = tuple(sorted(re.findall(r"`sead/(\w+)/`", folders)))
    assert documented == {rank: tuple(sorted(folders)) for rank, folders in enumerate(LAYERS)}


def test_folders_stay_small():
    for folder in {f for layer in LAYERS for f in layer}:
        modules = [p for p in (SRC / "sead" / folder).glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"sead/{folder} has {len(modules)} modules: split it along its concepts"
