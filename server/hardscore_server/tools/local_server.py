"""Runs a real ``hardscore-server`` as a subprocess on 127.0.0.1, on ephemeral ports.

Used by the demo (``--start-server``), the benchmarks and the end-to-end tests: the server binds
port 0 and the ports it got are read from its "serving gRPC on ..." log line. The server runs
under this interpreter, or under ``$HARDSCORE_SERVER_PYTHON`` when set (a client-only
environment testing against a server installed elsewhere).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

SERVER_PYTHON_ENV = "HARDSCORE_SERVER_PYTHON"
"""Names the interpreter the server runs under (default: this one)."""

SERVING = re.compile(
    r"^(?!worker \d+ \| ).*serving gRPC on [^ ]+:(\d+), (?:metrics on [^ ]+:(-?\d+)|metrics off)")
"""The server's "serving" line; a supervisor's workers (``worker I | ...`` lines) are skipped."""
SERVING_HTTP = re.compile(r"serving HTTP \(KServe V2 REST\) on [^ ]+:(\d+)")

# Runs ``python -m hardscore_server.main ARGS`` after asking Linux to SIGTERM the server when
# its parent dies (even by SIGKILL), so no server outlives the test run or benchmark behind it.
_LAUNCHER = """\
import os, runpy, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.get("HARDSCORE_PARENT_PID", os.getppid())):
    sys.exit(1)  # the parent died before prctl took effect
sys.argv = ["hardscore_server.main", *sys.argv[1:]]
runpy.run_module("hardscore_server.main", run_name="__main__", alter_sys=True)
"""


class ServerProcess:
    """A server subprocess; ``target`` and ``metrics_url`` are set once it serves.

    ``args`` are extra ``hardscore-server`` flags; ``stop()`` sends SIGTERM (graceful drain)
    and kills the process if it has not exited within the timeout. The server gets SIGTERM by
    itself if this process dies first.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        python = os.environ.get(SERVER_PYTHON_ENV) or sys.executable
        self.args = [
            python, "-c", _LAUNCHER,
            "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--http-port", "0",
            *args,
        ]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "HARDSCORE_PARENT_PID": str(os.getpid()), **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics_port = -1
        self.http_port = -1
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The REST port's base URL (http; the caller swaps in https under TLS)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                http = SERVING_HTTP.search(line)
                if http:
                    self.http_port = int(http[1])
                match = SERVING.search(line)
                if match:
                    self.port, self.metrics_port = int(match[1]), int(match[2] or -1)
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + "\n".join(self.lines))
        return self

    def terminate(self) -> None:
        """Sends SIGTERM (graceful drain) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(10)

    def output(self) -> str:
        return "\n".join(self.lines)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(args: Sequence[str] = (), env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(*args, env=env).start()
