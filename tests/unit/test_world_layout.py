"""The shapes world's modules import each other without a circle (function-level imports included): what two
modules both need lives below both of them (world/batches.py for the trainers and the teacher's evaluation)."""

from __future__ import annotations

import ast
from pathlib import Path

import dmdr_cli

WORLD = Path(dmdr_cli.__file__).parent / "world"


def world_imports() -> dict[str, set[str]]:
    """{module: world modules it imports anywhere in its body}, e.g. {"teacher": {"batches", ...}}."""
    graph = {}
    for file in WORLD.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                found.update(name.split(".")[0] for name in names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmdr_cli.world."):
                found.add(node.module.split(".")[2])
        graph[file.stem] = found & {f.stem for f in WORLD.glob("*.py")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_world_has_no_import_circle():
    graph = world_imports()
    assert "batches" in graph["teacher"] and "batches" in graph["teacher_eval"], "the parser sees the imports"
    assert "teacher_eval" in graph["teacher"] and "teacher" not in graph["teacher_eval"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
