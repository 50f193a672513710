"""Shared pieces of the benchmarks: the server subprocess, machine facts, statistics, tables.

Imported by the scripts in this folder as ``common`` (they run as ``python bench/NAME.py``, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import urllib.request
from collections.abc import Iterator, Sequence
from importlib import metadata
from types import FrameType

import numpy as np

from hardscore_server.tools.local_server import ServerProcess


class BenchTimeout(Exception):
    """The benchmark ran past its overall time limit."""


class Server(ServerProcess):
    """The benchmarks' server: a short drain and the given log level."""

    def __init__(self, *args: str, log_level: str = "INFO") -> None:
        super().__init__("--grace-period-s", "5", "--log-level", log_level, *args)

    def start(self, timeout: float = 120.0) -> Server:
        super().start(timeout)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        return super().stop(timeout)


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
