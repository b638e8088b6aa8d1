"""The packages import each other in one direction only: no two units (a subpackage, or a module at
the top of ``insession``) import each other, directly or around a loop, at module level. Imports
under ``TYPE_CHECKING`` and inside functions (the lazy ones) are left out: they do not run at import."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import insession

ROOT = Path(insession.__file__).parent


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        source = unit(".".join(p for p in parts if p != "__init__"))
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("insession."):
                target = unit(node.module)
                if target != source:
                    edges[source].add(target)
    return edges


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in order:
            visit(v)
    return found


def test_the_graph_finds_a_loop_when_there_is_one() -> None:
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_packages_import_each_other() -> None:
    edges = import_graph()
    assert edges["model"] and edges["pipeline"]  # the graph was read
    assert loops(edges) == []
