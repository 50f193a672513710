"""Shared fixtures: real servers on 127.0.0.1, started once per module where they can be shared."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
# The examples (the digits data, the demo) are scripts, not packages: tests import them by name.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from hardscore_client import ScoringClient

from server_process import ServerProcess, start_server

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROTOC_PYTHON = REPO / ".tools" / "protoc-venv" / "bin" / "python"
"""The interpreter of the venv with grpcio-tools 1.62 that generates the stubs (make protos)."""


@pytest.fixture(scope="session")
def logits_server() -> Iterator[ServerProcess]:
    """A server without a model (logits scoring only), small limits to test them."""
    server = start_server(["--no-model", "--max-message-bytes", str(48 * 1024 * 1024),
                           "--max-rows-per-request", "200000"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def image_server() -> Iterator[ServerProcess]:
    """A server with the embedded default model."""
    server = start_server(["--max-batch-size", "16", "--max-queue-delay-ms", "5",
                           "--max-queue-size", "256"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def digits() -> tuple[Any, Any]:
    """The held-out digits of the embedded model: uint8 images [540, 8, 8] and labels [540]."""
    from hardscore_server.tools.digits import heldout_split  # the client-range venv has no server

    _, _, images, labels = heldout_split()
    return images, labels


@pytest.fixture()
def logits_client(logits_server: ServerProcess) -> Iterator[ScoringClient]:
    with ScoringClient(logits_server.target, max_message_bytes=48 * 1024 * 1024) as client:
        yield client


@pytest.fixture()
def image_client(image_server: ServerProcess) -> Iterator[ScoringClient]:
    with ScoringClient(image_server.target) as client:
        yield client


def load_script(path: Path) -> ModuleType:
    """The Python script at ``path`` (not in a package: bench/, server/gpu_consistency.py)
    imported as a module named after its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and the like look their module up
    spec.loader.exec_module(module)
    return module


def served_oip_methods() -> frozenset[str]:
    """The RPCs of inference.GRPCInferenceService that hardscore serves, read from its .proto.

    Tests build Open Inference Protocol messages with tritonclient's stubs (the two sets of
    generated code cannot share one process); Triton's service has more RPCs than hardscore's.
    """
    text = (REPO / "proto" / "inference" / "grpc_service.proto").read_text()
    return frozenset(re.findall(r"^\s*rpc\s+(\w+)\s*\(", text, re.MULTILINE))


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exposition at ``url``, parsed by prometheus_client: {(name, labels): value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    """One sample's value, 0.0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def http(server: ServerProcess, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, method: str | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request: (status, headers, body), errors included."""
    request = urllib.request.Request(server.http_url + path, data=body, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def error_of(status_and_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    """(status, message) of an error reply, checking Triton's shape {"error": message}."""
    status, headers, body = status_and_body
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert list(payload) == ["error"], payload
    return status, payload["error"]


def chromium() -> str:
    """Debian's Chromium for the browser tests (``make test`` installs it); fails the test
    when missing unless HARDSCORE_SKIP_BROWSER is set, then skips it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("HARDSCORE_SKIP_BROWSER"):
            pytest.skip("chromium is not installed and HARDSCORE_SKIP_BROWSER is set")
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install "
                    "chromium); set HARDSCORE_SKIP_BROWSER=1 to skip this test")
    return path
