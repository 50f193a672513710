"""The process's one request budget: bytes of requests in progress, every gRPC call and stream
of every protocol and every REST body together.

A message is admitted when it has arrived and before it is parsed: it takes ``MEMORY_FACTOR``
times its size and holds it until its request's decoding and scoring are done. A message larger
than the budget takes all of it but a small message's share (``SMALL_BYTES`` x
``MEMORY_FACTOR``), so it is served alone while small requests still pass beside it. A message
that does not fit waits for others to finish, first fit (a small request passes a large one),
at most ``max_wait_s`` and never past its deadline; while it waits its bytes count as waiting,
and at most half the budget may wait: a message beyond that (over ``SMALL_BYTES``) is refused
at once. Refusals are ``RequestBudgetBusy`` (RESOURCE_EXHAUSTED).

What is being read is bounded too. A unary request and a stream's first message are received
only within one of ``read_slots`` (one pool for both; the transport takes one before it asks
gRPC for the message and gives it back once the message has arrived, when its size is known), at
most ``read_timeout_s``: a message that has not arrived by then ends its call
(``MessageReadTimeout``), so a client that sends slowly, or opens a stream and never sends,
holds a slot no longer. Free slots go round-robin by peer (a connection): each peer with reads
waiting gets the next slot in turn, its own reads in arrival order, so a caller's small request
waits for at most one read of each other peer, however many a hostile peer has queued. A
stream's next message is read only once the budget holds room for one as large as its previous
one (``reserve``), so streams are flow-controlled by bytes; a stream idle for ``read_timeout_s``
gives that room back and keeps waiting without it.

The REST port's bodies draw on the same budget (``take_body``): one process-wide budget for
request bytes, whatever the protocol. A body takes its bytes plus its estimated parsing memory
(counted by the REST transport), at most ``largest`` (beyond, it could never be read: the
transport answers 413), and waits for room first fit beside the gRPC messages, at most its
wait (then ``RequestBudgetBusy``: 503 with Retry-After). Its unread bytes stay in the socket
while it waits, so it is not counted against the waiting limit. Used on the event loop only
(not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable
from typing import TypeVar

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.byte_budget import ByteBudget
from hardscore_server.pipeline.decode_budget import mib
from hardscore_server.pipeline.errors import (
    DeadlineExpired,
    MessageReadTimeout,
    RequestBudgetBusy,
)

T = TypeVar("T")

MEMORY_FACTOR = 3
"""What a message costs in memory while it is served, in multiples of its size: the bytes gRPC
read, the parsed message and what its request copies out of it (a 40 MB ScoreImages request of
one padded PNG peaked at 4.7 times its size with the transient copies, 3 times held)."""
SMALL_BYTES = 1024 * 1024
"""A message up to this size always may wait (first fit lets it pass the large ones)."""
MAX_WAIT_S = 30.0
"""The longest a message waits for request budget (seconds) before RESOURCE_EXHAUSTED."""
READ_TIMEOUT_S = 10.0
"""The longest a message read within a read slot may take to arrive (message_read_timeout_s)."""


class RequestBudget(ByteBudget):
    """``capacity`` bytes of request messages in progress, granted first fit."""

    def __init__(self, capacity: int, max_message_bytes: int,
                 metrics: ServerMetrics | None = None, max_wait_s: float = MAX_WAIT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        if capacity < 1:
            raise ValueError(f"request budget must be >= 1 byte, got {capacity}")
        self._metrics = metrics
        self.waiting_bytes = 0
        """Bytes of messages that have arrived and wait for budget."""
        super().__init__(capacity, first_fit=True, on_change=self._update_metrics)
        self.max_wait_s = max_wait_s
        self.read_timeout_s = read_timeout_s
        self.waiting_limit = capacity // 2
        small = SMALL_BYTES * MEMORY_FACTOR
        self.largest = capacity - small if capacity >= 4 * small else capacity
        """The most one message takes: a small message's share stays free beside it."""
        self.read_slots = max(1, capacity // (MEMORY_FACTOR * max(max_message_bytes, 1)))
        self.free_slots = self.read_slots
        self._turns: dict[str, deque[asyncio.Future[None]]] = {}
        """The reads waiting for a slot, by peer; the peers in turn order (dict order)."""
        if metrics is not None:
            metrics.request_budget.set(capacity)

    async def read_in_slot(self, read: Awaitable[T], peer: str = "") -> T:
        """Awaits ``read`` (gRPC receiving a unary request or a stream's first message) within a
        read slot, waited for first (cancellable; slots go round-robin by ``peer``), at most
        ``read_timeout_s``: MessageReadTimeout when the message has not arrived by then."""
        try:
            await self._take_slot(peer)
        except BaseException:
            close = getattr(read, "close", None)  # never started: closed, not left unawaited
            if callable(close):
                close()
            raise
        try:
            return await asyncio.wait_for(read, self.read_timeout_s)
        except TimeoutError:
            self._refuse("read_timeout")
            raise MessageReadTimeout(
                f"no complete request message within {self.read_timeout_s:g} s of the server "
                "starting to read it (message_read_timeout_s): a message is read only while "
                "it holds one of the server's few read slots; send each message at once, "
                "and open a stream when its first message is ready") from None
        finally:
            self._give_slot()

    async def _take_slot(self, peer: str) -> None:
        if self.free_slots > 0 and not self._turns:
            self.free_slots -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._turns.setdefault(peer, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._give_slot()  # granted in the same instant: pass it on
            else:
                queue = self._turns.get(peer)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(granted)
                    if not queue:
                        del self._turns[peer]
            raise

    def _give_slot(self) -> None:
        """A slot is free: to the first peer in turn (its oldest read), that peer to the end of
        the turn if it has more; kept free when no read waits."""
        while self._turns:
            peer = next(iter(self._turns))
            queue = self._turns.pop(peer)
            granted = queue.popleft()
            if queue:
                self._turns[peer] = queue
            if not granted.done():
                granted.set_result(None)
                return
        self.free_slots += 1

    async def take_body(self, need: int, wait_s: float) -> None:
        """Takes ``need`` bytes for a REST body (its bytes and estimated parsing memory, at
        most ``largest``: the transport refuses more), waiting first fit at most ``wait_s``
        seconds; RequestBudgetBusy (counted ``busy``) when they did not come. Cancelled while
        waiting, it takes nothing."""
        try:
            await self.take(need, wait_s)
        except TimeoutError:
            self._refuse("busy")
            raise RequestBudgetBusy(
                f"request budget busy: {mib(self.in_use)} of {mib(self.capacity)} in use "
                f"(request_budget_bytes), this request body needs {mib(need)} more and "
                f"waited {wait_s:g} s (http_body_timeout_s); retry later") from None

    async def reserve(self, size: int, deadline: float | None) -> int:
        """Takes room for a stream's next message, as large as ``size`` (its previous one), and
        returns it: hand it to ``admit`` once the message has arrived, or release it. The same
        errors as ``admit``."""
        need = min(size * MEMORY_FACTOR, self.largest)
        await self._take_until(need, deadline, "stream")
        return need

    async def admit(self, size: int, deadline: float | None, what: str = "request",
                    reserved: int = 0) -> int:
        """Takes ``MEMORY_FACTOR`` x ``size`` bytes (at most ``largest``) for a message that has
        arrived; returns what it took, to be released when the request is done. Waits when
        they do not fit now; RequestBudgetBusy when the waiting bytes would pass their limit
        (at once) or the wait passes ``max_wait_s``, DeadlineExpired when ``deadline`` (a
        time.monotonic() instant) passes first. Cancelled while waiting, it takes nothing.
        ``reserved``: what the message holds already (``reserve``), kept when enough, else
        given back while it waits."""
        need = min(size * MEMORY_FACTOR, self.largest)
        if need <= reserved:
            self.release(reserved - need)
            return need
        if self.try_take(need - reserved):
            return need
        self.release(reserved)  # waiting with a part held could keep others waiting for it
        if self.try_take(need):
            return need
        if size > SMALL_BYTES and self.waiting_bytes + size > self.waiting_limit:
            self._refuse("full")
            raise RequestBudgetBusy(
                f"request budget full: {mib(self.in_use)} of {mib(self.capacity)} in use "
                f"(request_budget_bytes) and {mib(self.waiting_bytes)} waiting, this {what} "
                f"holds {mib(size)}; retry later")
        self._wait(size)  # what it holds while it waits: the bytes gRPC read
        try:
            await self._take_until(need, deadline, what)
        finally:
            self._wait(-size)
        return need

    async def _take_until(self, need: int, deadline: float | None, what: str) -> None:
        outcome = await self.take_before(need, deadline, self.max_wait_s)
        if outcome == "deadline":
            raise DeadlineExpired(
                f"deadline passed while this {what} waited for request budget; nothing "
                "computed")
        if outcome == "busy":
            self._refuse("busy")
            raise RequestBudgetBusy(
                f"request budget busy: {mib(self.in_use)} of {mib(self.capacity)} in use "
                f"(request_budget_bytes), this {what} needs {mib(need)} and waited "
                f"{self.max_wait_s:g} s; retry later")

    def _wait(self, amount: int) -> None:
        self.waiting_bytes += amount
        self._update_metrics()

    def _refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.request_budget_refusals.labels(reason).inc()

    def _update_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.request_budget_in_use.set(self.in_use)
            self._metrics.request_budget_waiting.set(self.waiting_bytes)
