"""The simulator package's modules import each other one way: no circle, not even a deferred one."""

from __future__ import annotations

import ast
from pathlib import Path

import storyboard.simulator

PACKAGE = "storyboard.simulator"


def _imports(path: Path) -> set[str]:
    """Every module of the package `path` imports: at the top, in functions or for type checking."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    # Importing the package itself runs its __init__, which imports the parts.
    return {
        "__init__" if n == PACKAGE else n.removeprefix(PACKAGE + ".")
        for n in names
        if n == PACKAGE or n.startswith(PACKAGE + ".")
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph.get(name, ())):
            found = visit(target, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_simulator_modules_import_each_other_one_way() -> None:
    folder = Path(storyboard.simulator.__file__).parent
    graph = {p.stem: _imports(p) for p in folder.glob("*.py")}
    assert {"__init__", "app", "execution", "simulator", "host"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_sees_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
