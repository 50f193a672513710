"""The dynamic batcher: many requests' samples share one model run.

``DynamicBatcher.infer(inputs)`` queues a request of n samples and returns its n outputs. The
scheduler cuts batches of *samples* (not requests) from the head of the queue and starts each
on a free model instance in a worker thread. It is event-driven: it runs on the event loop
whenever a request arrives or leaves, an instance frees up, or a queue delay expires, so a batch
starts in the same loop turn as the event that made it ready.

Guarantees, each proven by tests/unit/test_batcher.py:

- **Sample batching.** A request larger than ``max_batch_size`` spans several batches; many
  small requests share one. Outputs come back to each request complete and in input order.
- **When a batch runs.** As soon as a model instance is free and one of: a full batch is
  queued (``max_batch_size``, or the largest preferred batch size); ``max_queue_delay`` has
  passed since its oldest sample arrived; or no batch is running and the queue holds a single
  request (a lone request at low load pays no batching delay). So batching adds at most
  ``max_queue_delay`` to a sample's wait, and a model that frees up while samples have
  waited that long starts on them at once, with one exception, **returning callers**: when
  the callers of the batch that just finished have been coming back within
  ``max_queue_delay`` (measured on the previous batch), a model that frees up waits for them,
  until as many samples as that batch held have arrived and at most ``max_queue_delay`` after
  it freed up, so that closed-loop callers share one batch instead of splitting into groups
  that alternate (at 4 callers: one batch of 4 instead of two pairs). Batches are
  cut at the largest preferred size that fits, else take all queued samples up to
  ``max_batch_size``.
- **Bounded queue.** At most ``max_queue_size`` samples wait. A request that does not fit is
  refused at once with QueueFull and nothing of it is queued (first come, first served).
- **Deadlines.** A request whose deadline has passed when its samples reach the head of the
  queue is not computed: it fails with DeadlineExpired and its samples leave the queue.
- **Cancellation.** When the awaiting caller is cancelled, its queued samples leave the queue at
  once; samples already in a running batch finish and their outputs are dropped.
- **Drain.** ``close()`` refuses new requests (ShuttingDown) and returns once every accepted
  request has its outputs.
- **Extra outputs on request.** With ``run_all`` (the model call that also returns the
  model's further outputs, e.g. embeddings), ``infer_all`` gets a request's rows of every
  output; a batch runs ``run_all`` only when one of its requests asked, and only those
  requests get the extra rows copied: ``infer`` callers pay nothing for them.

Each model instance has its own long-lived thread that runs its batches: ONNX Runtime releases
the GIL, so the event loop keeps accepting and preprocessing while a batch runs. The thread hands
the outputs back with one ``call_soon_threadsafe``: one wake-up of the event loop per batch, no
task or executor future in between (on a 2-vCPU VM each hand-off costs ~50-100 us).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import DeadlineExpired, QueueFull, ShuttingDown

DEADLINE_SLACK_S = 0.1
"""A call cancelled this close to its deadline (or after it) ended by its deadline: the client's
copy of the deadline starts before the server's, so the client usually resets the call a few
milliseconds before the server's copy passes (counted ``deadline``, never ``cancelled``)."""


def deadline_passed(deadline: float | None, slack: float = DEADLINE_SLACK_S) -> bool:
    """Whether a call cancelled now ended by its deadline (a ``time.monotonic()`` instant):
    it has passed, or is at most ``slack`` s away."""
    return deadline is not None and time.monotonic() >= deadline - slack


Array = npt.NDArray[np.generic]
RunBatch = Callable[[int, Array], Array]
"""Model call: (instance index, inputs [b, ...]) -> outputs [b, ...]."""
RunBatchAll = Callable[[int, Array], tuple[Array, ...]]
"""Model call with every output: (instance index, inputs [b, ...]) -> (outputs [b, ...],
extra outputs [b, ...], ...); its first output is RunBatch's."""


@dataclass
class RequestTiming:
    """Where one request's time went in the batcher (nanoseconds): ``queue_ns`` from enqueue to
    the start of its first batch, ``compute_ns`` the summed model time of the batches it ran in.
    ``stats_key``, when given, names the statistics (``stats_snapshot(key)``) that count the
    batches this request's samples ran in."""

    queue_ns: int = 0
    compute_ns: int = 0
    stats_key: str | None = None


@dataclass(eq=False)
class _Request:
    inputs: Array
    deadline: float | None
    enqueued_at: float
    future: asyncio.Future[tuple[Array, ...]]
    queued: int  # samples not yet taken into a batch
    pending: int  # samples not yet computed
    outputs: Array | None = None
    all_outputs: bool = False  # asked for the extra outputs too (infer_all)
    extras: list[Array] = field(default_factory=list)
    dropped: bool = False
    timing: RequestTiming | None = None
    started: bool = False


@dataclass
class _Segment:
    request: _Request
    start: int
    stop: int


@dataclass
class _Batch:
    segments: list[_Segment] = field(default_factory=list)
    size: int = 0


@dataclass
class BatchSizeStats:
    """Batches of one size: how many ran and their total model time (nanoseconds)."""

    count: int = 0
    compute_ns: int = 0


@dataclass
class BatcherStats:
    """Cumulative counts since start (what Triton's ModelStatistics reports).

    ``samples`` computed, ``batches`` run, ``queue_ns`` summed over samples (time from enqueue to
    batch start), ``compute_ns`` summed over batches; ``by_batch_size`` per batch size (the
    whole batch's size). Per stats key: only the batches that held samples of requests with
    that key, ``samples`` only theirs, ``queue_ns`` 0.
    """

    samples: int = 0
    batches: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    last_batch_unix_ms: int = 0
    by_batch_size: dict[int, BatchSizeStats] = field(default_factory=dict)


def _count_batch(stats: BatcherStats, samples: int, size: int, ns: int, unix_ms: int) -> None:
    """Adds one batch of ``size`` samples (``samples`` of them counted here) that ran ``ns``
    nanoseconds, finished at ``unix_ms`` (milliseconds since the epoch)."""
    stats.samples += samples
    stats.batches += 1
    stats.compute_ns += ns
    stats.last_batch_unix_ms = unix_ms
    size_stats = stats.by_batch_size.setdefault(size, BatchSizeStats())
    size_stats.count += 1
    size_stats.compute_ns += ns


class Reservation:
    """Queue room held by DynamicBatcher.reserve() for a request still being preprocessed."""

    def __init__(self, batcher: DynamicBatcher, samples: int) -> None:
        self._batcher = batcher
        self.samples = samples

    def release(self) -> None:
        """Gives the room back (idempotent)."""
        self._batcher._reserved -= self.samples
        self.samples = 0

    def drop(self, deadline: float | None) -> None:
        """Gives the room back for a request cancelled before it was queued (while its images
        were decoded), counting its samples in rejections: ``deadline`` when its deadline (a
        ``time.monotonic()`` instant) has passed (``deadline_passed``), else ``cancelled``."""
        if self.samples:
            reason = "deadline" if deadline_passed(deadline) else "cancelled"
            self._batcher._count_rejection(reason, self.samples)
        self.release()


class _ModelSeries:
    """The batcher's metric series for one model, looked up once."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self.queue_wait = metrics.queue_wait.labels(model)
        self.inference_time = metrics.inference_time.labels(model)
        self.batch_size = metrics.batch_size.labels(model)
        self.queue_depth = metrics.queue_depth.labels(model)


class DynamicBatcher:
    """Queues samples from concurrent requests and runs them on the model in batches."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        instances: int = 1,
        preferred_batch_sizes: Sequence[int] = (),
        metrics: ServerMetrics | None = None,
        model: str = "model",
        run_all: RunBatchAll | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if max_queue_size < max_batch_size:
            raise ValueError(
                f"max_queue_size ({max_queue_size}) must be >= max_batch_size ({max_batch_size})"
            )
        if instances < 1:
            raise ValueError(f"instances must be an integer >= 1, got {instances}")
        if any(not 1 <= p <= max_batch_size for p in preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_sizes must lie in 1..{max_batch_size}, "
                f"got {list(preferred_batch_sizes)}"
            )
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_size = max_queue_size
        self.instances = instances
        self.preferred_batch_sizes = tuple(sorted(set(preferred_batch_sizes)))
        self._full_at = max(self.preferred_batch_sizes, default=max_batch_size)
        self._run_batch = run_batch
        self._run_all = run_all
        self._metrics = metrics
        self._model = model
        # label lookups cost microseconds each: bind this model's series once
        self._m = None if metrics is None else _ModelSeries(metrics, model)
        self._queue: collections.deque[_Segment] = collections.deque()
        self._queued = 0
        self._reserved = 0  # admitted samples still being preprocessed
        self._queued_requests = 0
        self._free = list(range(instances))
        self._running = 0  # batches dispatched and not yet delivered
        self._all_delivered: asyncio.Event | None = None  # made by close(), set by _deliver
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        # Returning callers: samples of the last delivered batch not yet matched by arrivals,
        # when it was delivered, and how long the last batch's callers took to come back (s).
        self._returning = 0
        self._delivered_at = 0.0
        self._return_s: float | None = None
        self._all_back = False  # every caller of the last batch is back: go now
        self.stats = BatcherStats()
        self._key_stats: dict[str, BatcherStats] = {}
        self._stats_lock = threading.Lock()
        # One thread per instance, fed through its own queue; None tells it to stop.
        self._work: list[queue.SimpleQueue[tuple[_Batch, asyncio.AbstractEventLoop] | None]] = [
            queue.SimpleQueue() for _ in range(instances)]
        self._threads = [
            threading.Thread(target=self._instance_thread, args=(i,), name=f"model-{i}",
                             daemon=True)
            for i in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def can_infer_all(self) -> bool:
        """Whether infer_all is served (the batcher has run_all)."""
        return self._run_all is not None

    @property
    def accepting(self) -> bool:
        """False once close() has begun: the server is draining."""
        return not self._closing

    def stats_snapshot(self, key: str | None = None) -> BatcherStats:
        """A consistent copy of the cumulative statistics: of every batch, or with ``key`` of
        the batches that held samples of requests whose RequestTiming had that ``stats_key``
        (a batch counts once for each key it held; zeros for a key never seen)."""
        with self._stats_lock:
            s = self.stats if key is None else self._key_stats.get(key, BatcherStats())
            return replace(s, by_batch_size={
                size: replace(b) for size, b in s.by_batch_size.items()})

    @property
    def queued_samples(self) -> int:
        """Samples waiting for a batch (not yet running)."""
        return self._queued

    def reserve(self, n: int) -> Reservation:
        """Holds queue room for ``n`` samples while they are still being preprocessed.

        Admission is decided here, on arrival, so a request that will not fit is refused at once
        instead of after decoding its images. Raises QueueFull or ShuttingDown. Pass the
        reservation to infer(); release it if the request ends before that.
        """
        self._admit(n)
        self._reserved += n
        return Reservation(self, n)

    async def infer(
        self, inputs: Array, deadline: float | None = None, reservation: Reservation | None = None,
        timing: RequestTiming | None = None,
    ) -> Array:
        """Computes the model's outputs for ``inputs`` [n, ...]; returns them in input order.

        ``deadline`` is a ``time.monotonic()`` instant; ``reservation`` (from reserve(), for at
        least n samples) means admission was already granted. Raises QueueFull (nothing
        queued), DeadlineExpired, ShuttingDown, or the model's own exception. ``timing``, when
        given, is filled in with the request's queue and model time.
        """
        return (await self._infer(inputs, deadline, reservation, timing, False))[0]

    async def infer_all(
        self, inputs: Array, deadline: float | None = None, reservation: Reservation | None = None,
        timing: RequestTiming | None = None,
    ) -> tuple[Array, ...]:
        """As :meth:`infer`, but every output of ``run_all`` for ``inputs`` [n, ...]: (outputs,
        extra outputs, ...), each [n, ...] in input order. Needs ``run_all``."""
        if self._run_all is None:
            raise ValueError("this batcher has no run_all: the model has no extra outputs")
        return await self._infer(inputs, deadline, reservation, timing, True)

    async def _infer(
        self, inputs: Array, deadline: float | None, reservation: Reservation | None,
        timing: RequestTiming | None, all_outputs: bool,
    ) -> tuple[Array, ...]:
        n = len(inputs)
        if n == 0:
            raise ValueError("infer needs at least one sample")
        if reservation is None:
            self._admit(n)
        elif n > reservation.samples:
            raise ValueError(f"{n} samples exceed the reservation of {reservation.samples}")
        else:
            reservation.release()  # its room becomes these queued samples
        now = time.monotonic()
        request = _Request(
            inputs=inputs, deadline=deadline, enqueued_at=now,
            future=asyncio.get_running_loop().create_future(), queued=n, pending=n,
            timing=timing, all_outputs=all_outputs,
        )
        self._queue.append(_Segment(request, 0, n))
        self._queued += n
        self._queued_requests += 1
        self._count_return(n, now)
        self._update_depth()
        self._pump()
        try:
            # not shielded: a cancelled caller cancels this future too, and _deliver skips
            # futures that are already done
            return await request.future
        except asyncio.CancelledError:
            # gRPC cancels the handler both when the client cancels and when the deadline passes
            self._drop(request, "deadline" if deadline_passed(deadline) else "cancelled")
            raise

    def has_room(self, n: int) -> bool:
        """Whether a request of ``n`` samples would be admitted now (reserve() would succeed)."""
        return not self._closing and self._queued + self._reserved + n <= self.max_queue_size

    def _admit(self, n: int) -> None:
        """Raises unless ``n`` more samples fit the queue now (queued + reserved)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down and accepts no new work")
        if n > self.max_queue_size:
            raise QueueFull(
                f"request of {n} samples can never fit the queue (max_queue_size "
                f"{self.max_queue_size}); send smaller requests"
            )
        if not self.has_room(n):
            self._count_rejection("queue_full", n)
            waiting = self._queued + self._reserved
            raise QueueFull(
                f"queue full: {waiting} samples waiting, {n} more would exceed "
                f"max_queue_size {self.max_queue_size}; retry later"
            )

    async def close(self) -> None:
        """Refuses new requests, finishes every accepted one, then releases the threads."""
        self._closing = True
        self._pump()
        if self._running:
            self._all_delivered = asyncio.Event()
            await self._all_delivered.wait()
        if self._timer is not None:
            self._timer.cancel()
        for work in self._work:
            work.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)

    # -- scheduling -----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Dispatches every batch that may run now; arms a timer for the next queue-delay expiry.

        Called whenever something changes: a request arrives or leaves, an instance frees up,
        the timer fires. Runs on the event loop, so the decision and the dispatch are atomic.
        """
        self._drop_expired()
        while (wait := self._time_until_dispatch()) == 0.0:
            self._dispatch(self._take_batch())
        if wait is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _count_return(self, n: int, now: float) -> None:
        """Counts ``n`` arrived samples against the callers of the last delivered batch."""
        if self._returning > 0:
            self._returning -= n
            if self._returning <= 0:
                self._returning = 0
                self._return_s = now - self._delivered_at
                self._all_back = True

    def _waiting_for_returns(self) -> bool:
        """True while the last batch's callers are expected back within max_queue_delay."""
        return (self._returning > 0 and self._return_s is not None
                and self._return_s <= self.max_queue_delay_s
                and self._queued + self._returning <= self._full_at)

    def _time_until_dispatch(self) -> float | None:
        """0.0 to dispatch now, seconds to wait for more samples, or None to wait for an event."""
        if not self._free or self._queued == 0:
            return None
        if self._queued >= self._full_at or self._closing or self._all_back:
            return 0.0
        now = time.monotonic()
        if self._waiting_for_returns():
            # the last batch's callers have been coming back within max_queue_delay: wait for
            # them (bounded by max_queue_delay from the delivery) rather than split the callers
            # into groups that alternate on the model
            return max(0.0, self._delivered_at + self.max_queue_delay_s - now)
        if len(self._free) == self.instances and self._queued_requests == 1:
            return 0.0  # a lone request on an idle model: nothing to wait for
        # Wait for company at most max_queue_delay, counted from the oldest sample's arrival:
        # samples that already waited that long for a busy model go as soon as it frees up.
        # (Counting from the moment the instance frees up instead idled the model ~3.5 ms per
        # batch at concurrency 16 and did not make batches larger: the callers of the batch
        # that just finished come back only after their replies are sent, 5-10 ms later.)
        waited = now - self._queue[0].request.enqueued_at
        return max(0.0, self.max_queue_delay_s - waited)

    def _batch_size_for(self, queued: int) -> int:
        if queued >= self.max_batch_size:
            return self.max_batch_size
        fitting = [p for p in self.preferred_batch_sizes if p <= queued]
        return fitting[-1] if fitting else queued

    def _take_batch(self) -> _Batch:
        batch = _Batch()
        self._all_back = False
        want = self._batch_size_for(self._queued)
        now = time.monotonic()
        while batch.size < want:
            seg = self._queue[0]
            take = min(seg.stop - seg.start, want - batch.size)
            batch.segments.append(_Segment(seg.request, seg.start, seg.start + take))
            batch.size += take
            seg.request.queued -= take
            waited = now - seg.request.enqueued_at
            self.stats.queue_ns += int(waited * 1e9) * take
            if not seg.request.started:
                seg.request.started = True
                if seg.request.timing is not None:
                    seg.request.timing.queue_ns = int(waited * 1e9)
            if self._m is not None:
                self._m.queue_wait.observe(waited)
            if take == seg.stop - seg.start:
                self._queue.popleft()
                self._queued_requests -= 1
            else:
                seg.start += take
        self._queued -= batch.size
        self._update_depth()
        return batch

    def _dispatch(self, batch: _Batch) -> None:
        """Hands ``batch`` to a free instance's thread now; _deliver runs when it is done."""
        instance = self._free.pop()
        self._running += 1
        self._work[instance].put((batch, asyncio.get_running_loop()))

    def _instance_thread(self, instance: int) -> None:
        """Instance thread: runs each batch it is handed, then schedules _deliver on the loop."""
        work = self._work[instance]
        while (item := work.get()) is not None:
            batch, loop = item
            error: BaseException | None = None
            try:
                self._execute(instance, batch)
            except Exception as exc:  # delivered to the batch's callers, never lost
                error = exc
            except BaseException as exc:  # not re-raised here, so turned into an error instead
                error = RuntimeError(f"model instance {instance} stopped a batch: {exc!r}")
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits these outputs
                loop.call_soon_threadsafe(self._deliver, instance, batch, error)

    def _deliver(self, instance: int, batch: _Batch, error: BaseException | None) -> None:
        """Event loop: frees the instance, schedules the next batch, completes the requests."""
        self._free.append(instance)
        self._running -= 1
        now = time.monotonic()
        if self._returning > 0:  # the previous batch's callers never all came back
            self._return_s = now - self._delivered_at
        self._returning = batch.size
        self._delivered_at = now
        self._all_back = False
        self._pump()
        for seg in batch.segments:
            request = seg.request
            request.pending -= seg.stop - seg.start
            if request.future.done():
                continue
            if error is not None:
                self._drop(request, None)
                request.future.set_exception(error)
            elif request.pending == 0 and request.outputs is not None:
                request.future.set_result((request.outputs, *request.extras))
        if self._running == 0 and self._all_delivered is not None:
            self._all_delivered.set()

    def _execute(self, instance: int, batch: _Batch) -> None:
        """Worker thread: gathers the batch, runs the model, scatters outputs to requests."""
        parts = [seg.request.inputs[seg.start:seg.stop] for seg in batch.segments]
        inputs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        started = time.perf_counter()
        extras: tuple[Array, ...] = ()
        if self._run_all is not None and any(s.request.all_outputs for s in batch.segments):
            outputs, *rest = self._run_all(instance, inputs)
            extras = tuple(rest)
        else:
            outputs = self._run_batch(instance, inputs)
        seconds = time.perf_counter() - started
        ns = int(seconds * 1e9)
        unix_ms = int(time.time() * 1000)
        with self._stats_lock:
            _count_batch(self.stats, batch.size, batch.size, ns, unix_ms)
            keyed: dict[str, int] = {}  # samples of this batch per stats key
            for seg in batch.segments:
                timing = seg.request.timing
                if timing is not None:
                    timing.compute_ns += ns
                    if timing.stats_key is not None:
                        keyed[timing.stats_key] = (
                            keyed.get(timing.stats_key, 0) + seg.stop - seg.start)
            for key, samples in keyed.items():
                stats = self._key_stats.setdefault(key, BatcherStats())
                _count_batch(stats, samples, batch.size, ns, unix_ms)
        if self._m is not None:
            self._m.inference_time.observe(seconds)
            self._m.batch_size.observe(batch.size)
        if any(len(o) != batch.size for o in (outputs, *extras)):
            raise RuntimeError(f"model returned {[len(o) for o in (outputs, *extras)]} rows of "
                               f"outputs for {batch.size} inputs")
        offset = 0
        for seg in batch.segments:
            request = seg.request
            n = len(request.inputs)
            if request.outputs is None:
                request.outputs = np.empty((n, *outputs.shape[1:]), dtype=outputs.dtype)
                if request.all_outputs:  # only those who asked get the extra rows copied
                    request.extras = [np.empty((n, *e.shape[1:]), dtype=e.dtype) for e in extras]
            size = seg.stop - seg.start
            request.outputs[seg.start:seg.stop] = outputs[offset:offset + size]
            if request.all_outputs:
                for kept, extra in zip(request.extras, extras, strict=True):
                    kept[seg.start:seg.stop] = extra[offset:offset + size]
            offset += size

    # -- leaving the queue ----------------------------------------------------------------------

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for seg in list(self._queue):
            request = seg.request
            if request.deadline is not None and now >= request.deadline and not request.dropped:
                self._drop(request, "deadline", pump=False)
                if not request.future.done():
                    request.future.set_exception(
                        DeadlineExpired("deadline passed while waiting in the queue; not computed")
                    )

    def _drop(self, request: _Request, reason: str | None, pump: bool = True) -> None:
        """Removes the request's queued samples; ``reason`` is counted in rejections."""
        if request.dropped:
            return
        request.dropped = True
        if request.queued:
            self._queue = collections.deque(s for s in self._queue if s.request is not request)
            self._queued -= request.queued
            self._queued_requests -= 1
            if reason is not None:
                self._count_rejection(reason, request.queued)
            request.queued = 0
            self._update_depth()
            if pump:
                self._pump()

    def _count_rejection(self, reason: str, samples: int) -> None:
        if self._metrics is not None:
            self._metrics.rejections.labels(self._model, reason).inc(samples)

    def _update_depth(self) -> None:
        if self._m is not None:
            self._m.queue_depth.set(self._queued)
