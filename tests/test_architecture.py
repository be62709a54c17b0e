"""The layout keeps the architecture visible (docs/architecture.md): no import circles in
``src/`` (imports inside functions counted), the engine (``refine/``) imports neither the
report nor the command line, the run folder imports neither the engine nor the report, and
no module or function grows past what a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "multirefine"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (``from a import b``
    counts ``a.b`` where that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_read_from_the_sources():
    graph = _graph()
    assert "multirefine.refine.search" in graph["multirefine.refine.plan"]
    assert "multirefine.refine.scoring" in graph["multirefine.refine.polar"]


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_a_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("multirefine.refine", ("multirefine.report", "multirefine.cli")),
    ("multirefine.runfolder", ("multirefine.refine", "multirefine.report", "multirefine.cli")),
    ("multirefine.fourier", ("multirefine.refine", "multirefine.report", "multirefine.cli", "multirefine.runfolder")),
    ("multirefine.geometry", ("multirefine.refine", "multirefine.report", "multirefine.cli", "multirefine.runfolder")),
])
def test_layers_import_only_downwards(package, forbidden):
    wrong = {(name, target) for name, targets in _graph().items() if name.startswith(package)
             for target in targets if target.startswith(forbidden)}
    assert not wrong


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(SRC)}: {node.name} {lines} lines")
    assert long_files == [] and long_functions == []
