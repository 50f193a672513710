"""``hardscore-server``: builds the gRPC server, serves until SIGTERM/SIGINT, then drains.

Start-up order: configuration -> model (load, validate, warm up) -> gRPC port and metrics port
-> health SERVING. On SIGTERM or SIGINT the health status turns NOT_SERVING, the port stops
accepting calls, accepted calls get up to ``grace_period_s`` to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hardscore_server.config import ConfigError, ServerConfig, parse_args
from hardscore_server.image_pipeline import ImagePipeline
from hardscore_server.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.inference_protocol.core import InferenceCore
from hardscore_server.inference_protocol.rest import RestServer
from hardscore_server.inference_protocol.servicer import SERVICE_NAME as INFERENCE_SERVICE
from hardscore_server.inference_protocol.servicer import InferenceProtocolServicer
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model_dir import DEFAULT_MODEL_DIR, ModelDirError
from hardscore_server.model_runner import ModelLoadError, ModelRunner
from hardscore_server.reflection_v1 import enable_server_reflection
from hardscore_server.security import ServerSecurity
from hardscore_server.servicer import ScoringServicer
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

log = logging.getLogger("hardscore_server")

SCORING_SERVICE = pb.DESCRIPTOR.services_by_name["ScoringService"].full_name


class HealthService(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    """The standard gRPC health service, with the List method that grpcio-health-checking's
    asyncio servicer lacks (it would answer UNKNOWN and log a traceback on every call)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}

    async def set(self, service: str, status: int) -> None:
        self._statuses[service] = status
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        await super().enter_graceful_shutdown()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status)  # type: ignore[arg-type]
            for service, status in self._statuses.items()
        })


class HardscoreServer:
    """One running service: gRPC server, its servicers, the model pipeline and /metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.images: ImagePipeline | None = None
        self.port = 0
        self.metrics_port = -1
        self.health = HealthService()
        self.security = ServerSecurity(config)  # TLS files and tokens: ConfigError if bad
        self.health_port = -1
        self.http_port = -1
        self._rest: RestServer | None = None
        self._core: InferenceCore | None = None
        self._health_server: grpc.aio.Server | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: ScoringServicer | None = None
        self._stopped = asyncio.Event()

    def load_model(self) -> None:
        """Loads, validates and warms up the model (skipped with ``no_model``)."""
        if self.config.no_model:
            return
        model_dir = Path(self.config.model_dir) if self.config.model_dir else DEFAULT_MODEL_DIR
        runner = ModelRunner(
            model_dir,
            execution_provider=self.config.execution_provider,
            instances=self.config.instances,
            intra_op_threads=self.config.intra_op_threads,
            allow_spinning=self.config.allow_spinning,
        )
        seconds = runner.warm_up((1, self.config.max_batch_size))
        log.info("model %s v%s from %s on %s (%d instance(s), %d thread(s) each), warm-up %.2fs",
                 runner.manifest.name, runner.manifest.version, model_dir, runner.provider,
                 len(runner.sessions), runner.intra_op_threads, seconds)
        self.images = ImagePipeline(runner, self.config, self.metrics)

    async def start(self) -> None:
        """Binds the ports and starts serving; health turns SERVING once everything is up."""
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.aio.server(
            options=options, interceptors=self.security.interceptors(self.metrics))
        self._servicer = ScoringServicer(c, self.metrics, self.images)
        pb_grpc.add_ScoringServiceServicer_to_server(self._servicer, self._server)
        services = [SCORING_SERVICE]
        core = None
        if self.images is not None:  # the Open Inference Protocol, for standard clients
            core = self._core = InferenceCore(self.images)
            oip_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceProtocolServicer(self.metrics, core), self._server)
            services.append(INFERENCE_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_server_reflection((*services, health.SERVICE_NAME), self._server)  # v1alpha, v1
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        self.port = self.security.add_port(self._server, address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        if c.health_port >= 0:  # plaintext, health only: for probes that cannot do TLS
            self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            health_address = address.rpartition(":")[0] + f":{c.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise OSError(f"cannot bind health port {health_address}")
            await self._health_server.start()
        if core is not None and c.http_port >= 0:  # the same protocol over HTTP/REST
            self._rest = RestServer(c, self.metrics, core, self.security.tokens)
            self.http_port = await self._rest.start(c.host, c.http_port)
        await self._server.start()
        if c.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(c.metrics_host, c.metrics_port)
        for service in ("", *services):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self._rest is not None:  # before the gRPC line: launchers wait for that one
            log.info("serving HTTP (KServe V2 REST) on %s:%d", c.host, self.http_port)
        if self._health_server is not None:
            log.info("health checks (plaintext, grpc.health.v1 only) on %s:%d", c.host,
                     self.health_port)
        log.info("serving gRPC on %s:%d, metrics on %s:%d (%s)", c.host, self.port, c.metrics_host,
                 self.metrics_port, self.security.describe())

    async def stop(self) -> None:
        """Stops accepting, lets accepted calls finish within the grace period, then stops."""
        if self._server is None or self._stopped.is_set():
            return
        log.info("draining: up to %.1fs for accepted calls", self.config.grace_period_s)
        await self.health.enter_graceful_shutdown()
        # REST drains beside gRPC; gRPC's stop starts first, in this task, as it always has.
        rest_stopped = asyncio.ensure_future(self._rest.stop()) if self._rest else None
        await self._server.stop(self.config.grace_period_s)
        if rest_stopped is not None:
            await rest_stopped
        if self.images is not None:
            await self.images.close()
        if self._core is not None:
            self._core.shared_memory.close()
        if self._servicer is not None:
            self._servicer.close()
        if self._health_server is not None:
            await self._health_server.stop(None)
        self.metrics.close()  # last: a scrape during the drain still sees it progress
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> None:
    """Runs the server until SIGTERM or SIGINT, then drains and returns."""
    server = HardscoreServer(config)
    server.load_model()
    await server.start()
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
