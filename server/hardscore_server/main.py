"""``hardscore-server``: builds the gRPC server, serves until SIGTERM/SIGINT, then drains.

Start-up order: configuration -> models (load, validate, warm up) -> gRPC port and metrics port
-> health SERVING. On SIGTERM or SIGINT new calls get UNAVAILABLE, the health status turns
NOT_SERVING, calls already started get up to ``grace_period_s`` to finish (then UNAVAILABLE),
and the process exits 0 within ``grace_period_s`` + 1 s (``HardscoreServer.stop``; the
guarantee is in docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hardscore_server.config import ConfigError, ServerConfig, exposure_warning, parse_args
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, ModelDirError
from hardscore_server.model.repository_layout import RepositoryError, RepositoryLayout
from hardscore_server.model.runner import ModelLoadError, ModelRunner, gpu_settings
from hardscore_server.pipeline.model_repository import ModelRepository
from hardscore_server.pipeline.request_budget import RequestBudget
from hardscore_server.supervisor import announce_ready, is_worker, supervise
from hardscore_server.transport.call_gate import CallGate
from hardscore_server.transport.hardscore_v1.servicer import ScoringServicer
from hardscore_server.transport.health import HealthService
from hardscore_server.transport.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.transport.inference_protocol.core import InferenceCore
from hardscore_server.transport.inference_protocol.rest import RestServer
from hardscore_server.transport.inference_protocol.servicer import SERVICE_NAME as INFERENCE_SERVICE
from hardscore_server.transport.inference_protocol.servicer import InferenceProtocolServicer
from hardscore_server.transport.metrics_endpoint import MetricsEndpoint, metrics_tls
from hardscore_server.transport.reflection_v1 import enable_server_reflection
from hardscore_server.transport.security import ControlGate, ServerSecurity
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

log = logging.getLogger("hardscore_server")

DRAIN_QUIET_S = 0.25
"""The port closes once no call is running and none has arrived or ended for this long..."""
REFUSAL_WINDOW_S = 1.0
"""...or after this long (at most the grace period): grpc's shutdown cancels the calls it has
received but not yet handed to a handler, so it waits for callers to move on, but clients with
a connection open go on sending to it until the port closes (GOAWAY)."""
REFUSAL_GRACE_S = 0.2
"""Seconds the port stays open after the drain for refusals under way to be sent."""
CUT_OFF_TIMEOUT_S = 0.3
"""Longest wait for the calls cut off at the end of the grace period to be answered."""
CLOSE_TIMEOUT_S = 0.3
"""Longest wait for the model pipeline to stop once no call needs it."""

SCORING_SERVICE = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name


class HardscoreServer:
    """One running service: gRPC server, its servicers, the model pipeline and /metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self._metrics_endpoint = MetricsEndpoint(self.metrics.registry)
        self.models: ModelRepository | None = None
        self.port = 0
        self.metrics_port = -1
        self.health = HealthService()
        self.security = ServerSecurity(config)  # TLS files and tokens: ConfigError if bad
        self.metrics_tls = metrics_tls(config)  # the same for the metrics port's TLS files
        self.health_port = -1
        self.gate = CallGate()
        self.http_port = -1
        self._rest: RestServer | None = None
        self._core: InferenceCore | None = None
        self._health_server: grpc.aio.Server | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: ScoringServicer | None = None
        self._stopped = asyncio.Event()

    async def load_models(self) -> None:
        """Loads, validates and warms up the models (skipped with ``no_model``): the model
        directory as a repository of one, or the model repository as its control mode says
        (none and poll: every model; explicit: ``load_model``). A model that fails at start
        stops the start (exit 3), as Triton's exit-on-error does."""
        c = self.config
        if c.no_model:
            return
        if c.model_repository:
            layout = RepositoryLayout(root=Path(c.model_repository))
        else:
            layout = RepositoryLayout(
                single=Path(c.model_dir) if c.model_dir else DEFAULT_MODEL_DIR)
        warm_up_sizes = tuple(sorted({1, c.max_batch_size}))
        what = (f"the model from {layout.single}" if layout.single is not None else
                f"the models of {layout.describe()} ({c.model_control_mode} control)")
        log.info("loading %s and warming it up: %d batch size(s) (%s) per instance, %d "
                 "instance(s); a large model on a CPU can take a minute, the ports open once it "
                 "is ready", what, len(warm_up_sizes), ", ".join(map(str, warm_up_sizes)),
                 c.instances)

        def load_runner(model_dir: Path) -> ModelRunner:  # a worker thread
            runner = ModelRunner(
                model_dir,
                execution_provider=c.execution_provider,
                instances=c.instances,
                intra_op_threads=c.intra_op_threads,
                allow_spinning=c.allow_spinning,
                gpu=gpu_settings(c),
                io_binding=c.io_binding,
            )
            seconds = runner.warm_up(warm_up_sizes)
            log.info("model %s v%s from %s on %s (%d instance(s), %d thread(s) each), warm-up "
                     "%.2fs", runner.manifest.name, runner.manifest.version, model_dir,
                     runner.provider, len(runner.sessions), runner.intra_op_threads, seconds)
            return runner

        try:
            self.models = ModelRepository(c, self.metrics, layout, load_runner)
        except RepositoryError as exc:
            raise ConfigError(str(exc)) from None
        try:
            if c.model_control_mode == "explicit":
                failures = await self.models.load_names(c.load_model)
            else:
                failures = await self.models.load_all()
        except RepositoryError as exc:
            raise ConfigError(str(exc)) from None
        if failures:
            cause = failures[0].__cause__
            if isinstance(cause, ConfigError):  # a setting that cannot work here (exit 2), e.g.
                raise cause  # jpeg_decode_device=cuda on a host without CUDA
            if layout.single is not None and isinstance(cause, ModelDirError | ModelLoadError):
                raise cause  # the model directory's own error, as before the repository
            raise ModelLoadError("; ".join(map(str, failures)))
        if c.model_control_mode == "poll":
            self.models.start_polling(c.repository_poll_s)
        loaded = ", ".join(f"{e.name} v{e.version}" for e in self.models.loaded())
        log.info("models serving: %s (control mode %s, version policy %s)",
                 loaded or "none yet", c.model_control_mode, self.models.policy)

    async def start(self) -> None:
        """Binds the ports and starts serving; health turns SERVING once everything is up."""
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", int(c.workers > 1)),  # workers share the port
            # no window growth: a stream's bytes are received only once it is read (request
            # budget), not up to a bandwidth-delay estimate per stream (docs/security.md)
            ("grpc.http2.bdp_probe", 0),
        ]
        recorded = frozenset({SCORING_SERVICE, INFERENCE_SERVICE})
        # first: refuses while draining, admits request bytes to the request budget
        requests = RequestBudget(c.request_budget_bytes, c.max_message_bytes, self.metrics,
                                 read_timeout_s=c.message_read_timeout_s)
        self.gate = CallGate(self.metrics, recorded, requests)
        self._server = grpc.aio.server(
            options=options,
            interceptors=[self.gate, *self.security.interceptors(self.metrics)])
        self._servicer = ScoringServicer(c, self.metrics, self.models)
        pb_grpc.add_ScoringServiceServicer_to_server(self._servicer, self._server)
        services = [SCORING_SERVICE]
        core = None
        if self.models is not None:  # the Open Inference Protocol, for standard clients
            core = self._core = InferenceCore(self.models, ControlGate(c))
            oip_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceProtocolServicer(self.metrics, core, c.max_message_bytes),
                self._server)
            services.append(INFERENCE_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_server_reflection((*services, health.SERVICE_NAME), self._server)  # v1alpha, v1
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        self.port = self.security.add_port(self._server, address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}: in use, or the address is not "
                          "this host's (--host, --port)")
        if c.health_port >= 0:  # plaintext, health only: for probes that cannot do TLS
            self._health_server = grpc.aio.server(
                options=[("grpc.so_reuseport", int(c.workers > 1))], interceptors=[CallGate()])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            health_address = address.rpartition(":")[0] + f":{c.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise OSError(f"cannot bind health port {health_address}")
            await self._health_server.start()
        if core is not None and c.http_port >= 0:  # the same protocol over HTTP/REST
            self._rest = RestServer(c, self.metrics, core, self.security.tokens, requests)
            self.http_port = await self._rest.start(c.host, c.http_port)
        await self._server.start()
        if c.metrics_port >= 0:
            self.metrics_port = self._metrics_endpoint.start(
                c.metrics_host, c.metrics_port, self.metrics_tls)
        for service in ("", *services):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self._rest is not None:  # before the gRPC line: launchers wait for that one
            log.info("serving HTTP (KServe V2 REST) on %s:%d", c.host, self.http_port)
        if self._health_server is not None:
            log.info("health checks (plaintext, grpc.health.v1 only) on %s:%d", c.host,
                     self.health_port)
        if self.metrics_tls is not None and self.metrics_port >= 0:
            log.info("metrics over HTTPS%s", ", client certificates required"
                     if self.metrics_tls.client_ca_file else "")
        metrics = (f"metrics on {c.metrics_host}:{self.metrics_port}" if self.metrics_port >= 0
                   else "metrics off")
        if not is_worker() and exposure_warning(c):  # a supervisor warns once for its workers
            log.warning("%s", exposure_warning(c))
        log.info("serving gRPC on %s:%d, %s (%s)", c.host, self.port, metrics,
                 self.security.describe())

    async def stop(self) -> None:
        """Drains, then stops; returns within ``grace_period_s`` + 1 s, whatever is running.

        New calls are answered UNAVAILABLE from the first moment (health checks answer
        NOT_SERVING; Watch streams get NOT_SERVING and end), every call whose handler started
        runs to its end. The port closes (GOAWAY: clients reconnect elsewhere) once none is
        left and no call has arrived for ``DRAIN_QUIET_S``, or after ``REFUSAL_WINDOW_S``,
        while longer calls go on. Calls still running when the
        grace period ends are answered UNAVAILABLE (retryable, never CANCELLED) and counted in
        the log line; decodes still running then are not waited for.
        """
        if self._server is None or self._stopped.is_set():
            return
        grace = self.config.grace_period_s
        until = time.monotonic() + grace
        self.gate.begin_drain(time.monotonic() + min(grace, REFUSAL_WINDOW_S))
        log.info("draining: up to %.1fs for %d call(s) in flight", grace, self.gate.in_flight)
        await self.health.enter_graceful_shutdown()
        if self._rest is not None:  # REST refuses new requests (503) from now on, too
            self._rest.begin_drain()
        # Refusals first: the ports stay open while started calls finish and refused callers
        # move on, so grpc's shutdown, which cancels calls it holds but has not handed to a
        # handler (CANCELLED), finds none. Calls that take longer keep running after it.
        await self.gate.wait_drained(min(grace, REFUSAL_WINDOW_S), DRAIN_QUIET_S)
        # Then the REST port closes once its own clients have moved on (the same window and
        # quiet time; its replies say Connection: close), idle keep-alive connections first,
        # and its requests in progress finish beside gRPC's, bounded by the grace period.
        rest_stopped = asyncio.ensure_future(self._rest.stop(
            min(grace, REFUSAL_WINDOW_S), DRAIN_QUIET_S)) if self._rest else None
        # GOAWAY: clients open new connections (to other replicas) for their next calls.
        margin = CUT_OFF_TIMEOUT_S + REFUSAL_GRACE_S
        stopping = asyncio.ensure_future(
            self._server.stop(max(until - time.monotonic(), 0.0) + margin))
        unfinished = 0
        if not await self.gate.wait_drained(until - time.monotonic()):
            unfinished = await self.gate.cut_off(CUT_OFF_TIMEOUT_S)  # UNAVAILABLE: retried
        await stopping
        if rest_stopped is not None:
            try:
                await asyncio.wait_for(rest_stopped, max(until - time.monotonic(), 0.0) + 0.5)
            except TimeoutError:
                log.warning("the REST port did not drain within the grace period")
        if self.models is not None:  # nothing waits on it now; bounded whatever still decodes
            try:
                await asyncio.wait_for(self.models.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("the model pipeline did not stop within %.1fs", CLOSE_TIMEOUT_S)
        if self._core is not None:
            self._core.shared_memory.close()
        if self._servicer is not None:
            self._servicer.close()
        if self._health_server is not None:
            await self._health_server.stop(None)
        # last: a scrape during the drain still sees it progress. Not waited for: its HTTP
        # server notices a shutdown only every 0.5 s.
        threading.Thread(target=self._metrics_endpoint.close, name="metrics-close",
                         daemon=True).start()
        self._stopped.set()
        log.info("stopped: %d call(s) served, %d refused while draining, %d cut off at the "
                 "end of the grace period", self.gate.started - unfinished, self.gate.refused,
                 unfinished)

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> None:
    """Runs the server until SIGTERM or SIGINT, then drains and returns."""
    server = HardscoreServer(config)
    await server.load_models()
    await server.start()
    announce_ready(server)  # a supervisor's worker: tells it the ports
    loop = asyncio.get_running_loop()
    stopping: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        nonlocal stopping
        log.info("received %s", signal.Signals(signum).name)
        if stopping is None:
            stopping = loop.create_task(server.stop())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait()
    workers = [t for t in threading.enumerate()
               if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if workers:
        # Pool threads, idle or finishing work of calls that have ended (a decode cannot be
        # interrupted): joining them at exit would make the grace period no bound.
        log.info("exiting without joining %d worker thread(s) (%s)", len(workers),
                 ", ".join(sorted({t.name.rsplit("_", 1)[0] for t in workers})))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"hardscore-server: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.workers > 1 and not is_worker():  # N processes on one port (supervisor.py)
        return supervise(config, sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:  # found at start-up: TLS files, token file
        print(f"hardscore-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ModelDirError, ModelLoadError) as exc:
        log.error("cannot serve the model: %s", exc)
        return 3
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
