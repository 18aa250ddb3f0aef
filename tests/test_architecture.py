"""The house drawn from its imports: no circle, and nothing imports a layer above its own.

Every import counts: at the top of a module, inside a function (kept there to keep torch and vLLM off the
import path), and under ``TYPE_CHECKING``. Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``;
those implicit edges are not drawn (a package's ``__init__`` may re-export its modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_aci

PACKAGE = Path(pytest_aci.__file__).parent

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("version", "types", "stats", "files", "extras", "lru", "correction", "models", "defence_names")),
    ("backends and judges", ("backends", "judges")),
    ("reports", ("reporting",)),
    ("specs and the store", ("spec", "store")),
    ("the option table", ("options", "option_io", "option_checks")),
    ("the engine", ("engine",)),
    ("the pytest layer", ("plugin",)),
    ("the commands", ("cli", "harden")),
    ("the package's face", ("",)),  # pytest_aci/__init__: insertion_states, InsertionState
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def layer_of(name: str) -> int:
    inside = name.removeprefix("pytest_aci").removeprefix(".")
    first = inside.split(".")[0]
    for rank, (_, tops) in enumerate(LAYERS):
        if first in tops:
            return rank
    raise AssertionError(f"{name}: in no layer of tests/test_architecture.py (add it to LAYERS)")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_in_a_circle():
    assert circles(import_graph()) == []


def test_every_module_has_a_layer_and_no_import_runs_up():
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {other} ({LAYERS[layer_of(other)][0]})"
        for name, targets in sorted(import_graph().items())
        for other in sorted(targets)
        if layer_of(other) > layer_of(name)
    ]
    assert upward == []


def test_the_check_sees_a_circle_and_an_import_up(tmp_path):
    """The checks above can fail: a circle and an upward import drawn by hand are found."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("pytest_aci.engine.runtime") > layer_of("pytest_aci.backends.base")
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pytest_aci.plugin import collect\n"
    )
    assert imports_of("pytest_aci.engine.m", source, {"pytest_aci.plugin", "pytest_aci.plugin.collect"}) == {
        "pytest_aci.plugin",
        "pytest_aci.plugin.collect",
    }


def test_the_engine_knows_nothing_of_pytest():
    """The engine runs the same under pytest, a benchmark script or aci-harden: no pytest import in it."""
    users = []
    for name, path in sorted(modules().items()):
        if not name.startswith("pytest_aci.engine"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            users += [name for n in names if n.split(".")[0] in ("pytest", "_pytest", "xdist")]
    assert users == []


def test_no_engine_stage_receives_the_runtime():
    """The runtime wires the stages and hands each what it uses: no other engine module imports it (type-only
    imports included), so none can take it whole; the pytest layer above reaches the engine through it."""
    graph = import_graph()
    users = [name for name, targets in sorted(graph.items()) if "pytest_aci.engine.runtime" in targets]
    assert [name for name in users if name.startswith("pytest_aci.engine.")] == []
    assert users  # the check looks where the runtime is used: the pytest layer imports it
