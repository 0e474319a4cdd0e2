"""The package's layout rules, checked on the sources' ASTs (no imports run):

- no import cycle inside `amadeus` (function-local imports count: they are no way around a cycle; so
  do imports for type checkers only, under `if TYPE_CHECKING:`: a loop a reader must follow is a loop);
- `argparse` only in the command layer (amadeus/commands/ and amadeus/cli.py);
- no library function longer than 80 lines (the command layer is exempt);
- no module longer than 600 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "src" / "amadeus"
MAX_LINES = 80
MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    parts = ("amadeus",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_command_layer(path: Path) -> bool:
    rel = path.relative_to(PKG).parts
    return rel[0] == "commands" or rel == ("cli.py",)


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (its imports run only when the file is a script, never on import)."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imports(tree: ast.Module):
    """Every import node of a module (`if TYPE_CHECKING:` blocks included), skipping `if __name__ ==
    "__main__":`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not MODULES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """amadeus module -> the amadeus modules it imports. The root package `amadeus` is left out:
    Python imports it before any submodule, and it only re-exports lazily (`from amadeus import
    Amadeus`, `__version__`)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(name, node)
                # `from pkg import mod` imports the submodule pkg.mod when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
            for t in targets:
                while t and t not in MODULES:  # `import amadeus.model.x` also names its packages
                    t = t.rpartition(".")[0]
                if t and t != "amadeus" and t != name:
                    edges.add(t)
        if name != "amadeus":
            graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_type_checking_imports_count(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from amadeus.tokenizer import X\n")
    assert [n.module for n in _imports(tree) if isinstance(n, ast.ImportFrom)] == ["typing", "amadeus.tokenizer"]


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_local_imports():
    graph = import_graph()
    assert "amadeus.checkpoint" in graph["amadeus.module"]
    assert "amadeus.module" in graph["amadeus.api"]
    assert "amadeus.api" in graph["amadeus.commands.generate"]  # imported inside run()


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_checkpoint_imports_no_model_code():
    assert not {"amadeus.module", "amadeus.api"} & import_graph()["amadeus.checkpoint"]


def test_argparse_only_in_the_command_layer():
    offenders = []
    for name, path in MODULES.items():
        for node in _imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if "argparse" in names and not _is_command_layer(path):
                offenders.append(name)
    assert offenders == []


def long_functions(max_lines: int = MAX_LINES) -> list[str]:
    """'module.function (N lines)' for every library function longer than max_lines."""
    found = []
    for name, path in MODULES.items():
        if _is_command_layer(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > max_lines:
                    found.append(f"{name}.{node.name} ({n} lines)")
    return found


def test_long_functions_are_found():
    assert any(f.startswith("amadeus.") for f in long_functions(max_lines=5))


def test_no_library_function_over_80_lines():
    assert long_functions() == []


def test_no_module_over_600_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}
