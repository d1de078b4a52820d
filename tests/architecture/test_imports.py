"""The floors hold: no two application modules import each other, and no import hides in a function.

The direction itself (records < engine parts < faces < entry points) is import-linter's contract in
pyproject.toml (``make lint`` runs ``lint-imports``); these two rules are what a layers contract
cannot see: a cycle inside one floor, and an import moved into a function to dodge one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("project", "results", "tasks")


def application_modules(graph: grimp.ImportGraph) -> set[str]:
    return {module for module in graph.modules if module.split(".")[0] in PACKAGES and ".migrations" not in module}


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: every group of modules that reach each other (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_two_application_modules_import_each_other():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = application_modules(graph)
    edges = {module: graph.find_modules_directly_imported_by(module) & modules for module in modules}
    cycles = strongly_connected(modules, edges)
    described = []
    for group in cycles:
        lines = [
            f"  {importer} -> {imported} (line {detail['line_number']}: {detail['line_contents']})"
            for importer in group
            for imported in sorted(edges[importer] & set(group))
            for detail in graph.get_import_details(importer=importer, imported=imported)[:1]
        ]
        described.append(" / ".join(group) + ":\n" + "\n".join(lines))
    assert not cycles, "file-level import cycles (move what both need to a lower floor):\n" + "\n".join(described)


def hidden_imports(path: Path, root: Path = ROOT) -> Iterator[str]:
    """Imports of application code inside a function or class body of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith(".") or name.split(".")[0] in PACKAGES:
                    yield f"{path.relative_to(root)}:{node.lineno} imports {name} inside {scope.name}"


def test_no_application_import_hides_in_a_function():
    found = [
        line
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        for line in hidden_imports(path)
    ]
    assert not found, "imports of application code inside functions (import at the top of the file):\n" + "\n".join(
        found
    )


def test_the_cycle_finder_sees_a_cycle():
    # Given two modules that import each other, and a third that only imports one of them
    edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    # Then exactly the pair is reported
    assert strongly_connected({"a", "b", "c"}, edges) == [["a", "b"]]


def test_the_hidden_import_finder_sees_an_import_in_a_function(tmp_path):
    # Given a module that imports the records inside a function, and the standard library too
    module = tmp_path / "tasks" / "probe.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from results.models import Job\n    import json\n    return Job, json\n")
    # Then only the application import is reported
    assert list(hidden_imports(module, tmp_path)) == ["tasks/probe.py:2 imports results.models inside f"]
