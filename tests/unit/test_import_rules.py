"""The import rules of the three packages, read from the source with ``ast`` (nothing imported):

- ``hardscore_wire`` (the contract) imports neither the server nor the client;
- ``hardscore_server`` never imports ``hardscore_client``, ``hardscore_client`` never imports
  ``hardscore_server``;
- the client (and the contract) import nothing of the server's dependencies (ONNX Runtime,
  prometheus-client, grpc reflection) or of the export tools, and the report extra's (Pillow,
  matplotlib, pyarrow) only inside the functions that need them, so that
  ``pip install hardscore`` is all the client needs; the collection extra's (scikit-learn,
  faiss) likewise; cleanlab never (the client reproduces it, the tests compare);
- no module imports itself back through a circle;
- inside the server, each room keeps its rule (``ROOM_RULES``): the foundations (configuration,
  metrics) import no room, the model imports only them, the pipeline never the wire (no grpc,
  protobuf, HTTP, stubs), the transports never the tools or the process, the process never the
  tools, and the two protocols never each other.
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
                         "cleanlab"},
    "hardscore_server": {"hardscore_client"},
}
EXTRAS_AT_TOP = {"PIL", "matplotlib", "pyarrow", "sklearn", "faiss"}
"""What the client may import only inside a function (the report extra; the collection extra's
scikit-learn and faiss): never at import."""


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


# -- the server's rooms ---------------------------------------------------------------------

FOUNDATION, MODEL, PIPELINE, TRANSPORT, TOOLS, PROCESS = (
    "foundation", "model", "pipeline", "transport", "tools", "process")
ROOM_OF_TOP_MODULE = {"config": FOUNDATION, "metrics": FOUNDATION, "": FOUNDATION,
                      "main": PROCESS, "supervisor": PROCESS, "commands": PROCESS}
ROOM_RULES: dict[str, set[str]] = {
    FOUNDATION: {FOUNDATION},
    MODEL: {FOUNDATION, MODEL},
    PIPELINE: {FOUNDATION, MODEL, PIPELINE},
    TRANSPORT: {FOUNDATION, MODEL, PIPELINE, TRANSPORT},
    TOOLS: {FOUNDATION, MODEL, PIPELINE, TOOLS},
    PROCESS: {FOUNDATION, MODEL, PIPELINE, TRANSPORT, PROCESS},
}
"""The server's rooms each room's modules may import (no arrow runs back up; tools aside)."""
WIRE = {"grpc", "grpc_health", "grpc_reflection", "google", "aiohttp", "http", "wsgiref",
        "socketserver"}
"""The wire: what only the transports and the process (and the tools) may import."""
WIRE_FREE = {FOUNDATION, MODEL, PIPELINE}
CONTRACT_VALUES = {"hardscore_wire", "hardscore_wire.scores"}
"""What of the contract a wire-free room may import: the score names, no protobuf."""
PROTOCOLS = ("hardscore_server.transport.hardscore_v1",
             "hardscore_server.transport.inference_protocol")


def room_of(module: str) -> str:
    """The room of a hardscore_server module: its subpackage, or the top module's role."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (MODEL, PIPELINE, TRANSPORT, TOOLS):
        return parts[1]
    return ROOM_OF_TOP_MODULE[parts[1] if len(parts) > 1 else ""]


def room_crossings(name: str, found: set[str]) -> list[str]:
    """The imports of module ``name`` that break its room's rule."""
    room = room_of(name)
    bad = []
    for target in sorted(found):
        top = target.split(".")[0]
        if top == "hardscore_server" and target != "hardscore_server":
            other = room_of(target)
            if other not in ROOM_RULES[room]:
                bad.append(f"{name} ({room}) imports {target} ({other})")
            for protocol, rival in (PROTOCOLS, PROTOCOLS[::-1]):
                if name.startswith(protocol) and target.startswith(rival):
                    bad.append(f"{name} imports the other protocol's {target}")
        elif room in WIRE_FREE and (top in WIRE or (
                top == "hardscore_wire"
                and ".".join(target.split(".")[:2]) not in CONTRACT_VALUES)):
            bad.append(f"{name} ({room}) imports the wire: {target}")
    return bad


def test_every_server_module_has_a_room() -> None:
    rooms = {name: room_of(name) for name, _ in modules("hardscore_server")}
    assert set(rooms.values()) == set(ROOM_RULES), rooms
    assert rooms["hardscore_server.pipeline.batcher"] == PIPELINE
    assert rooms["hardscore_server.transport.inference_protocol.rest"] == TRANSPORT


def test_each_room_keeps_its_rule() -> None:
    crossings = [c for name, path in modules("hardscore_server")
                 for c in room_crossings(name, imports(name, path))]
    assert not crossings, crossings


def test_the_room_checker_sees_each_kind_of_crossing() -> None:
    pipeline = "hardscore_server.pipeline.image_pipeline"
    assert room_crossings(pipeline, {"grpc"})
    assert room_crossings(pipeline, {"google.protobuf.message"})
    assert room_crossings(pipeline, {"hardscore_wire.scoring_pb2"})
    assert not room_crossings(pipeline, {"hardscore_wire.scores", "numpy"})
    assert room_crossings(pipeline, {"hardscore_server.transport.statuses"})
    assert room_crossings("hardscore_server.main", {"hardscore_server.tools.export"})
    assert room_crossings("hardscore_server.transport.calls", {"hardscore_server.main"})
    assert room_crossings("hardscore_server.model.runner", {"hardscore_server.pipeline.batcher"})
    assert room_crossings("hardscore_server.metrics", {"hardscore_server.transport.health"})
    assert room_crossings("hardscore_server.transport.inference_protocol.servicer",
                          {"hardscore_server.transport.hardscore_v1.servicer"})
    assert not room_crossings("hardscore_server.transport.inference_protocol.servicer",
                              {"hardscore_server.transport.calls", "grpc"})
