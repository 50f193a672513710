"""``workers`` > 1: N server processes on one gRPC port, run by one supervisor process.

Why processes: one server process answers from one asyncio event loop and decodes in one thread
pool under one GIL, so it stops near one core of front-end work (gRPC, decode, scores) whatever
the host has. N processes bound to the same port with ``SO_REUSEPORT`` let the kernel spread the
incoming connections over N event loops, each with its own batcher and ONNX Runtime session(s)
(bench/README.md, "Front-end capacity", has the measurements).

The supervisor (this module, in the process started as ``hardscore-server``):

- reserves the gRPC port (and the plaintext health port and the REST port, when on) with
  ``SO_REUSEPORT`` so that port 0 resolves once for every worker, then starts ``workers``
  copies of the server with the same arguments plus the resolved ports; each worker's
  /metrics listens on 127.0.0.1 on a free port known only to the supervisor;
- serves ``/metrics`` on ``metrics_host:metrics_port`` itself: every scrape reads each worker's
  exposition over HTTP and sums the series with the same name and labels (counters, histogram
  buckets/sums/counts, gauges such as the queue depth; ``*_info`` gauges take the largest value,
  ``*_created`` samples are left out). A worker that has stopped answering contributes its last
  scrape, so a counter never goes back during a drain. ``hardscore_workers`` is the number of
  workers running;
- relays each worker's output, each line prefixed with ``worker I | ``;
- restarts nothing: when a worker exits on its own, the supervisor logs it, drains the others and
  exits 1 (or the worker's start-up exit code: 2 configuration, 3 model, 4 ports), so the
  orchestrator that runs the supervisor sees the failure and replaces the whole unit;
- on SIGTERM or SIGINT, sends SIGTERM to every worker (each drains as a single server does, within
  ``grace_period_s``), waits for all of them, stops its /metrics last and exits 0 (1 if a worker
  did not exit 0; a worker still running ``grace_period_s`` + 10 s after the signal is killed).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from hardscore_server.config import ConfigError, ServerConfig, exposure_warning
from hardscore_server.transport.inference_protocol.shared_memory import SHARED_STORE_ENV
from hardscore_server.transport.metrics_endpoint import metrics_tls, start_metrics_server

log = logging.getLogger("hardscore_server.supervisor")

WORKER_INDEX_ENV = "HARDSCORE_WORKER_INDEX"
"""Set in a worker's environment (0..workers-1): the process serves instead of supervising."""
READY_FILE_ENV = "HARDSCORE_WORKER_READY_FILE"
"""Where a worker writes its ports (JSON) once it serves."""

START_TIMEOUT_S = 300.0
"""Longest the supervisor waits for every worker to load its model and serve."""
KILL_MARGIN_S = 10.0
"""After SIGTERM, a worker gets grace_period_s plus this before it is killed."""
SCRAPE_TIMEOUT_S = 5.0
POLL_S = 0.1

# A worker asks Linux for SIGTERM when the supervisor dies (even by SIGKILL): no orphans. It does
# so in its own interpreter before the server starts (no preexec_fn: the supervisor has threads).
_WORKER_LAUNCHER = """\
import os, runpy, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(os.environ["HARDSCORE_SUPERVISOR_PID"]):
    sys.exit(1)  # the supervisor died before prctl took effect
sys.argv = ["hardscore_server.main", *sys.argv[1:]]
runpy.run_module("hardscore_server.main", run_name="__main__", alter_sys=True)
"""


class ServingServer(Protocol):
    """What announce_ready reads from a started server (main.HardscoreServer)."""

    port: int
    metrics_port: int
    health_port: int


def is_worker() -> bool:
    """True in a process started by the supervisor."""
    return WORKER_INDEX_ENV in os.environ


def announce_ready(server: ServingServer) -> None:
    """In a worker: tells the supervisor the ports it serves on (no-op in a single server)."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    partial = path + ".partial"
    Path(partial).write_text(json.dumps({
        "pid": os.getpid(), "port": server.port, "metrics_port": server.metrics_port,
        "health_port": server.health_port}))
    os.replace(partial, path)  # atomic: the supervisor never reads half a file


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with SO_REUSEPORT; port 0 picks one.

    The workers bind the same port with SO_REUSEPORT; holding this socket until they do keeps
    another program from taking the port in between. Raises OSError when the port is taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# -- metrics ------------------------------------------------------------------------------------

def sum_expositions(texts: Sequence[str]) -> list[Metric]:
    """The Prometheus text expositions ``texts`` merged into one: same name + labels summed.

    ``*_created`` samples and families are dropped (a sum of creation times means nothing);
    gauges whose family name ends in ``_info`` take the largest value (one model served by every
    worker is still one model). Families and series keep the order of their first appearance.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            series = values[family.name]
            take_max = family.type == "gauge" and family.name.endswith("_info")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sample.labels.items()))
                if key not in series:
                    series[key] = sample.value
                elif take_max:
                    series[key] = max(series[key], sample.value)
                else:
                    series[key] += sample.value
    merged = []
    for name, metric in families.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        merged.append(metric)
    return merged


class WorkerMetrics(Collector):
    """Collects every worker's /metrics at scrape time and sums them (sum_expositions)."""

    def __init__(self) -> None:
        self._urls: dict[int, str] = {}
        self._last: dict[int, str] = {}
        self._running = 0
        self._lock = threading.Lock()

    def set_worker(self, index: int, url: str) -> None:
        with self._lock:
            self._urls[index] = url

    def set_running(self, running: int) -> None:
        self._running = running

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            urls = dict(self._urls)
        for index, url in urls.items():
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
                    text = reply.read().decode()
            except OSError:  # stopped or stopping: its last figures still count
                continue
            with self._lock:
                self._last[index] = text
        with self._lock:
            texts = [self._last[i] for i in sorted(self._last)]
        yield from sum_expositions(texts)
        workers = GaugeMetricFamily(
            "hardscore_workers", "Server processes running under the supervisor.")
        workers.add_metric([], self._running)
        yield workers


# -- the supervisor -----------------------------------------------------------------------------

class Worker:
    """One server process: its index, process, ready file and output relay."""

    def __init__(self, index: int, args: list[str], ready_file: Path) -> None:
        self.index = index
        self.ready_file = ready_file
        self.ports: dict[str, Any] | None = None
        env = {**os.environ, WORKER_INDEX_ENV: str(index), READY_FILE_ENV: str(ready_file),
               "HARDSCORE_SUPERVISOR_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
               # system shared memory regions, registered once for every worker
               SHARED_STORE_ENV: str(ready_file.parent / "shared-memory-regions")}
        self.proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.relay = threading.Thread(target=self._relay, args=(self.proc.stdout,),
                                      name=f"worker-{index}-output", daemon=True)
        self.relay.start()

    def _relay(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        prefix = f"worker {self.index} | ".encode()
        out = sys.stderr.buffer
        for line in stream:
            out.write(prefix + line)
            out.flush()

    def read_ready(self) -> bool:
        """True once the worker has written its ports."""
        if self.ports is None and self.ready_file.exists():
            self.ports = json.loads(self.ready_file.read_text())
        return self.ports is not None


class Supervisor:
    """Starts ``config.workers`` server processes, sums their metrics, drains them together."""

    def __init__(self, config: ServerConfig, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.workers: list[Worker] = []
        self.metrics = WorkerMetrics()
        self._stop_signal: int | None = None
        self._http: Any = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def run(self) -> int:
        """Serves until SIGTERM/SIGINT or a worker's exit; returns the exit status."""
        c = self.config
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        reserved: list[socket.socket] = []
        rest = c.http_port >= 0 and not c.no_model  # the REST port, shared like gRPC's
        for wanted in (c.port, *([c.health_port] if c.health_port >= 0 else []),
                       *([c.http_port] if rest else [])):
            try:
                reserved.append(reserve_port(c.host, wanted))
            except OSError as exc:
                log.error("cannot start: cannot bind %s:%d: %s", c.host, wanted, exc)
                for sock in reserved:
                    sock.close()
                return 4
        port = reserved[0].getsockname()[1]
        health_port = reserved[1].getsockname()[1] if c.health_port >= 0 else -1
        http_port = reserved[-1].getsockname()[1] if rest else -1
        with tempfile.TemporaryDirectory(prefix="hardscore-workers-") as run_dir:
            try:
                code = self._serve(Path(run_dir), port, health_port, http_port, reserved)
            finally:
                for sock in reserved:
                    sock.close()
                self._stop_all()
                if self._http is not None:  # last: a scrape during the drain sees it progress
                    self._http.shutdown()
                    self._http.server_close()
        log.info("stopped")
        return code

    def _serve(self, run_dir: Path, port: int, health_port: int, http_port: int,
               reserved: list[socket.socket]) -> int:
        c = self.config
        worker_metrics_port = "0" if c.metrics_port >= 0 else "-1"
        args = [sys.executable, "-c", _WORKER_LAUNCHER, *self.argv,
                "--port", str(port), "--health-port", str(health_port),
                "--http-port", str(http_port),
                "--metrics-host", "127.0.0.1", "--metrics-port", worker_metrics_port,
                # workers' /metrics are on loopback for this process only: plain HTTP; the
                # supervisor's own endpoint carries the metrics_tls_* settings
                "--metrics-tls-cert-file", "", "--metrics-tls-key-file", "",
                "--metrics-tls-client-ca-file", ""]
        for index in range(c.workers):
            self.workers.append(Worker(index, args, run_dir / f"worker-{index}.json"))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.read_ready() for w in self.workers):
            for w in self.workers:
                code = w.proc.poll()
                if code is not None:
                    log.error("worker %d (pid %d) exited with code %d while starting; stopping "
                              "the others", w.index, w.proc.pid, code)
                    return code if code in (2, 3, 4) else 1
            if self._stop_signal is not None:
                log.info("received %s while starting", signal.Signals(self._stop_signal).name)
                return 0
            if time.monotonic() > deadline:
                log.error("workers not serving after %.0fs; stopping them", START_TIMEOUT_S)
                return 1
            time.sleep(POLL_S)
        for sock in reserved:  # the workers hold the ports now
            sock.close()
        metrics_port = -1
        for w in self.workers:
            assert w.ports is not None
            if w.ports["metrics_port"] >= 0:
                self.metrics.set_worker(w.index,
                                        f"http://127.0.0.1:{w.ports['metrics_port']}/metrics")
        self.metrics.set_running(len(self.workers))
        if c.metrics_port >= 0:
            registry = CollectorRegistry()
            registry.register(self.metrics)
            try:
                self._http = start_metrics_server(c.metrics_host, c.metrics_port, registry,
                                                  metrics_tls(c))
            except ConfigError as exc:
                log.error("cannot start: %s", exc)
                return 2
            except OSError as exc:
                log.error("cannot start: cannot bind metrics %s:%d: %s", c.metrics_host,
                          c.metrics_port, exc)
                return 4
            metrics_port = int(self._http.server_address[1])
        pids = ", ".join(str(w.proc.pid) for w in self.workers)
        if http_port >= 0:  # before the gRPC line, as a single server says it
            log.info("serving HTTP (KServe V2 REST) on %s:%d", c.host, http_port)
        metrics = (f"metrics on {c.metrics_host}:{metrics_port}" if metrics_port >= 0
                   else "metrics off")
        if exposure_warning(c):  # once, here; not by each worker
            log.warning("%s", exposure_warning(c))
        log.info("serving gRPC on %s:%d, %s (%d workers, pids %s)", c.host, port, metrics,
                 len(self.workers), pids)
        while self._stop_signal is None:
            for w in self.workers:
                code = w.proc.poll()
                if code is not None:
                    log.error("worker %d (pid %d) exited with code %d; not restarted: stopping "
                              "the other workers and exiting 1", w.index, w.proc.pid, code)
                    return 1
            time.sleep(POLL_S)
        log.info("received %s: draining %d workers (up to %.1fs)",
                 signal.Signals(self._stop_signal).name, len(self.workers), c.grace_period_s)
        return 0 if self._stop_all() else 1

    def _stop_all(self) -> bool:
        """SIGTERM to every running worker, waits for all (kills late ones); True if all exit 0."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_period_s + KILL_MARGIN_S
        clean = True
        for w in self.workers:
            try:
                code = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) still running after the grace period: killed",
                          w.index, w.proc.pid)
                w.proc.kill()
                code = w.proc.wait()
            w.relay.join(5)
            clean = clean and code == 0
        self.metrics.set_running(sum(w.proc.poll() is None for w in self.workers))
        return clean


def supervise(config: ServerConfig, argv: Sequence[str]) -> int:
    """Runs ``config.workers`` workers with the command-line arguments ``argv``; exit status."""
    return Supervisor(config, argv).run()
