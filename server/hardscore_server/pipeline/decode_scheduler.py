"""The decode scheduler: every call's images decoded in one bounded thread pool, turn by turn.

``DecodeScheduler.preprocess(images, deadline)`` turns one call's images (encoded files, pixel
arrays, model-input arrays, or SampleErrors found earlier) into model inputs, float32
[C, H, W], or the SampleError saying why not. It first estimates each image's decode memory
from its structure and header (decode_cost: a file whose structure is over its limits is a
"size" SampleError here, never opened by Pillow), takes what the call needs from the
server-wide ``DecodeBudget`` (decode_budget), then decodes, resizes and normalises the images in
``preprocess_threads`` threads that all calls share. With ``jpeg_decode_device`` other than
cpu, JPEGs are decoded in batches by torchvision (torch_decode), everything else by Pillow.

Guarantees, each pinned by tests/unit/test_decode_scheduler.py:

- **Turn taking.** A decode thread works for one call for one unit (an image's header read, an
  image's decode, or a torch JPEG batch), then for more of its units only until
  ``DECODE_STEP_S`` has passed since the step began; the call's next step then queues behind
  every step already waiting (first in, first out). So a small call waits for the steps queued
  before its own, not for a large call's last header or image. A call's header reads come
  first, in as many chains of steps as it has images (at most ``preprocess_threads``), then its
  decodes.
- **Parallelism within the budget.** A call takes from the budget, before its first decode,
  the summed estimate of its k costliest units, k as many of them as fit the whole budget
  together (at most ``preprocess_threads``, at least one), and k threads take its units one at
  a time: its decodes in flight never need more than it holds, and the budget (first come,
  first served) keeps every call's together within ``decode_budget_bytes`` (estimated bytes).
  An image whose estimate alone exceeds the whole budget is a "size" SampleError and is never
  decoded; its neighbours are. An image over the pixel limit counts as ``SLACK_BYTES``, since
  its header is all that is read (the decode's own "size" error).
- **Nothing new after the call is gone.** Once the awaiting call is cancelled or its deadline
  has passed, no further header read or decode of it starts: those already running finish (at
  most one per thread), the images never decoded are counted ``abandoned`` (whether the call
  went while its headers were read, while it waited for budget, or while it was decoded), a
  cancelled call returns without waiting for its running steps, and a call with headers unread
  or images undecoded at its deadline gets DeadlineExpired (as does one whose deadline passes
  while it waits for budget).
- **Budget returned on every path.** What a call took comes back, on the event loop, once its
  last decode thread has stopped, whatever ended the call: success, an exception raised inside
  a decode or a header read (re-raised to the call, never lost in the pool), cancellation, the
  deadline, or the pool shut down by ``close()`` (steps queued then are dropped and the call
  gets ShuttingDown). Header reads take no budget: a call gone while reading headers holds
  nothing.
- **Order kept.** The result has one entry per image, in input order, each SampleError in its
  image's place, whatever order the threads finished in.

A lone small image (``INLINE_PREPROCESS_BYTES``, ``INLINE_PREPROCESS_PIXELS``: the usual online
call) is preprocessed on the event loop when its cost fits the budget at once: a thread hand-off
costs more than decoding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.decode_budget import DecodeBudget, mib
from hardscore_server.pipeline.decode_cost import (
    SLACK_BYTES,
    DecodeCost,
    estimate_array,
    estimate_image,
    structure_bytes,
)
from hardscore_server.pipeline.errors import DeadlineExpired, ShuttingDown
from hardscore_server.pipeline.preprocess import (
    InputSpec,
    SampleError,
    decode_image,
    from_pixels,
    header_pixels,
)
from hardscore_server.pipeline.torch_decode import BATCH_SIZE, build_decoder, is_jpeg

Float32Array = npt.NDArray[np.float32]

Image = bytes | np.ndarray | SampleError
"""One image: encoded file bytes (JPEG, PNG, WebP, BMP, GIF, TIFF); uint8 pixels [H, W] or
[H, W, C] (resized like a decoded file); float32 [C, H, W], the model input itself (must be
finite); or a SampleError a translator already found (reported in its place)."""

DecodeOne = Callable[[bytes | np.ndarray, InputSpec], Float32Array]
"""Turns one image (file bytes or an array) into the model input float32 [C, H, W] of the
spec; raises SampleError for a bad image. Called from the decode threads."""

DECODE_STEP_S = 0.002
"""A decode thread keeps to one call's header reads or images for this long (seconds, at least
one unit) before that call's next ones queue behind other calls': small images go many to a
step."""

INLINE_PREPROCESS_BYTES = 16 * 1024
"""A lone sample up to this size is preprocessed on the event loop, not in the thread pool."""

INLINE_PREPROCESS_PIXELS = 256 * 256
"""... and, when encoded, decodes to at most this many pixels (the header says, before decoding:
a few KiB of PNG can hold a 4000 x 4000 image)."""

T = TypeVar("T")
R = TypeVar("R")


def decode_one(image: bytes | np.ndarray, spec: InputSpec) -> Float32Array:
    """The model input of one image with Pillow: file bytes through decode_image, arrays through
    from_pixels. Raises SampleError."""
    if isinstance(image, bytes):
        return decode_image(image, spec)
    return from_pixels(image, spec)


def _nbytes(image: Image) -> int:
    return len(image) if isinstance(image, bytes) else getattr(image, "nbytes", 0)


def _cheap_to_prepare(image: Image) -> bool:
    """Whether decoding ``image`` on the event loop costs less than a thread hand-off."""
    if _nbytes(image) > INLINE_PREPROCESS_BYTES:
        return False
    if not isinstance(image, bytes):
        return True
    try:
        structure_bytes(image)  # Pillow reads no file whose structure is over the limits
    except SampleError:
        return False
    pixels = header_pixels(image)
    return pixels is not None and pixels <= INLINE_PREPROCESS_PIXELS


def decode_parallelism(costs: Sequence[int], threads: int, capacity: int) -> tuple[int, int]:
    """(threads, bytes): how many of a call's images to decode at once, and the decode budget
    that takes. The costliest images set the need; a call whose images fit the budget only one
    or a few at a time is decoded that many at a time rather than refused (each image left fits
    alone: larger ones are ``size`` errors). ``costs`` are estimated bytes, at least one."""
    largest = sorted(costs, reverse=True)[:max(1, threads)]
    used, need = 0, 0
    for cost in largest:
        if used and need + cost > capacity:
            break
        used, need = used + 1, need + cost
    return used, need


class DecodeShare:
    """The decode pool of ``config.preprocess_threads`` threads and the ``DecodeBudget`` of
    ``config.decode_budget_bytes``, shared by the decode schedulers of every loaded model."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.budget = DecodeBudget(config.decode_budget_bytes, metrics)
        self.pool = ThreadPoolExecutor(
            max_workers=config.preprocess_threads, thread_name_prefix="preprocess")

    def close(self) -> None:
        """Releases the threads without waiting (see DecodeScheduler.close)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


class DecodeScheduler:
    """Preprocesses the images of every call in one pool of ``config.preprocess_threads``
    threads, within one ``DecodeBudget`` of ``config.decode_budget_bytes``.

    ``spec`` is the model's input; ``model`` names the model in the metrics; ``decode`` turns
    one image into model input (``decode_one``; tests pass a wrapper). Call it from one event
    loop. Raises ConfigError when the ``jpeg_decode_device`` cannot be used.
    """

    def __init__(
        self, spec: InputSpec, config: ServerConfig, metrics: ServerMetrics, model: str,
        decode: DecodeOne = decode_one, shared: DecodeShare | None = None,
    ) -> None:
        self.spec = spec
        self._decode = decode
        self._threads = config.preprocess_threads
        # jpeg_decode_device=cuda: JPEGs in batches on the GPU (torch imported only then)
        self._jpegs = build_decoder(config.jpeg_decode_device, spec, config.cuda_device_id)
        # several models (a model repository) share one pool and one budget: ``shared``
        self._owned = shared is None
        self.shared = shared or DecodeShare(config, metrics)
        self.budget = self.shared.budget
        self._pool = self.shared.pool
        self._preprocess_time = metrics.preprocess_time.labels(model)
        self._decodes_done = metrics.decodes.labels("done")
        self._decodes_after_cancel = metrics.decodes.labels("after_cancel")
        self._decodes_abandoned = metrics.decodes.labels("abandoned")

    def close(self) -> None:
        """Releases the threads without waiting: steps queued are dropped (their calls get
        ShuttingDown and give their budget back), running decodes finish on their own. A
        scheduler built on a ``shared`` pool leaves it to its owner (``DecodeShare.close``)."""
        if self._owned:
            self.shared.close()

    async def run_in_pool(self, fn: Callable[[T], R], arg: T) -> R:
        """``fn(arg)`` in a decode thread, outside the budget and the turns (for work whose
        memory the call already holds, such as normalising a whole uint8 batch). Raises
        ShuttingDown when the pool is shut down before ``fn`` starts."""
        stopping = ShuttingDown("the server is stopping; nothing decoded")
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)
        except RuntimeError:  # the pool is shut down: the server is stopping
            raise stopping from None
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():  # dropped by close(), not the caller
                raise stopping from None
            raise

    async def preprocess(
        self, images: Sequence[Image], deadline: float | None = None
    ) -> list[Float32Array | SampleError]:
        """Each image's model input [C, H, W], or its SampleError, in input order.

        ``deadline`` is a time.monotonic() instant (None: none). Raises DeadlineExpired (the
        deadline passed before every image was decoded, or while waiting for budget),
        DecodeBudgetExceeded (the budget stayed busy past its wait limit), ShuttingDown (the
        pool was shut down), and whatever a decode raised other than SampleError.
        """
        if not images:
            return []
        budget = self.budget
        lone = len(images) == 1 and _cheap_to_prepare(images[0])
        estimates: list[DecodeCost | SampleError | None] = [None] * len(images)
        try:
            if lone:
                estimates[0] = self._estimate(images[0])  # a header of at most 16 KiB
            else:  # in the pool, a step at a time: a request may hold a thousand TIFF headers
                await self._estimate_all(images, estimates, deadline)
        except BaseException:
            self._decodes_abandoned.inc(self._undecoded(images, estimates))
            raise
        images = [self._refusal(cost) or image
                  for image, cost in zip(images, estimates, strict=True)]
        costs = [self._held(cost) for cost in estimates]
        if lone and budget.try_acquire(costs[0]):
            try:
                return [self._preprocess_one(images[0])]
            finally:
                budget.release(costs[0])
        todo = [i for i, image in enumerate(images) if not isinstance(image, SampleError)]
        if not todo:  # every one is an error already
            return [image for image in images if isinstance(image, SampleError)]
        units = self._units(images, todo, costs)
        threads, need = decode_parallelism(
            [sum(costs[i] for i in unit) for unit in units], self._threads, budget.capacity)
        try:
            await budget.acquire(need, deadline)
        except (asyncio.CancelledError, DeadlineExpired):  # gone before its first decode
            self._decodes_abandoned.inc(len(todo))
            raise
        results: list[Float32Array | SampleError | None] = [None] * len(images)
        job = _Job(units, deadline, threads, asyncio.get_running_loop(), results,
                   lambda unit: self._preprocess_unit(images, unit), decodes=True)
        job.done.add_done_callback(lambda _: self._job_ended(job, need))
        await self._run(job)
        _check_finished(job, len(todo), "decoding images", "decoded")
        return [image if isinstance(image, SampleError) else results[i]  # type: ignore[misc]
                for i, image in enumerate(images)]

    async def _run(self, job: _Job[Any]) -> None:
        """Runs ``job`` in its chains of pool steps until every chain has stopped. Cancelled, it
        stops the job (steps queued return at once, running ones are the last) and returns
        without waiting for them. Re-raises what a step raised."""
        for _ in range(job.chains):
            if not self._submit(job):
                job.chain_ended()
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        if job.error is not None:
            raise job.error

    # -- estimates ----------------------------------------------------------------------------

    def _estimate(self, image: Image) -> DecodeCost | SampleError | None:
        """``image``'s estimated preprocessing cost (see decode_cost), or the "size" error of a
        file whose structure is over the limits; None for a SampleError (any thread)."""
        if isinstance(image, bytes):
            try:
                return estimate_image(image, self.spec)
            except SampleError as exc:
                return exc
        if isinstance(image, np.ndarray):
            return estimate_array(image, self.spec)
        return None

    async def _estimate_all(self, images: Sequence[Image],
                            estimates: list[DecodeCost | SampleError | None],
                            deadline: float | None) -> None:
        """Fills ``estimates`` (None for a SampleError) in pool steps, each image a unit, in
        turn with every call's steps. Raises DeadlineExpired (the deadline passed before every
        header was read), ShuttingDown, and what an estimate raised; cancelled, returns at once
        (a header read running finishes, no other starts)."""
        todo = [i for i, image in enumerate(images) if not isinstance(image, SampleError)]
        if not todo:
            return
        job = _Job([[i] for i in todo], deadline, min(self._threads, len(todo)),
                   asyncio.get_running_loop(), estimates,
                   lambda unit: [self._estimate(images[i]) for i in unit])
        await self._run(job)
        _check_finished(job, len(todo), "reading image headers", "read")

    def _undecoded(self, images: Sequence[Image],
                   estimates: Sequence[DecodeCost | SampleError | None]) -> int:
        """How many of a call's ``images`` it would have decoded, seen while its headers are
        read: all but SampleErrors and those their estimate refuses (unread ones count)."""
        return sum(1 for image, cost in zip(images, estimates, strict=True)
                   if not isinstance(image, SampleError) and self._refusal(cost) is None)

    def _refusal(self, cost: DecodeCost | SampleError | None) -> SampleError | None:
        """The SampleError an estimate stands for: a structure over the limits, or a decode
        over the budget (see _over_budget); None for an image to decode."""
        if isinstance(cost, SampleError):
            return cost
        return self._over_budget(cost)

    def _over_limit(self, cost: DecodeCost) -> bool:
        """Over the pixel limit: the decode refuses it on its header, decoding nothing."""
        return cost.pixels > self.spec.max_image_pixels

    def _held(self, cost: DecodeCost | SampleError | None) -> int:
        """The budget an image holds while preprocessed (bytes); 0 for a SampleError."""
        if not isinstance(cost, DecodeCost):
            return 0
        return SLACK_BYTES if self._over_limit(cost) else cost.bytes

    def _over_budget(self, cost: DecodeCost | None) -> SampleError | None:
        """The "size" error of an image whose decoding alone would exceed the decode budget."""
        capacity = self.budget.capacity
        if cost is None or cost.bytes <= capacity or self._over_limit(cost):
            return None  # over the pixel limit: the decode refuses it on its header
        return SampleError(
            "size", f"image ({cost.describe}): decoding it needs an estimated "
            f"{mib(cost.bytes)}, more than this server's decode budget of {mib(capacity)}")

    def _units(self, images: Sequence[Image], todo: list[int], costs: list[int]) -> list[list[int]]:
        """``todo`` in units decoded at once: one image each, but with the torch decoder,
        JPEGs in batches of up to BATCH_SIZE whose summed cost fits the budget's share of one
        decode thread (at least one image). A batch costs what its images cost together."""
        if self._jpegs is None:
            return [[i] for i in todo]
        share = self.budget.capacity // self._threads
        units: list[list[int]] = []
        batch: list[int] = []
        held = 0  # the batch's summed cost (bytes)
        for i in todo:
            if not is_jpeg(images[i]):
                units.append([i])
                continue
            if batch and (len(batch) == BATCH_SIZE or held + costs[i] > share):
                units.append(batch)
                batch, held = [], 0
            batch.append(i)
            held += costs[i]
        if batch:
            units.append(batch)
        return units

    # -- decoding (decode threads) ------------------------------------------------------------

    def _preprocess_one(self, image: Image) -> Float32Array | SampleError:
        """One image's model input [C, H, W], or the SampleError saying why not (any thread)."""
        if isinstance(image, SampleError):
            return image
        started = time.perf_counter()
        try:
            return self._decode(image, self.spec)
        except SampleError as exc:
            return exc
        finally:
            self._preprocess_time.observe(time.perf_counter() - started)

    def _preprocess_unit(self, images: Sequence[Image], unit: list[int]
                         ) -> list[Float32Array | SampleError]:
        """The results of one unit (see _units): a JPEG batch through the torch decoder,
        what it does not take (and every other image) through _preprocess_one."""
        if self._jpegs is None or not is_jpeg(images[unit[0]]):
            return [self._preprocess_one(images[i]) for i in unit]
        started = time.perf_counter()
        files = [images[i] for i in unit]  # JPEG bytes, every one (see _units)
        decoded = self._jpegs.decode([f for f in files if isinstance(f, bytes)])
        share = (time.perf_counter() - started) / len(unit)
        results: list[Float32Array | SampleError] = []
        for i, result in zip(unit, decoded, strict=True):
            if result is None:
                results.append(self._preprocess_one(images[i]))
            else:
                self._preprocess_time.observe(share)
                results.append(result)
        return results

    def _submit(self, job: _Job[Any]) -> bool:
        """Queues a step of ``job`` behind every step waiting; False when the pool is shut
        down (``job`` is then stopped; the caller ends the chain)."""
        try:
            step = self._pool.submit(self._step, job)
        except RuntimeError:  # the pool is shut down: the server is stopping
            job.stop_shut_down()
            return False
        step.add_done_callback(job.step_dropped)
        return True

    def _step(self, job: _Job[Any]) -> None:
        """Decode thread: units of ``job`` (header reads or decodes) one at a time for up to
        ``DECODE_STEP_S`` (at least one), then the job queues its next step behind every step
        already waiting. Starts no unit once the call is gone or past its deadline."""
        handed_on = False
        try:
            started = time.perf_counter()
            while (unit := job.take()) is not None:
                for index, result in zip(unit, job.work(unit), strict=True):
                    job.results[index] = result
                if job.decodes:
                    outcome = (self._decodes_after_cancel if job.cancelled.is_set()
                               else self._decodes_done)
                    outcome.inc(len(unit))
                if time.perf_counter() - started >= DECODE_STEP_S:
                    break
            if job.has_more():
                handed_on = self._submit(job)
        except BaseException as exc:  # reported to the call, never lost in the pool
            job.error = exc
            job.cancelled.set()
        finally:
            if not handed_on:
                job.chain_ended()

    def _job_ended(self, job: _Job[Any], need: int) -> None:
        """Event loop, once every decode thread of ``job`` has stopped: the budget comes back."""
        self.budget.release(need)
        left = job.left()
        if left:
            self._decodes_abandoned.inc(left)


class _Job(Generic[R]):
    """One call's header reads or decodes, run by ``chains`` sequences of pool steps.

    ``units`` (lists of indices into ``results``, done at once: see DecodeScheduler._units) are
    taken in order under ``lock``; ``work(unit)`` gives their results, one per index, stored in
    ``results``; ``decodes``: the units are decodes (counted in the metrics). ``cancelled``
    stops further takes; ``done`` (an event-loop future) completes when every chain has ended.
    """

    def __init__(self, units: list[list[int]], deadline: float | None, chains: int,
                 loop: asyncio.AbstractEventLoop, results: list[R | None],
                 work: Callable[[list[int]], Sequence[R]], decodes: bool = False) -> None:
        self.units = units
        self.deadline = deadline
        self.chains = chains
        self.results = results
        self.work = work
        self.decodes = decodes
        self.next = 0
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.shut_down = False
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self._chains = chains
        self._loop = loop

    def left(self) -> int:
        """How many indices of ``units`` have no result (yet)."""
        return sum(1 for unit in self.units for i in unit if self.results[i] is None)

    def take(self) -> list[int] | None:
        """The next unit's indices, or None: none left, the call gone or past its deadline."""
        if self.cancelled.is_set() or (
                self.deadline is not None and time.monotonic() >= self.deadline):
            self.cancelled.set()
            return None
        with self.lock:
            if self.next >= len(self.units):
                return None
            self.next += 1
            return self.units[self.next - 1]

    def has_more(self) -> bool:
        with self.lock:
            return self.next < len(self.units) and not self.cancelled.is_set()

    def stop_shut_down(self) -> None:
        """The pool is shut down: no further unit starts."""
        self.shut_down = True
        self.cancelled.set()

    def step_dropped(self, step: Future[None]) -> None:
        """Done callback of each queued step: one the pool's shutdown cancelled never ran, so
        its chain ends here."""
        if step.cancelled():
            self.stop_shut_down()
            self.chain_ended()

    def chain_ended(self) -> None:
        """Any thread: one chain is over; the last one completes ``done`` on the loop."""
        with self.lock:
            self._chains -= 1
            last = self._chains == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _check_finished(job: _Job[Any], total: int, doing: str, done: str) -> None:
    """Raises, for a job that ended with units left, ShuttingDown (the pool was shut down) or
    DeadlineExpired (the call's deadline passed), saying how many of ``total`` were ``done``."""
    if not job.left():
        return
    finished = total - job.left()
    if job.shut_down:
        raise ShuttingDown(f"the server stopped while {doing} ({finished} of {total} {done}); "
                           "not computed")
    raise DeadlineExpired(f"deadline passed while {doing} ({finished} of {total} {done}); "
                          "not computed")
