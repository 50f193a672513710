"""The server-wide decode budget: bytes of image-decoding memory that may be in use at once.

Every call that decodes images asks for the estimated peak of what it will decode at the same
time (``decode_cost``) before its first decode, and gives it back when its last decode thread
is done, so the decode memory of all calls together stays within ``capacity``. Calls are
served first come, first served: a call that does not fit waits until earlier ones give budget
back, for at most ``max_wait_s`` and never past its deadline. A call that needs more than the
whole budget is refused at once. Used on the event loop only (not thread-safe).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import DeadlineExpired, DecodeBudgetExceeded

MAX_WAIT_S = 30.0
"""The longest a call waits for decode budget (seconds) before RESOURCE_EXHAUSTED."""

MIB = 1024 * 1024


def mib(n: int) -> str:
    """``n`` bytes as a short MiB figure for messages, e.g. "512.0 MiB"."""
    return f"{n / MIB:.1f} MiB"


@dataclass
class _Waiter:
    need: int
    granted: asyncio.Future[None]


class DecodeBudget:
    """``capacity`` bytes (>= 1) of decode memory shared by every call, granted in arrival
    order."""

    def __init__(self, capacity: int, metrics: ServerMetrics | None = None,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        if capacity < 1:
            raise ValueError(f"decode budget must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.max_wait_s = max_wait_s
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._metrics = metrics
        if metrics is not None:
            metrics.decode_budget.set(capacity)

    def try_acquire(self, need: int) -> bool:
        """Takes ``need`` bytes now if they fit and nobody waits (0 always fits); whether it
        did."""
        if need and (self._waiters or self.in_use + need > self.capacity):
            return False
        self._take(need)
        return True

    async def acquire(self, need: int, deadline: float | None = None) -> None:
        """Takes ``need`` bytes (>= 0), waiting in line for them.

        Raises DecodeBudgetExceeded when ``need`` exceeds the capacity (at once) or the wait
        passes ``max_wait_s``, DeadlineExpired when ``deadline`` (a time.monotonic() instant)
        passes first. Cancelled while waiting, it takes nothing.
        """
        if need > self.capacity:
            self._refuse("request_too_large")
            raise DecodeBudgetExceeded(
                f"the request's images need an estimated {mib(need)} of decode memory at once "
                f"(its largest images, decoded in parallel), more than this server's decode "
                f"budget of {mib(self.capacity)}; send the large images in separate requests")
        if need == 0 or self.try_acquire(need):
            return
        waiter = _Waiter(need, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._update_waiting()
        timeout = self.max_wait_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), max(timeout, 0.0))
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.granted.done():  # granted in the same instant: give it back
                self.release(need)
            else:
                waiter.granted.cancel()
                self._waiters.remove(waiter)
                self._grant()  # those behind it may fit now
            self._update_waiting()
            if isinstance(exc, asyncio.CancelledError):
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired(
                    "deadline passed while waiting for decode memory; nothing decoded") from None
            self._refuse("busy")
            raise DecodeBudgetExceeded(
                f"decode budget busy: {mib(self.in_use)} of {mib(self.capacity)} in use, this "
                f"request needs {mib(need)} and waited {self.max_wait_s:g} s; retry later"
            ) from None
        self._update_waiting()

    def release(self, need: int) -> None:
        """Gives ``need`` bytes back and wakes the waiters that fit now, in order."""
        self.in_use -= need
        self._grant()
        self._update_use()

    def _take(self, need: int) -> None:
        self.in_use += need
        self._update_use()

    def _grant(self) -> None:
        while self._waiters and self.in_use + self._waiters[0].need <= self.capacity:
            waiter = self._waiters.popleft()
            self._take(waiter.need)
            waiter.granted.set_result(None)

    def _refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.decode_budget_refusals.labels(reason).inc()

    def _update_use(self) -> None:
        if self._metrics is not None:
            self._metrics.decode_budget_in_use.set(self.in_use)

    def _update_waiting(self) -> None:
        if self._metrics is not None:
            self._metrics.decode_budget_waiting.set(len(self._waiters))
