"""Shared pieces of the benchmarks: the server subprocess, machine facts, statistics, tables.

Imported by the scripts in this folder as ``common`` (they run as ``python bench/NAME.py``, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from importlib import metadata
from types import FrameType

import numpy as np

SERVING = re.compile(r"serving gRPC on [^ ]+:(\d+), metrics on [^ ]+:(-?\d+)")

# Runs ``python -m hardscore_server.main ARGS`` after asking Linux to SIGTERM the server when
# the benchmark process dies (even by SIGKILL), so no server outlives its benchmark.
_LAUNCHER = """\
import os, runpy, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ.get("HARDSCORE_BENCH_PARENT", os.getppid())):
    sys.exit(1)  # the benchmark died before prctl took effect
sys.argv = ["hardscore_server.main", *sys.argv[1:]]
runpy.run_module("hardscore_server.main", run_name="__main__", alter_sys=True)
"""


class BenchTimeout(Exception):
    """The benchmark ran past its overall time limit."""


class Server:
    """``hardscore_server.main`` in a subprocess on 127.0.0.1 with free ports (port 0)."""

    def __init__(self, *args: str, log_level: str = "INFO") -> None:
        self.args = [
            sys.executable, "-c", _LAUNCHER,
            "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--grace-period-s", "5", "--log-level", log_level,
            *args,
        ]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "HARDSCORE_BENCH_PARENT": str(os.getpid())}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics_port = -1
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 120.0) -> Server:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                match = SERVING.search(line)
                if match:
                    self.port, self.metrics_port = int(match[1]), int(match[2])
                    ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + self.output())
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises BenchTimeout in the main thread after ``seconds``; SIGTERM exits via finally."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise BenchTimeout(f"benchmark ran past its {seconds:.0f} s limit")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_term = signal.signal(signal.SIGTERM, on_term)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


# --------------------------------------------------------------------------- machine facts


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions(packages: Sequence[str]) -> str:
    parts = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def machine_header(packages: Sequence[str]) -> list[str]:
    return [
        f"machine: {platform.node()} {platform.system()} {platform.machine()}, "
        f"cpu {cpu_model()}, nproc {cpu_count()}",
        f"versions: {versions(packages)}",
    ]


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --------------------------------------------------------------------------- /metrics


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Prometheus text exposition -> {series (name plus labels): value}."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[series] = float(value)
    return out


def metric_total(samples: dict[str, float], name: str, label: str = "") -> float:
    """Sum of the series of the metric ``name`` whose labels contain ``label`` (e.g.
    ``method="ScoreImages"``; empty = every series)."""
    return sum(v for k, v in samples.items()
               if (k == name or k.startswith(name + "{")) and label in k)


# --------------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False
                 ) -> str:
    """Plain text (aligned columns) or a GitHub markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"
