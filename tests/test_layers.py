"""The package's shape (issue 30): imports run in one direction. Every import of a locedit module
counts, the ones inside functions too (a lazy import still ties the two modules together)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "locedit"


def _module(path: Path) -> tuple[str, list[str]]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    if parts[-1] == "__init__":
        parts = package = parts[:-1]
    return ".".join(parts), package


def import_graph() -> dict[str, set[str]]:
    """module -> the locedit modules it imports (``from .x import y`` counts x, and x.y when y is a module)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name, package = _module(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets |= {target} | {f"{target}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        found[name] = targets
    return {m: {t for t in ts if t in found and t != m} for m, ts in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _reaches(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.mark.parametrize("low", ["locedit.world.scene", "locedit.world.edits", "locedit.world.oracle",
                                 "locedit.world.data", "locedit.events", "locedit.diffusion.sampler",
                                 "locedit.inversion.trajectory"])
def test_low_layers_do_not_reach_the_engine_or_the_edges(low):
    """The shapes world's scene code, the event protocol, the sampler and the trajectory sit below
    the pipeline, the methods and the edges (world's gates and trainers sit above the pipeline)."""
    high = {"locedit.pipeline", "locedit.methods", "locedit.cli", "locedit.ui", "locedit.bench",
            "locedit.world.gates", "locedit.world.train"}
    assert _reaches(import_graph(), low) & high == set()


def test_the_web_app_and_the_bench_run_the_library_not_the_command_line():
    graph = import_graph()
    for module in graph:
        if module.startswith(("locedit.ui", "locedit.bench")):
            assert not {m for m in graph[module] if m.startswith("locedit.cli")}, module


def test_no_function_over_80_lines_outside_the_training_code():
    training = {"train.py", "train_flow.py", "trainloop.py"}
    long = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "world" and path.name in training:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
