"""A budget of bytes shared by waiters on one event loop: the mechanism under the decode budget,
the request budget (gRPC messages and REST bodies) and a stream's window of requests in
progress.

``take(need, timeout)`` takes ``need`` bytes when they fit beside those in use, waiting for
them when they do not; ``release`` gives bytes back and grants the waiters that fit now. In
strict arrival order (first come, first served: a waiter blocks those behind it), or with
``first_fit`` (a smaller request passes a larger one that does not fit yet). Callers refuse a
need over ``capacity`` themselves: it would never be granted. Not thread-safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Waiter:
    need: int
    granted: asyncio.Future[None]


class ByteBudget:
    """``capacity`` bytes; ``in_use`` of them taken. ``on_change`` is called whenever
    ``in_use`` or the number of waiters (``waiting``) changes."""

    def __init__(self, capacity: int, first_fit: bool = False,
                 on_change: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._first_fit = first_fit
        self._waiters: list[_Waiter] = []
        self._on_change = on_change

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_take(self, need: int) -> bool:
        """Takes ``need`` bytes now if they fit (and, in arrival order, nobody waits; 0 always
        fits); whether it did."""
        if need and ((self._waiters and not self._first_fit)
                     or self.in_use + need > self.capacity):
            return False
        self._add(need)
        return True

    async def take(self, need: int, timeout: float | None) -> None:
        """Takes ``need`` bytes, waiting for them at most ``timeout`` seconds (None: no limit);
        TimeoutError when they did not come. Cancelled or timed out, it takes nothing."""
        if self.try_take(need):
            return
        waiter = _Waiter(need, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._changed()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted),
                                   None if timeout is None else max(timeout, 0.0))
        except (TimeoutError, asyncio.CancelledError):
            if waiter.granted.done():  # granted in the same instant: give it back
                self.release(need)
            else:
                waiter.granted.cancel()
                self._waiters.remove(waiter)
                self._grant()  # in arrival order, those behind it may fit now
                self._changed()
            raise

    async def take_before(self, need: int, deadline: float | None, max_wait_s: float) -> str:
        """Takes ``need`` bytes, waiting at most ``max_wait_s`` seconds and never past
        ``deadline`` (time.monotonic(); None: none): "" when taken, "deadline" when the deadline
        passed first, "busy" when ``max_wait_s`` did (then nothing is taken)."""
        timeout = max_wait_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        try:
            await self.take(need, timeout)
        except TimeoutError:
            return "deadline" if deadline is not None and time.monotonic() >= deadline else "busy"
        return ""

    def release(self, amount: int) -> None:
        """Gives ``amount`` bytes back and grants the waiters that fit now, in order."""
        self._add(-amount)
        self._grant()

    def _grant(self) -> None:
        for waiter in list(self._waiters):
            if self.in_use + waiter.need <= self.capacity:
                self._waiters.remove(waiter)
                self._add(waiter.need)
                waiter.granted.set_result(None)
            elif not self._first_fit:
                break

    def _add(self, amount: int) -> None:
        self.in_use += amount
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
