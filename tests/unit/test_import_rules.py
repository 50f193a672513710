"""The import rules of the three packages, read from the source with ``ast`` (nothing imported):

- ``hardscore_wire`` (the contract) imports neither the server nor the client;
- ``hardscore_server`` never imports ``hardscore_client``, ``hardscore_client`` never imports
  ``hardscore_server``;
- the client (and the contract) import nothing of the server's dependencies (ONNX Runtime,
  prometheus-client, grpc reflection) or of the export tools, and the report extra's (Pillow,
  matplotlib, pyarrow) only inside the functions that need them, so that
  ``pip install hardscore`` is all the client needs;
- no module imports itself back through a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = {
    "hardscore_wire": REPO / "proto" / "hardscore_wire",
    "hardscore_client": REPO / "client" / "hardscore_client",
    "hardscore_server": REPO / "server" / "hardscore_server",
}
FORBIDDEN = {
    "hardscore_wire": {"hardscore_client", "hardscore_server", "onnxruntime", "PIL",
                       "prometheus_client", "grpc_reflection", "torch", "grpc_health"},
    "hardscore_client": {"hardscore_server", "onnxruntime", "prometheus_client",
                         "grpc_reflection", "grpc_health", "torch", "torchvision", "onnx",
                         "sklearn", "cleanlab"},
    "hardscore_server": {"hardscore_client"},
}
EXTRAS_AT_TOP = {"PIL", "matplotlib", "pyarrow"}
"""What the client may import only inside a function (the report extra): never at import."""


def modules(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) of every hand-written and generated module of ``package``."""
    root = PACKAGES[package]
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join((package, *parts)), path


def imports(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports, absolute: anywhere in the file (functions included), or
    only the statements run at import time (module level, outside functions)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = _outside_functions(tree) if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _outside_functions(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield node
            yield from _outside_functions(node)


def test_the_packages_are_where_the_rules_look() -> None:
    for package, root in PACKAGES.items():
        assert (root / "__init__.py").is_file(), package
        assert len(list(modules(package))) >= 3, package


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_across_the_boundary(package: str) -> None:
    crossings = [
        f"{name} imports {target}"
        for name, path in modules(package)
        for target in imports(name, path)
        if target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not crossings, crossings


def test_the_client_imports_the_report_extra_only_when_it_reports() -> None:
    at_import = [
        f"{name} imports {target} at import time"
        for name, path in modules("hardscore_client")
        for target in imports(name, path, top_level_only=True)
        if target.split(".")[0] in EXTRAS_AT_TOP
    ]
    assert not at_import, at_import


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    bad = tmp_path / "cli.py"
    bad.write_text("def f():\n    from hardscore_server.tools.export import run_export\n"
                   "from . import messages\n")
    found = imports("hardscore_client.cli", bad)
    assert "hardscore_server.tools.export" in found and "hardscore_client.messages" in found
    assert "hardscore_server.tools.export" not in imports("hardscore_client.cli", bad, True)


def test_no_import_circles() -> None:
    graph = {name: imports(name, path) for package in PACKAGES
             for name, path in modules(package)}
    for name in graph:  # keep only edges to our own modules
        graph[name] = {t for t in graph[name] if t in graph and t != name}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    circles = [c for c in map(cycle_from, sorted(graph)) if c is not None]
    assert not circles, circles[0]
