"""The server-wide decode budget: bytes of image-decoding memory that may be in use at once.

Every call that decodes images asks for the estimated peak of what it will decode at the same
time (``decode_cost``) before its first decode, and gives it back when its last decode thread
is done, so the decode memory of all calls together stays within ``capacity``. Calls are
served first come, first served: a call that does not fit waits until earlier ones give budget
back, for at most ``max_wait_s`` and never past its deadline. A call that needs more than the
whole budget is refused at once. Used on the event loop only (not thread-safe).
"""

from __future__ import annotations

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.byte_budget import ByteBudget
from hardscore_server.pipeline.errors import DeadlineExpired, DecodeBudgetExceeded

MAX_WAIT_S = 30.0
"""The longest a call waits for decode budget (seconds) before RESOURCE_EXHAUSTED."""

MIB = 1024 * 1024


def mib(n: int) -> str:
    """``n`` bytes as a short MiB figure for messages, e.g. "512.0 MiB"."""
    return f"{n / MIB:.1f} MiB"


class DecodeBudget(ByteBudget):
    """``capacity`` bytes (>= 1) of decode memory shared by every call, granted in arrival
    order."""

    def __init__(self, capacity: int, metrics: ServerMetrics | None = None,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        if capacity < 1:
            raise ValueError(f"decode budget must be >= 1 byte, got {capacity}")
        super().__init__(capacity, on_change=self._update_metrics)
        self.max_wait_s = max_wait_s
        self._metrics = metrics
        if metrics is not None:
            metrics.decode_budget.set(capacity)

    def try_acquire(self, need: int) -> bool:
        """Takes ``need`` bytes now if they fit and nobody waits (0 always fits); whether it
        did."""
        return self.try_take(need)

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
        outcome = await self.take_before(need, deadline, self.max_wait_s)
        if outcome == "deadline":
            raise DeadlineExpired(
                "deadline passed while waiting for decode memory; nothing decoded")
        if outcome == "busy":
            self._refuse("busy")
            raise DecodeBudgetExceeded(
                f"decode budget busy: {mib(self.in_use)} of {mib(self.capacity)} in use, this "
                f"request needs {mib(need)} and waited {self.max_wait_s:g} s; retry later")

    def _refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.decode_budget_refusals.labels(reason).inc()

    def _update_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.decode_budget_in_use.set(self.in_use)
            self._metrics.decode_budget_waiting.set(self.waiting)
