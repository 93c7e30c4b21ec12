"""The package layout's rules, read from the source: no import cycles anywhere in `runner`, and
in `runner.api` each dialect package imports the shared ones (`core`, `http`, `errors`, the
top-level `state`) and nothing of another dialect; the shared packages import no dialect.

Imports are read with `ast`, so function-level imports count as much as module-level ones (a
deferred import hides a cycle from Python's import system, not from a reader). Importing
`runner.x` through its parent package (`runner` itself) is not an edge: every module has it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
DIALECTS = ("openai", "responses", "ollama", "anthropic", "llama_server", "dmr", "ui")
SHARED = ("core", "http", "errors")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path, package: str = "runner") -> dict[str, tuple[Path, ast.Module]]:
    return {
        module_name(path, root): (path, ast.parse(path.read_text(), filename=str(path)))
        for path in sorted((root / package).rglob("*.py"))
    }


def imported_modules(name: str, path: Path, tree: ast.Module, known: Iterable[str]) -> set[str]:
    """The modules of `known` that `name` imports anywhere in its body: `from pkg import sub`
    counts as importing `pkg.sub` when that is a module, else `pkg`."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(modules: Mapping[str, tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    return {
        name: imported_modules(name, path, tree, modules) for name, (path, tree) in modules.items()
    }


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """A shortest closed path through the group's first module (breadth-first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def api_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["runner", "api"] else None


def cross_dialect_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Each import from a dialect package into another dialect, or from a shared package
    into any dialect."""
    found = []
    for module, targets in sorted(graph.items()):
        own = api_package(module)
        if own not in DIALECTS and own not in SHARED:
            continue
        for target in sorted(targets):
            theirs = api_package(target)
            if theirs in DIALECTS and theirs != own:
                found.append(f"{module} imports {target}")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(read_modules(SRC))


def test_the_graph_sees_every_kind_of_import(graph: dict[str, set[str]]) -> None:
    # Known edges of each form, so the rules below cannot pass on an empty graph.
    assert "runner.api.app" in graph["runner.api"]  # from .app import (in an __init__)
    assert "runner.api.core.inference" in graph["runner.api.openai.routes"]  # absolute from
    assert "runner.api.server" in graph["runner.cli.main"]  # function-level, `from pkg.mod import`
    assert len(graph) > 100


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_api_packages_exist() -> None:
    api = SRC / "runner" / "api"
    for package in (*DIALECTS, *SHARED):
        assert (api / package / "__init__.py").is_file(), package


def test_no_dialect_imports_another(graph: dict[str, set[str]]) -> None:
    bad = cross_dialect_imports(graph)
    assert not bad, "dialect packages reaching into each other:\n" + "\n".join(bad)


# ----- the checks themselves, on planted trees ------------------------------------------


def _plant(root: Path, files: Mapping[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(read_modules(root))


def test_a_function_level_cycle_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "runner/__init__.py": "",
            "runner/a.py": "from runner.b import f\n",
            "runner/b.py": "def f():\n    from . import a\n",
            "runner/c.py": "import runner.a\n",
        },
    )
    assert find_cycles(graph) == [["runner.a", "runner.b", "runner.a"]]


def test_a_relative_cycle_through_a_package_init_is_found(tmp_path: Path) -> None:
    graph = _plant(
        tmp_path,
        {
            "runner/__init__.py": "",
            "runner/pkg/__init__.py": "from .mod import thing\n",
            "runner/pkg/mod.py": "from ..pkg import other\n",
        },
    )
    assert find_cycles(graph) == [["runner.pkg", "runner.pkg.mod", "runner.pkg"]]


def test_a_dialect_reaching_into_another_is_found(tmp_path: Path) -> None:
    files = {f"runner/api/{p}/__init__.py": "" for p in (*DIALECTS, *SHARED)}
    files["runner/__init__.py"] = files["runner/api/__init__.py"] = ""
    files["runner/api/ollama/models.py"] = "from runner.api.ollama.routes import x\n"
    files["runner/api/ollama/routes.py"] = "from runner.api.core.sse import y\n"
    files["runner/api/core/sse.py"] = "def f():\n    from runner.api.openai import routes\n"
    files["runner/api/openai/routes.py"] = "from runner.api.dmr.routes import z\n"
    files["runner/api/dmr/routes.py"] = ""
    graph = _plant(tmp_path, files)
    assert cross_dialect_imports(graph) == [
        "runner.api.core.sse imports runner.api.openai.routes",
        "runner.api.openai.routes imports runner.api.dmr.routes",
    ]
