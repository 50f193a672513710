"""The gate every call passes on the gRPC port: drain bookkeeping and unparseable requests.

One server interceptor wraps every method handler of every service (hardscore.v1, the Open
Inference Protocol, grpc.health.v1, reflection), so neither concern is per-method code:

- **Drain.** The gate counts the calls whose handler has started and not yet returned. Once
  ``begin_drain()`` is called, a new call is answered UNAVAILABLE before its handler starts
  (clients retry it elsewhere; the SDK retries UNAVAILABLE), while the calls already started
  run to the end; ``wait_drained()`` waits until none is left and callers have stopped
  arriving (closing the port while calls arrive would let grpc's shutdown cancel the ones
  it has received but not handed to a handler yet: CANCELLED), and ``cut_off()`` ends
  those still running when the grace period is over with UNAVAILABLE too (never CANCELLED).
  Health checks are neither refused nor counted: they answer NOT_SERVING during the drain
  and never hold it. A refused request stream is read to its half-close (at most
  ``REFUSAL_READ_S``, its messages discarded) before the answer: grpcio's asyncio client turns
  an answer that overtakes one of its writes into INTERNAL "Internal error from Core" (not
  retryable; grpc/grpc issue 36066), so a stream its client writes within that time is told
  UNAVAILABLE as it should be.
- **Calls gRPC ended before their handler.** grpc runs no handler for a unary request it
  never received, nor for a call cancelled before its task ran (the call's deadline passed,
  or its client left, first); the gate counts those of the recorded services in
  ``hardscore_calls_dropped_total`` when grpc's task for the call ends.
- **Unparseable requests.** A request message that is not a valid protobuf of the method's
  request type (random bytes, a truncated message) is answered INVALID_ARGUMENT naming the
  type, with one INFO log line and no traceback, instead of grpc's UNKNOWN plus a traceback.
  Unary requests are checked before the handler starts; on a stream the bad message ends the
  call when the handler reads it (hardscore.v1 streams name the message's index).
- **Request bytes** (with a ``RequestBudget``; health checks aside). A unary request is read
  by gRPC only once it holds one of the budget's read slots, and every message, unary or of a
  stream, is admitted to the budget when it has arrived and before it is parsed; it holds its
  bytes until its request is done: a unary call's when its handler returns, a stream message's
  when its servicer's task for it is done (``release_when_done``) or the call ends. A stream
  reads its first message within a read slot, and its next one only once it holds room for
  one as large as its previous one, so streams are flow-controlled by bytes. Read slots go
  round-robin by the call's peer (its connection). A refused unary
  call is answered with the refusal's status (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED); on a
  stream the refusal ends the call where the handler reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import InvalidRequest, RequestError
from hardscore_server.pipeline.request_budget import RequestBudget
from hardscore_server.transport.statuses import answer_to

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
POLL_S = 0.01
PUSHBACK = "grpc-retry-pushback-ms"
"""Trailing metadata telling a client's gRPC retry policy when to retry (milliseconds)."""
DRAINING = "the server is shutting down and accepts no new calls; retry (another replica)"
REFUSAL_READ_S = 0.2
"""How long a refused request stream is read (and discarded) for its client to half-close."""
CUT_OFF = ("the server shut down before this call finished (its grace period ended); retry "
           "(another replica)")


_CUT_OFF_TASKS: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def was_cut_off() -> bool:
    """Whether the running call (the current task) is being cut off by a drain: its caller
    gets UNAVAILABLE, whatever cancelled its handler."""
    task = asyncio.current_task()
    return task is not None and task in _CUT_OFF_TASKS


async def _read_to_half_close(requests: AsyncIterator[Any], limit_s: float) -> None:
    """Reads and discards a stream's messages until its client half-closes, at most ``limit_s``
    s (one message in memory at a time; a message that does not parse ends the reading)."""
    async def discard() -> None:
        async for _ in requests:
            pass

    with contextlib.suppress(TimeoutError, InvalidRequest):
        await asyncio.wait_for(discard(), limit_s)


def _write_failed_types() -> tuple[type[BaseException], ...]:
    """grpc's exception for a write the core refused (``ExecuteBatchError``: the call is over,
    its client gone), where this grpc has it."""
    found = getattr(importlib.import_module("grpc._cython.cygrpc"), "ExecuteBatchError", None)
    return (found,) if isinstance(found, type) and issubclass(found, BaseException) else ()


_WRITE_FAILED = _write_failed_types()
_WRITE_ENDED: tuple[type[BaseException], ...] = (asyncio.CancelledError, *_WRITE_FAILED)
"""What ends a reply's write when its client has gone: the handler cancelled, or the write
refused."""


async def _write_all(replies: AsyncGenerator[Any, None], context: grpc.aio.ServicerContext,
                     path: str) -> None:
    """Writes every reply of a response stream. A client that cancels while a reply is being
    written makes the write fail before grpc has noticed the cancel: grpc would log that
    failure as an ERROR with a traceback. Here it ends the handler as the cancel does, which
    grpc logs at DEBUG only. Either way (the write refused, or the handler cancelled during
    it) the generator is told with ``CancelledError`` at its ``yield``, so it counts its call
    as any cancelled call (closing it there instead would leave the call uncounted)."""
    try:
        async for reply in replies:
            try:
                await context.write(reply)
            except _WRITE_ENDED as exc:
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await replies.athrow(asyncio.CancelledError())
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.debug("%s: a reply could not be written, its client has gone (%s)", path,
                          type(exc).__name__)
                raise asyncio.CancelledError from None
    finally:
        await replies.aclose()


class _Arrival:
    """One call as the gate saw it arrive: whether its handler ran."""

    __slots__ = ("handled",)

    def __init__(self) -> None:
        self.handled = False


class _Raw:
    """A request message as it arrived: parsed only once admitted to the request budget."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Held:
    """The request budget one call holds: each admitted message's bytes until it is done."""

    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget
        self._by_message: dict[int, int] = {}

    def add(self, message: object, need: int) -> None:
        key = id(message)
        self._by_message[key] = self._by_message.get(key, 0) + need

    def release(self, message: object) -> None:
        need = self._by_message.pop(id(message), 0)
        if need:
            self._budget.release(need)

    def release_all(self) -> None:
        need = sum(self._by_message.values())
        self._by_message.clear()
        if need:
            self._budget.release(need)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _AdmittedStream:
    """A request stream read one message at a time within the request budget: the first within
    a read slot, each next one once room for one as large as the previous one is reserved;
    admitted when it has arrived, then parsed (UnparseableMessage when it does not parse)."""

    def __init__(self, requests: AsyncIterator[Any], budget: RequestBudget, held: _Held,
                 context: grpc.aio.ServicerContext, parse: Callable[[bytes], Any]) -> None:
        self._requests = requests.__aiter__()
        self._budget = budget
        self._held = held
        self._context = context
        self._parse = parse
        self._last = -1  # the previous message's size (-1: none yet)

    def __aiter__(self) -> _AdmittedStream:
        return self

    async def __anext__(self) -> Any:
        deadline = _deadline(self._context)
        if self._last < 0:  # its size is unknown: read within a read slot, timed
            reserved = 0
            item = await self._budget.read_in_slot(self._requests.__anext__(),
                                                   self._context.peer())
        else:
            reserved = await self._budget.reserve(self._last, deadline)
            try:
                item, reserved = await self._read_reserved(reserved)
            except BaseException:
                self._budget.release(reserved)
                raise
        raw = _take(item)
        self._last = len(raw)
        try:
            need = await self._budget.admit(len(raw), deadline, "stream message", reserved)
            message = self._parse(raw)
        except BaseException:
            raw = b""  # a traceback keeps this frame: not its bytes
            raise
        self._held.add(message, need)
        return message

    async def _read_reserved(self, reserved: int) -> tuple[_Raw, int]:
        """The next message, read holding ``reserved`` bytes; an idle stream gives them back
        after the read timeout and keeps waiting without them. Returns what it still holds."""
        read = asyncio.ensure_future(self._requests.__anext__())
        try:
            done, _ = await asyncio.wait((read,), timeout=self._budget.read_timeout_s)
            if not done:
                self._budget.release(reserved)
                reserved = 0
            return await read, reserved
        finally:
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                read.exception()  # retrieved: the call ended while it was read

    def release(self, message: object) -> None:
        self._held.release(message)


def _take(item: _Raw) -> bytes:
    """A message's bytes, taken out of the object gRPC may keep referring to."""
    raw, item.data = item.data, b""
    return raw


def release_when_done(requests: object, message: object) -> Callable[[object], None]:
    """A done callback for the task answering a stream ``message`` of ``requests``: gives back
    the request budget the message holds (nothing for a stream read without the budget)."""
    def release(_: object) -> None:
        if isinstance(requests, _AdmittedStream):
            requests.release(message)

    return release


class UnparseableMessage(InvalidRequest):
    """A request message that does not parse as the method's request type (INVALID_ARGUMENT)."""


class _Unparseable:
    """What the wrapped deserializer returns for a unary request that does not parse."""

    def __init__(self, error: UnparseableMessage) -> None:
        self.error = error


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    """The protobuf type a deserializer builds ('the request type' when unknown)."""
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "")) or "the request type"


def _split(path: str | bytes) -> tuple[str, str]:
    text = path.decode("latin-1") if isinstance(path, bytes) else path or ""
    service, _, method = text.strip("/").partition("/")
    return service, method


class CallGate(grpc.aio.ServerInterceptor):
    """Counts started calls, refuses new ones while draining, answers unparseable requests.

    ``recorded_services`` are the services whose calls are counted in
    ``hardscore_requests_total`` (their servicers record every call they run); calls the gate
    answers itself for them (unparseable, refused while draining) are counted there too.
    """

    def __init__(self, metrics: ServerMetrics | None = None,
                 recorded_services: frozenset[str] = frozenset(),
                 requests: RequestBudget | None = None) -> None:
        self._metrics = metrics
        self._recorded = recorded_services
        self._requests = requests
        self.draining = False
        self.in_flight = 0
        self.started = 0
        """Calls whose handler started (health checks excluded), since the server started."""
        self.refused = 0
        """Calls answered UNAVAILABLE because the server was draining."""
        self.dropped = 0
        """Recorded calls that grpc ended before their handler ran."""
        self._last_arrival = 0.0  # time.monotonic() of the last call refused or ended
        self._closing_at = 0.0
        self._running: set[asyncio.Task[Any]] = set()
        self._cut_off = False

    def begin_drain(self, closing_at: float = 0.0) -> None:
        """From now on new calls (except health checks) are answered UNAVAILABLE, telling
        gRPC's retry to wait until ``closing_at`` (a ``time.monotonic()`` instant: when the
        port is expected to close, so the retry goes to a new connection) plus 0.1 s."""
        self.draining = True
        self._closing_at = closing_at

    async def wait_drained(self, timeout: float, quiet: float = 0.0) -> bool:
        """Waits until no started call is left and no call has arrived or ended for ``quiet``
        s (the callers have moved on), at most ``timeout`` s; True if no started call is
        left."""
        until = time.monotonic() + max(timeout, 0.0)
        while True:
            now = time.monotonic()
            if self.in_flight == 0 and now - self._last_arrival >= quiet:
                return True
            if now >= until:
                return self.in_flight == 0
            await asyncio.sleep(min(POLL_S, until - now))

    async def cut_off(self, timeout: float = 0.5) -> int:
        """Ends every call still running with UNAVAILABLE (the grace period is over): its
        handler is cancelled and the caller told to retry. Returns how many there were."""
        self._cut_off = True
        running = list(self._running)
        for task in running:
            _CUT_OFF_TASKS.add(task)
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)
        return len(running)

    def _record(self, service: str, method: str, code: grpc.StatusCode) -> None:
        if self._metrics is not None and service in self._recorded:
            self._metrics.requests.labels(method, code.name).inc()

    def _enter(self, counted: bool) -> None:
        if counted:
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            self.started += 1
            self.in_flight += 1
            if self._metrics is not None:
                self._metrics.calls_in_flight.inc()

    def _leave(self, counted: bool) -> None:
        if counted:
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            self.in_flight -= 1
            self._last_arrival = time.monotonic()  # its caller may send the next one now
            if self._metrics is not None:
                self._metrics.calls_in_flight.dec()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED
        service, method = _split(handler_call_details.method)
        arrival = _Arrival()
        task = asyncio.current_task()  # grpc's task for this call: it runs the handler too
        if self._metrics is not None and service in self._recorded and task is not None:
            # grpc runs no handler for a unary request it never received, nor for a call
            # cancelled before its task ran (the call's deadline passed, or its client left,
            # first): count it when grpc's task for it ends
            task.add_done_callback(lambda _: self._count_dropped(method, arrival))
        return self._wrap(handler, service, method, arrival)

    def _count_dropped(self, method: str, arrival: _Arrival) -> None:
        if not arrival.handled and self._metrics is not None:
            self.dropped += 1
            self._metrics.calls_dropped.labels(method).inc()

    def _wrap(self, handler: grpc.RpcMethodHandler, service: str, method: str,
              arrival: _Arrival) -> grpc.RpcMethodHandler:
        counted = service != HEALTH_SERVICE
        path = f"/{service}/{method}"
        deserializer: Any = handler.request_deserializer
        type_name = _type_name(deserializer) if deserializer is not None else ""
        streaming_in = handler.request_streaming
        budget = self._requests if service != HEALTH_SERVICE and deserializer else None
        # With the budget, a unary request is taken from gRPC as a stream of one message: gRPC
        # receives a unary request whole before any handler or interceptor can hold it back,
        # a stream's message only when the handler asks for it (within a read slot).
        wire_streaming = streaming_in or budget is not None

        def deserialize(raw: bytes) -> Any:
            try:
                return deserializer(raw)
            except Exception as exc:  # DecodeError, RecursionError...: never a traceback
                raise UnparseableMessage(
                    f"the request is not a valid {type_name} message ({type(exc).__name__}: "
                    f"{exc}); send a serialized {type_name}") from None

        def parse(raw: bytes) -> Any:
            if budget is not None:  # parsed once admitted to the request budget
                return _Raw(raw)
            try:
                return deserialize(raw)
            except UnparseableMessage as error:
                if streaming_in:
                    raise  # raised where the handler reads the stream
                return _Unparseable(error)

        async def admitted(request: Any, context: grpc.aio.ServicerContext, held: _Held
                           ) -> Any:
            """A unary request admitted to the request budget and parsed, or the stream's
            messages read within it; the refusal answered."""
            if budget is None:
                return request
            if streaming_in:
                return _AdmittedStream(request, budget, held, context, deserialize)
            raw = b""
            try:  # the one message of a unary request, read within a read slot
                raw = _take(await budget.read_in_slot(anext(aiter(request)), context.peer()))
                need = await budget.admit(len(raw), _deadline(context))
            except StopAsyncIteration:
                remaining = context.time_remaining()
                if context.cancelled() or (remaining is not None and remaining <= 0):
                    # its deadline passed or its client left before the request came: no
                    # handler ran for it (counted in hardscore_calls_dropped_total)
                    arrival.handled = False
                    raise asyncio.CancelledError from None
                await invalid(context, UnparseableMessage(
                    f"the call ended without its request message; send one {type_name}"))
            except RequestError as exc:
                raw = b""  # the abort's traceback keeps this frame: not the bytes
                answer = answer_to(exc)
                self._record(service, method, answer.grpc_code)
                await context.abort(answer.grpc_code, answer.detail)
            held.add(held, need)
            try:
                return deserialize(raw)
            except UnparseableMessage as error:
                raw = b""
                await invalid(context, error)

        async def refuse_or_enter(request: Any, context: grpc.aio.ServicerContext) -> None:
            """Refuses the call (draining, or an unparseable unary request), else counts it."""
            arrival.handled = True
            if self.draining and counted:
                self.refused += 1
                self._last_arrival = time.monotonic()
                if wire_streaming:
                    await _read_to_half_close(request, REFUSAL_READ_S)
                    self._last_arrival = time.monotonic()
                self._record(service, method, grpc.StatusCode.UNAVAILABLE)
                wait_ms = int((max(self._closing_at - self._last_arrival, 0.0) + 0.1) * 1000)
                await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING,
                                    trailing_metadata=((PUSHBACK, str(wait_ms)),))
            if isinstance(request, _Unparseable):
                await invalid(context, request.error)
            self._enter(counted)

        async def invalid(context: grpc.aio.ServicerContext, error: UnparseableMessage) -> None:
            log.info("%s from %s: %s", path, context.peer(), error)  # one line, no traceback
            self._record(service, method, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        async def answer_cut_off(context: grpc.aio.ServicerContext) -> None:
            """Called with the handler cancelled: UNAVAILABLE if the drain cut it off."""
            if self._cut_off and counted:  # its servicer counted it (cancelled_code)
                await context.abort(grpc.StatusCode.UNAVAILABLE, CUT_OFF)

        inner: Any = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                      or handler.stream_stream)
        @contextlib.asynccontextmanager
        async def served(request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            """The handler's run: refused or counted on entry, then admitted to the request
            budget (the request it is given); a bad stream message or a cut-off answered on
            the way out; the budget given back and the call uncounted at the end."""
            await refuse_or_enter(request, context)
            held = _Held(budget) if budget is not None else None
            try:
                yield (request if held is None else await admitted(request, context, held))
            except UnparseableMessage as exc:  # a stream message, read by the handler
                await invalid(context, exc)
            except asyncio.CancelledError:
                await answer_cut_off(context)
                raise
            finally:
                if held is not None:
                    held.release_all()
                self._leave(counted)

        behavior: Callable[..., Any]
        if handler.response_streaming and inspect.isasyncgenfunction(inner):
            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> None:
                async with served(request, context) as request:
                    await _write_all(inner(request, context), context, path)
        else:  # a coroutine: unary response, or a stream written with context.write
            async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with served(request, context) as request:
                    return await inner(request, context)

        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[
            (wire_streaming, handler.response_streaming)]
        return kind(behavior, request_deserializer=parse if deserializer else None,
                    response_serializer=handler.response_serializer)
