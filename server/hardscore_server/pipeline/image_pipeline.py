"""The image pipeline, the same for every protocol: check -> admit -> preprocess -> batch -> score.

Servicers (hardscore.v1, the Open Inference Protocol) translate their messages into an
``ImageBatch`` and the ``ImageScores`` back into their replies; everything between is here:
the model check, the per-request sample limit, admission to the batcher's queue (before any
decoding, so a full queue refuses at once), admission to the decode budget (each image's decode
memory estimated from its header, see decode_cost and decode_budget), decoding, resizing and
normalising in one bounded thread pool that calls share turn by turn and that stops a call's
decoding when the call has gone, the model run through the dynamic batcher, and the scores.

One bad sample (undecodable bytes, a wrong tensor shape, an unknown label) is reported in
``ImageScores.errors`` and gets predicted_class -1 and NaN scores; its neighbours are scored.
A caller that cannot report per-sample errors asks for ``on_sample_error="raise"``: the first
bad sample then fails the request with ``SampleFailed`` before the model runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import ModelManifest
from hardscore_server.model.runner import ModelRunner
from hardscore_server.pipeline.batcher import DynamicBatcher, RequestTiming, Reservation
from hardscore_server.pipeline.decode_budget import DecodeBudget, mib
from hardscore_server.pipeline.decode_cost import DecodeCost, estimate_array, estimate_image
from hardscore_server.pipeline.errors import DeadlineExpired, InvalidRequest, UnknownModel
from hardscore_server.pipeline.preprocess import (
    InputSpec,
    SampleError,
    decode_image,
    from_pixels,
    header_pixels,
)
from hardscore_server.pipeline.scores import (
    LABEL_SCORES,
    MODEL_SCORES,
    NO_LABEL,
    ScoreBatch,
    score_logits,
)
from hardscore_server.pipeline.torch_decode import BATCH_SIZE, build_decoder, is_jpeg

Float32Array = npt.NDArray[np.float32]

Image = bytes | np.ndarray | SampleError
"""One image: encoded file bytes (JPEG, PNG, WebP, BMP, GIF, TIFF); uint8 pixels [H, W] or
[H, W, C] (resized like a decoded file); float32 [C, H, W], the model input itself (must be
finite); or a SampleError a translator already found (reported in its place)."""

Label = int | str | None
"""A given label: a class index, a class name, or None for none."""

DECODE_STEP_S = 0.002
"""A decode thread keeps to one call's images for this long (seconds, at least one image)
before that call's next images queue behind other calls': small images go many to a step."""

INLINE_PREPROCESS_BYTES = 16 * 1024
"""A lone sample up to this size is preprocessed on the event loop, not in the thread pool."""

INLINE_PREPROCESS_PIXELS = 256 * 256
"""... and, when encoded, decodes to at most this many pixels (the header says, before decoding:
a few KiB of PNG can hold a 4000 x 4000 image)."""


@dataclass(frozen=True)
class ImageBatch:
    """The images of one request and what to do with them.

    ``images`` is a sequence of ``Image`` (forms may be mixed), or one array of the whole batch
    at the model's size [N, C, H, W]: float32 is the model input taken as is (NaN and infinity
    give NaN scores, never an error), uint8 is pixels 0..255, normalised with the model's mean
    and std. ``labels`` (one per image, or None for no label scores at all) turns the label
    scores on; rows whose label is None (or NO_LABEL, in an integer array of class indices) get
    NaN label scores. ``temperature`` (> 0) replaces
    the model's own.
    """

    images: Sequence[Image] | np.ndarray
    labels: Sequence[Label] | npt.NDArray[np.integer] | None = None
    temperature: float | None = None
    model_name: str = ""
    on_sample_error: Literal["report", "raise"] = "report"

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageScores:
    """The result of one ImageBatch, N rows in input order.

    ``scores`` holds every score (label scores None when the batch had no labels); ``logits``
    float32 [N, K] is the model output. Rows in ``errors`` have predicted_class -1 and NaN
    scores and logits; so do rows whose logits are not finite.
    """

    scores: ScoreBatch
    logits: Float32Array
    errors: list[tuple[int, SampleError]] = field(default_factory=list)


class SampleFailed(InvalidRequest):
    """A sample could not be used and the batch asked for ``on_sample_error="raise"``."""

    def __init__(self, index: int, error: SampleError) -> None:
        super().__init__(f"sample {index}: {error}")
        self.index = index
        self.error = error


def _nbytes(image: Image) -> int:
    return len(image) if isinstance(image, bytes) else getattr(image, "nbytes", 0)


def _cheap_to_prepare(image: Image) -> bool:
    """Whether decoding ``image`` on the event loop costs less than a thread hand-off."""
    if _nbytes(image) > INLINE_PREPROCESS_BYTES:
        return False
    if not isinstance(image, bytes):
        return True
    pixels = header_pixels(image)
    return pixels is not None and pixels <= INLINE_PREPROCESS_PIXELS


def expand(batch: ScoreBatch, rows: npt.NDArray[np.intp], n: int) -> ScoreBatch:
    """Scores for all ``n`` samples from those of the scored ``rows``; the rest get -1 / NaN."""
    if len(rows) == n:
        return batch

    def spread(values: Any, fill: float) -> Any:
        if values is None:
            return None
        out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
        out[rows] = values
        return out

    fields = {
        name: spread(getattr(batch, name), np.nan)
        for name in (*MODEL_SCORES, *LABEL_SCORES, "probabilities")
    }
    return replace(
        batch,
        predicted_class=spread(batch.predicted_class, -1),
        given_label=spread(batch.given_label, NO_LABEL),
        **fields,
    )



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


class ImagePipeline:
    """Scores ImageBatches with the served model through one dynamic batcher and one pool."""

    def __init__(
        self, runner: ModelRunner, config: ServerConfig, metrics: ServerMetrics
    ) -> None:
        self.manifest: ModelManifest = runner.manifest
        self.provider = runner.provider
        self._config = config
        self._metrics = metrics
        m = self.manifest
        self.spec = InputSpec(
            channels=m.input_channels, height=m.input_height, width=m.input_width,
            mean=tuple(m.mean), std=tuple(m.std), resize=m.resize,
        )
        self._mean = np.asarray(m.mean, dtype=np.float32)[:, np.newaxis, np.newaxis]
        self._std = np.asarray(m.std, dtype=np.float32)[:, np.newaxis, np.newaxis]
        self.batcher = DynamicBatcher(
            runner.run,
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
            max_queue_size=config.max_queue_size,
            instances=config.instances,
            preferred_batch_sizes=config.preferred_batch_sizes,
            metrics=metrics,
            model=m.name,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=config.preprocess_threads, thread_name_prefix="preprocess")
        metrics.model_info.labels(m.name, m.version, runner.provider).set(1)
        self._preprocess_time = metrics.preprocess_time.labels(m.name)
        self._images_scored = metrics.samples.labels("images")
        self.decode_budget = DecodeBudget(config.decode_budget_bytes, metrics)
        self._decodes_done = metrics.decodes.labels("done")
        self._decodes_after_cancel = metrics.decodes.labels("after_cancel")
        self._decodes_abandoned = metrics.decodes.labels("abandoned")
        # jpeg_decode_device=cuda: JPEGs in batches on the GPU (torch imported only then)
        self._jpegs = build_decoder(config.jpeg_decode_device, self.spec, config.cuda_device_id)

    @property
    def max_samples(self) -> int:
        """The most images one request may hold (the row limit, at most the queue's size)."""
        return min(self._config.max_rows_per_request, self._config.max_queue_size)

    async def close(self) -> None:
        """Finishes every queued request, then releases the threads without waiting for
        decodes still running or queued (their calls have ended: the server drains first)."""
        await self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serves(self, name: str, version: str = "") -> bool:
        """Whether requests for model ``name`` ("" = the served one) at ``version`` come here."""
        m = self.manifest
        return name in ("", m.name) and version in ("", m.version)

    def check_model(self, name: str) -> None:
        """Raises UnknownModel unless ``name`` ("" = any) is the served model."""
        if not self.serves(name):
            raise UnknownModel(f"model {name!r} is not served here; this server serves "
                               f"{self.manifest.name!r}")

    async def score(
        self, batch: ImageBatch, deadline: float | None, timing: RequestTiming | None = None
    ) -> ImageScores:
        """Scores every image of ``batch``; ``deadline`` is a time.monotonic() instant.

        Raises UnknownModel, InvalidRequest (more than ``max_samples`` images, labels that do
        not match the images, a bad temperature), SampleFailed, and the batcher's QueueFull and
        DeadlineExpired. ``timing``, when given, gets the batcher's queue and model time.
        """
        self.check_model(batch.model_name)
        n = len(batch)
        if n > self.max_samples:
            raise InvalidRequest(
                f"the request holds {n} images, more than this server takes in one request "
                f"({self.max_samples})")
        if batch.labels is not None and len(batch.labels) != n:
            raise InvalidRequest(f"{len(batch.labels)} labels for {n} images (one per image)")
        temperature = self.manifest.temperature if batch.temperature is None else (
            batch.temperature)
        if not (np.isfinite(temperature) and temperature > 0):
            raise InvalidRequest(f"temperature must be finite and > 0, got {temperature}")
        reservation = self.batcher.reserve(n) if n else None  # refuse early, before decoding
        try:
            return await self._score_admitted(batch, temperature, deadline, reservation, timing)
        except (asyncio.CancelledError, DeadlineExpired):
            # the call ended (deadline, caller gone) before its samples were queued: while its
            # headers were read, it waited for decode budget, or its images were decoded
            if reservation is not None:
                reservation.drop(deadline)
            raise
        finally:
            if reservation is not None:
                reservation.release()

    async def _score_admitted(
        self, batch: ImageBatch, temperature: float, deadline: float | None,
        reservation: Reservation | None, timing: RequestTiming | None = None,
    ) -> ImageScores:
        n = len(batch)
        m = self.manifest
        inputs, labels, errors = await self._prepare(batch, deadline)
        if errors and batch.on_sample_error == "raise":
            raise SampleFailed(*errors[0])
        failed = {i for i, _ in errors}
        rows = np.array([i for i in range(n) if i not in failed], dtype=np.intp)
        if len(rows):
            logits = np.asarray(await self.batcher.infer(inputs, deadline, reservation, timing),
                                dtype=np.float32)
        else:
            logits = np.zeros((0, m.num_classes), dtype=np.float32)
        with np.errstate(all="ignore"):  # non-finite logits give NaN scores, quietly
            scores = score_logits(logits, None if labels is None else labels[rows], temperature)
        scores = replace(scores, predicted_class=np.where(
            np.isfinite(scores.confidence), scores.predicted_class, -1))
        self._images_scored.inc(len(rows))
        self._metrics.observe_scores(m.name, scores.hardness, scores.mistakenness)
        if len(rows) != n:
            full = np.full((n, m.num_classes), np.nan, dtype=np.float32)
            full[rows] = logits
            logits = full
        return ImageScores(scores=expand(scores, rows, n), logits=logits, errors=errors)

    # -- preprocessing ------------------------------------------------------------------------

    async def _prepare(
        self, batch: ImageBatch, deadline: float | None = None
    ) -> tuple[Float32Array, npt.NDArray[np.int64] | None, list[tuple[int, SampleError]]]:
        """The model input [M, C, H, W] of the M good samples, every sample's label index
        (None without labels), and the errors, in input order. A sample whose label is unknown
        is not decoded."""
        n = len(batch)
        labels, label_errors = self._label_indices(batch.labels, n)
        bad = dict(label_errors)
        images = batch.images
        if isinstance(images, np.ndarray):
            if images.dtype == np.uint8:
                inputs = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._normalise, images)
            else:
                inputs = np.ascontiguousarray(images, dtype=np.float32)
            if bad:
                inputs = inputs[[i for i in range(n) if i not in bad]]
        else:
            prepared = await self._preprocess_all(
                [bad.get(i, image) for i, image in enumerate(images)], deadline)
            good: list[Float32Array] = []
            for i, item in enumerate(prepared):
                if isinstance(item, SampleError):
                    bad[i] = item
                else:
                    good.append(item)
            if len(good) == 1:
                inputs = good[0][None]  # the usual online call: a view with a batch axis
            elif good:
                inputs = np.stack(good)
            else:
                inputs = np.zeros((0, *self._chw), dtype=np.float32)
        for error in bad.values():
            self._metrics.sample_errors.labels(error.reason).inc()
        return inputs, labels, sorted(bad.items())

    @property
    def _chw(self) -> tuple[int, int, int]:
        return (self.spec.channels, self.spec.height, self.spec.width)

    def _label_indices(
        self, labels: Sequence[Label] | npt.NDArray[np.integer] | None, n: int
    ) -> tuple[npt.NDArray[np.int64] | None, list[tuple[int, SampleError]]]:
        """Each label as a class index (NO_LABEL for None), and the labels that are unknown."""
        if labels is None:
            return None, []
        names = self.manifest.class_names
        errors: list[tuple[int, SampleError]] = []
        if isinstance(labels, np.ndarray):  # class indices already, NO_LABEL for none
            out = labels.astype(np.int64)
            for row in np.flatnonzero((out < NO_LABEL) | (out >= len(names))):
                errors.append((int(row), SampleError(
                    "label", f"label_index {out[row]} is out of range 0..{len(names) - 1}")))
                out[row] = NO_LABEL
            return out, errors
        out = np.full(n, NO_LABEL, dtype=np.int64)
        for i, label in enumerate(labels):
            if label is None:
                continue
            if isinstance(label, str):
                if label not in names:
                    errors.append((i, SampleError(
                        "label", f"label_name {label!r} is not one of the model's classes")))
                    continue
                out[i] = names.index(label)
            elif 0 <= label < len(names):
                out[i] = label
            else:
                errors.append((i, SampleError(
                    "label", f"label_index {label} is out of range 0..{len(names) - 1}")))
        return out, errors

    def _normalise(self, pixels: npt.NDArray[np.uint8]) -> Float32Array:
        """uint8 [N, C, H, W] pixels -> (pixel / 255 - mean) / std in float32, as a decoded
        file's pixels are."""
        x = pixels.astype(np.float32)
        x /= np.float32(255)
        x -= self._mean
        x /= self._std
        return x

    def _preprocess_one(self, image: Image) -> Float32Array | SampleError:
        """One image's model input [C, H, W], or the SampleError saying why not (any thread)."""
        if isinstance(image, SampleError):
            return image
        started = time.perf_counter()
        try:
            if isinstance(image, bytes):
                return decode_image(image, self.spec)
            return from_pixels(image, self.spec)
        except SampleError as exc:
            return exc
        finally:
            self._preprocess_time.observe(time.perf_counter() - started)

    def _preprocess(self, images: Sequence[Image]) -> list[Float32Array | SampleError]:
        """Each image's model input [C, H, W], or the SampleError saying why not, in order."""
        return [self._preprocess_one(image) for image in images]

    def _estimate(self, image: Image) -> DecodeCost | None:
        """``image``'s estimated preprocessing cost (see decode_cost); None for a SampleError."""
        if isinstance(image, bytes):
            return estimate_image(image, self.spec)
        if isinstance(image, np.ndarray):
            return estimate_array(image, self.spec)
        return None

    def _estimate_all(self, images: Sequence[Image]) -> list[DecodeCost | None]:
        return [self._estimate(image) for image in images]

    def _over_budget(self, cost: DecodeCost | None) -> SampleError | None:
        """The "size" error of an image whose decoding alone would exceed the decode budget."""
        capacity = self.decode_budget.capacity
        if cost is None or cost.bytes <= capacity or cost.pixels > self.spec.max_image_pixels:
            return None  # over the pixel limit: decode_image refuses it on its header
        return SampleError(
            "size", f"image ({cost.describe}): decoding it needs an estimated "
            f"{mib(cost.bytes)}, more than this server's decode budget of {mib(capacity)}")

    async def _preprocess_all(
        self, images: Sequence[Image], deadline: float | None = None
    ) -> list[Float32Array | SampleError]:
        """Preprocesses every image in the decode pool, keeping order, within the decode budget.

        Each image's decode cost is estimated from its header first (one pool step for them
        all): an image whose cost alone exceeds the budget becomes a "size" error, not decoded.
        The call then takes from the server-wide budget what its costliest images need at once
        (as many threads as fit the whole budget, at most ``preprocess_threads``, at least one:
        every image left fits alone), and that many threads take the images one at a time.
        When the call is cancelled or ``deadline`` passes, no further image starts
        (DeadlineExpired); the budget comes back when the last running decode ends. A single
        small image (the usual online call) is done on the event loop: decoding a few KiB costs
        less than a thread hand-off.
        """
        if not images:
            return []
        budget = self.decode_budget
        if len(images) == 1 and _cheap_to_prepare(images[0]):
            estimates = [self._estimate(images[0])]  # a header of at most 16 KiB
        else:  # header reads off the event loop: a request may hold a thousand TIFF headers
            estimates = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._estimate_all, images)
        images = [self._over_budget(cost) or image
                  for image, cost in zip(images, estimates, strict=True)]
        costs = [0 if cost is None else cost.bytes for cost in estimates]
        if len(images) == 1 and _cheap_to_prepare(images[0]) and budget.try_acquire(costs[0]):
            try:
                return self._preprocess(images)
            finally:
                budget.release(costs[0])
        todo = [i for i, image in enumerate(images) if not isinstance(image, SampleError)]
        if not todo:  # every one is an error already
            return [image for image in images if isinstance(image, SampleError)]
        units = self._units(images, todo, costs)
        threads, need = decode_parallelism(
            [sum(costs[i] for i in unit) for unit in units], self._config.preprocess_threads,
            budget.capacity)
        await budget.acquire(need, deadline)
        job = _DecodeJob(images, todo, units, deadline, threads, asyncio.get_running_loop())
        job.done.add_done_callback(lambda _: self._job_ended(job, need))
        for _ in range(threads):
            try:
                self._pool.submit(self._decode_step, job)
            except RuntimeError:  # the pool is shut down: the server is stopping
                job.cancelled.set()
                job.chain_ended()
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            job.cancelled.set()  # queued steps return at once; running ones are the last
            raise
        if job.error is not None:
            raise job.error
        results = job.results
        if any(results[i] is None for i in todo):
            done = sum(1 for i in todo if results[i] is not None)
            raise DeadlineExpired(
                f"deadline passed while decoding images ({done} of {len(todo)} decoded); "
                "not computed")
        return [image if isinstance(image, SampleError) else results[i]  # type: ignore[misc]
                for i, image in enumerate(images)]

    def _units(self, images: Sequence[Image], todo: list[int], costs: list[int]) -> list[list[int]]:
        """``todo`` in units decoded at once: one image each, but with the torch decoder,
        JPEGs in batches of up to BATCH_SIZE whose summed cost fits the budget's share of one
        decode thread (at least one image). A batch costs what its images cost together."""
        if self._jpegs is None:
            return [[i] for i in todo]
        share = self.decode_budget.capacity // self._config.preprocess_threads
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

    def _job_ended(self, job: _DecodeJob, need: int) -> None:
        """Event loop, once every decode thread of ``job`` has stopped: the budget comes back."""
        self.decode_budget.release(need)
        left = sum(1 for i in job.todo if job.results[i] is None)
        if left:
            self._decodes_abandoned.inc(left)

    def _decode_step(self, job: _DecodeJob) -> None:
        """Decode thread: images of ``job`` one at a time for up to ``DECODE_STEP_S`` (at least
        one), then the job queues its next step behind every step already waiting, so calls
        share the threads turn by turn (a small call is not stuck behind a large one). Starts
        no image once the call is gone or past its deadline."""
        queued_next = False
        try:
            started = time.perf_counter()
            while (unit := job.take()) is not None:
                for index, result in zip(unit, self._preprocess_unit(job.images, unit),
                                         strict=True):
                    job.results[index] = result
                if job.cancelled.is_set():
                    self._decodes_after_cancel.inc(len(unit))
                else:
                    self._decodes_done.inc(len(unit))
                if time.perf_counter() - started >= DECODE_STEP_S:
                    break
            if job.has_more():
                try:
                    self._pool.submit(self._decode_step, job)
                    queued_next = True
                except RuntimeError:  # the pool is shut down: the server is stopping
                    job.cancelled.set()
        except BaseException as exc:  # reported to the call, never lost in the pool
            job.error = exc
            job.cancelled.set()
        finally:
            if not queued_next:
                job.chain_ended()


class _DecodeJob:
    """The images of one call, decoded by ``chains`` sequences of pool steps.

    ``todo`` (indices to decode) is taken in order under ``lock``, in ``units`` (lists of
    indices decoded at once, see ImagePipeline._units); ``cancelled`` stops further takes;
    ``done`` (an event-loop future) completes when every chain has ended.
    """

    def __init__(self, images: Sequence[Image], todo: list[int], units: list[list[int]],
                 deadline: float | None, chains: int, loop: asyncio.AbstractEventLoop) -> None:
        self.images = images
        self.todo = todo
        self.units = units
        self.deadline = deadline
        self.next = 0
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.error: BaseException | None = None
        self.results: list[Float32Array | SampleError | None] = [None] * len(images)
        self.done: asyncio.Future[None] = loop.create_future()
        self._chains = chains
        self._loop = loop

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
