"""No import cycle between lazypull's packages: each package can be read, tested and
changed knowing only those below it.

The graph's nodes are ``lazypull.X`` for each sub-package X (its modules, at any depth,
are one node) and each top-level module. Every import of lazypull code counts, at module
level and inside functions alike (a lazy import is a dependency all the same, only a late
one), except those under ``if TYPE_CHECKING:``: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import lazypull

ROOT = Path(lazypull.__file__).parent
Graph = dict[str, dict[str, list[str]]]  # node -> node it imports -> where ("module:line")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import in *tree* that runs."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from imported(ast.Module(body=[child], type_ignores=[]), module, is_package)
            continue
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "lazypull":  # the package's __init__ holds only its version
                yield target, node.lineno
            # `from pkg import name`: also pkg.name, which is a module if pkg has one so named
            yield from ((f"{target}.{a.name}", node.lineno) for a in node.names)
        yield from imported(node, module, is_package)


def package_graph() -> Graph:
    graph: Graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        src = node_of(module)
        tree = ast.parse(path.read_text(), str(path))
        for target, line in imported(tree, module, path.name == "__init__.py"):
            dst = node_of(target)
            if target.startswith("lazypull.") and dst != src and module != "lazypull":
                graph.setdefault(src, {}).setdefault(dst, []).append(f"{module}:{line}")
    return graph


def module_graph() -> Graph:
    """The same, between modules."""
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    graph: Graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        for target, line in imported(tree, module, path.name == "__init__.py"):
            if target in modules and target != module:
                graph.setdefault(module, {}).setdefault(target, []).append(f"{module}:{line}")
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def describe(graph: Graph, comp: list[str]) -> str:
    return "\n".join(
        f"  {a} -> {b}: {', '.join(graph[a][b])}" for a in comp for b in sorted(graph.get(a, {})) if b in comp
    )


def test_the_graph_sees_imports() -> None:
    graph = package_graph()
    assert "lazypull.format" in graph["lazypull.fs"]  # the layer filesystem reads layer indexes
    assert "lazypull.fs" in graph["lazypull.service"]
    assert "lazypull.errors" in graph["lazypull.oci"]


def test_type_checking_imports_are_not_dependencies() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from lazypull.service import fsd\n"
        "def f():\n    from lazypull.snapshot import store\n"
        "from . import sibling\n"
    )
    got = [m for m, _ in imported(tree, "lazypull.fs.layer", False)]
    assert got == [
        "typing",
        "typing.TYPE_CHECKING",
        "lazypull.snapshot",
        "lazypull.snapshot.store",
        "lazypull.fs",
        "lazypull.fs.sibling",
    ]


def test_no_cycle_between_packages() -> None:
    graph = package_graph()
    found = cycles(graph)
    assert not found, "import cycles between packages:\n" + "\n".join(describe(graph, c) for c in found)


def test_no_cycle_between_modules() -> None:
    """Within a package too: its modules can be read one after another, from the bottom."""
    graph = module_graph()
    found = cycles(graph)
    assert not found, "import cycles between modules:\n" + "\n".join(describe(graph, c) for c in found)


def test_cycles_are_found() -> None:
    graph: Graph = {"a": {"b": ["a.x:1"]}, "b": {"c": ["b.y:2"]}, "c": {"a": ["c.z:3"]}, "d": {"a": ["d:1"]}}
    assert cycles(graph) == [["a", "b", "c"]]
