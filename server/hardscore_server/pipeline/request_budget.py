"""The server-wide request budget: bytes of request messages in progress on the gRPC port, every
call and stream of every protocol together.

A message is admitted when it has arrived and before it is parsed: it takes ``MEMORY_FACTOR``
times its size (at most the whole budget, so one message always fits alone) and holds it until
its request's decoding and scoring are done. A message that does not fit waits for others to
finish, first fit (a small request passes a large one), at most ``max_wait_s`` and never past
its deadline; while it waits its bytes count as waiting, and at most half the budget may wait:
a message beyond that (over ``SMALL_BYTES``) is refused at once. Refusals are
``RequestBudgetBusy`` (RESOURCE_EXHAUSTED).

What has been read but not admitted is bounded too: a unary request is received only within
one of ``read_slots`` (the transport takes one before gRPC reads the message and gives it back
once the message has arrived), and so is a stream's first message (slots of their own); a
stream's next message is read only once the budget holds room for one as large as its previous
one (``reserve``), so streams are flow-controlled by bytes. Used on the event loop only (not
thread-safe).
"""

from __future__ import annotations

import asyncio
import time

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.byte_budget import ByteBudget
from hardscore_server.pipeline.decode_budget import mib
from hardscore_server.pipeline.errors import DeadlineExpired, RequestBudgetBusy

MEMORY_FACTOR = 3
"""What a message costs in memory while it is served, in multiples of its size: the bytes gRPC
read, the parsed message and what its request copies out of it (a 40 MB ScoreImages request of
one padded PNG peaked at 4.7 times its size with the transient copies, 3 times held)."""
SMALL_BYTES = 1024 * 1024
"""A message up to this size always may wait (first fit lets it pass the large ones)."""
MAX_WAIT_S = 30.0
"""The longest a message waits for request budget (seconds) before RESOURCE_EXHAUSTED."""


class RequestBudget(ByteBudget):
    """``capacity`` bytes of request messages in progress, granted first fit."""

    def __init__(self, capacity: int, max_message_bytes: int,
                 metrics: ServerMetrics | None = None, max_wait_s: float = MAX_WAIT_S) -> None:
        if capacity < 1:
            raise ValueError(f"request budget must be >= 1 byte, got {capacity}")
        self._metrics = metrics
        self.waiting_bytes = 0
        """Bytes of messages that have arrived and wait for budget."""
        super().__init__(capacity, first_fit=True, on_change=self._update_metrics)
        self.max_wait_s = max_wait_s
        self.waiting_limit = capacity // 2
        self.read_slots = max(1, capacity // (MEMORY_FACTOR * max(max_message_bytes, 1)))
        self._reads = asyncio.Semaphore(self.read_slots)
        self._first_reads = asyncio.Semaphore(self.read_slots)
        if metrics is not None:
            metrics.request_budget.set(capacity)

    async def start_read(self) -> None:
        """Waits for a read slot (cancellable): take one before gRPC reads a unary request."""
        await self._reads.acquire()

    def end_read(self) -> None:
        """Gives a read slot back (the message has arrived, or its call has ended)."""
        self._reads.release()

    async def start_first_read(self) -> None:
        """Waits for a slot to read a stream's first message (cancellable)."""
        await self._first_reads.acquire()

    def end_first_read(self) -> None:
        self._first_reads.release()

    async def reserve(self, size: int, deadline: float | None) -> int:
        """Takes room for a stream's next message, as large as ``size`` (its previous one), and
        returns it: hand it to ``admit`` once the message has arrived, or release it. The same
        errors as ``admit``."""
        need = min(size * MEMORY_FACTOR, self.capacity)
        await self._take_until(need, deadline, "stream")
        return need

    async def admit(self, size: int, deadline: float | None, what: str = "request",
                    reserved: int = 0, counted: bool = False) -> int:
        """Takes ``MEMORY_FACTOR`` x ``size`` bytes (at most the capacity) for a message that has
        arrived; returns
        what it took, to be released when the request is done. Waits when they do not fit now;
        RequestBudgetBusy when the waiting bytes would pass their limit (at once) or the wait
        passes ``max_wait_s``, DeadlineExpired when ``deadline`` (a time.monotonic() instant)
        passes first. Cancelled while waiting, it takes nothing. ``reserved``: what the message
        holds already (``reserve``), kept when enough, else given back while it waits.
        ``counted``: the caller bounds such waiting messages itself (a read slot held until
        admitted): it waits, never refused as over the waiting limit."""
        need = min(size * MEMORY_FACTOR, self.capacity)
        if need <= reserved:
            self.release(reserved - need)
            return need
        if self.try_take(need - reserved):
            return need
        self.release(reserved)  # waiting with a part held could keep others waiting for it
        if self.try_take(need):
            return need
        if (not counted and size > SMALL_BYTES
                and self.waiting_bytes + size > self.waiting_limit):
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
        timeout = self.max_wait_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        try:
            await self.take(need, timeout)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired(
                    f"deadline passed while this {what} waited for request budget; nothing "
                    "computed") from None
            self._refuse("busy")
            raise RequestBudgetBusy(
                f"request budget busy: {mib(self.in_use)} of {mib(self.capacity)} in use "
                f"(request_budget_bytes), this {what} needs {mib(need)} and waited "
                f"{self.max_wait_s:g} s; retry later") from None

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
