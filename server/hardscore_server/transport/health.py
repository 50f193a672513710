"""The standard gRPC health service (``grpc.health.v1``) of one server, drain-aware."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2


class HealthService(health.aio.HealthServicer):  # type: ignore[name-defined,misc]
    """The standard gRPC health service, with the List method that grpcio-health-checking's
    asyncio servicer lacks (it would answer UNKNOWN and log a traceback on every call), and a
    Watch that ends once the server drains: it sends NOT_SERVING and returns OK at once, so an
    open Watch never holds the drain (grpcio-health-checking's would stay open until the grace
    period ends)."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed: asyncio.Condition | None = None
        self._draining = False
        self._version = 0  # bumped on every change; a Watch waits for a new one

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made on the server's loop
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        condition = self._condition()
        async with condition:
            self._version += 1
            condition.notify_all()

    async def set(self, service: str, status: int) -> None:
        if self._draining:
            return
        self._statuses[service] = status
        await super().set(service, status)
        await self._notify()

    async def enter_graceful_shutdown(self) -> None:
        self._draining = True
        for service in self._statuses:
            self._statuses[service] = health_pb2.HealthCheckResponse.NOT_SERVING
        await super().enter_graceful_shutdown()
        await self._notify()

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Sends the status now and on every change; after NOT_SERVING at the drain, ends."""
        condition = self._condition()
        sent = None
        while True:
            version = self._version
            status = (health_pb2.HealthCheckResponse.NOT_SERVING if self._draining else
                      self._statuses.get(request.service,
                                         health_pb2.HealthCheckResponse.SERVICE_UNKNOWN))
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(
                    status=status))  # type: ignore[arg-type]
                sent = status
            if self._draining:
                return
            async with condition:  # never misses a change made since ``version`` was read
                while self._version == version:
                    await condition.wait()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status)  # type: ignore[arg-type]
            for service, status in self._statuses.items()
        })
