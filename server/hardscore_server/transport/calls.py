"""What every gRPC call shares, whatever its protocol: recording its outcome in the request
metrics, answering a failure with the status its error maps to (``statuses``), its deadline,
and what a caller cancelled under its handler sees."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.batcher import deadline_passed
from hardscore_server.transport.call_gate import was_cut_off
from hardscore_server.transport.statuses import answer_to

log = logging.getLogger(__name__)
T = TypeVar("T")


class CallRecorder:
    """Runs calls for a servicer: records each call's status code and duration, answers a
    failure with the status its exception maps to (INTERNAL, logged, for unexpected ones)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.requests.labels(method, code.name).inc()
        self._metrics.request_duration.labels(method).observe(time.perf_counter() - started)

    async def fail(
        self, method: str, context: grpc.aio.ServicerContext, exc: Exception, started: float
    ) -> None:
        """Records and answers a failed call with the status its exception maps to."""
        answer = answer_to(exc)
        if not answer.expected:
            log.exception("%s failed unexpectedly", method, exc_info=exc)
        self.record(method, answer.grpc_code, started)
        await context.abort(answer.grpc_code, answer.detail)

    async def unary(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Awaits ``work()``: its result, or the call aborted with the mapped status code."""
        started = time.perf_counter()
        try:
            result = await work()
        except asyncio.CancelledError:
            self.record(method, cancelled_code(context), started)
            raise
        except Exception as exc:  # every failure gets a status, none takes the server down
            await self.fail(method, context, exc, started)
            raise AssertionError("unreachable: abort raises") from exc
        self.record(method, grpc.StatusCode.OK, started)
        return result


async def pass_on(replies: AsyncGenerator[Any, None], exc: BaseException) -> None:
    """Throws ``exc``, raised at the ``yield`` of a handler relaying ``replies`` (the call
    gate's way of ending a call cancelled while a reply is written), into ``replies`` at its
    own ``yield``, so that it ends, and counts its call, as when cancelled elsewhere. Left
    suspended there instead, it would never count the call (about 1 stream in 10 cancelled
    mid-write). What it raises in turn is the call's end already: not raised again."""
    with contextlib.suppress(BaseException):
        await replies.athrow(exc)


def cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """What the caller of a call cancelled under its handler sees: UNAVAILABLE when a drain
    cut it off, DEADLINE_EXCEEDED when its deadline has passed or is at most
    ``DEADLINE_SLACK_S`` away (the client's copy of the deadline starts first, so its reset
    usually arrives a little before the server's copy passes), else CANCELLED."""
    if was_cut_off():
        return grpc.StatusCode.UNAVAILABLE
    return (grpc.StatusCode.DEADLINE_EXCEEDED if deadline_passed(deadline_of(context))
            else grpc.StatusCode.CANCELLED)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
