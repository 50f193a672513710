"""The image path: validate -> preprocess (thread pool) -> dynamic batcher -> scores -> response.

One bad sample (undecodable bytes, wrong tensor shape, unknown label) is reported in the
response's ``errors`` and gets predicted_class -1 and NaN scores; its neighbours are scored.
Problems with the request as a whole (too many samples, unknown model, bad options) raise
InvalidRequest / UnknownModel and fail the call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from hardscore_client.proto import scoring_pb2 as pb
from hardscore_client.tensors import TensorError, from_tensor
from hardscore_server.batcher import DynamicBatcher, Reservation
from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model_runner import ModelRunner
from hardscore_server.preprocess import (
    InputSpec,
    SampleError,
    decode_image,
    from_pixels,
    header_pixels,
)
from hardscore_server.responses import encode_scores
from hardscore_server.scores import (
    LABEL_SCORES,
    MODEL_SCORES,
    NO_LABEL,
    ScoreBatch,
    score_logits,
)
from hardscore_server.validation import InvalidRequest, check_temperature

Float32Array = npt.NDArray[np.float32]


INLINE_PREPROCESS_BYTES = 16 * 1024
"""A lone sample up to this size is preprocessed on the event loop, not in the thread pool."""


INLINE_PREPROCESS_PIXELS = 256 * 256
"""... and, when encoded, decodes to at most this many pixels (the header says, before decoding:
a few KiB of PNG can hold a 4000 x 4000 image)."""


def _cheap_to_prepare(sample: pb.ImageSample) -> bool:
    if sample.ByteSize() > INLINE_PREPROCESS_BYTES:
        return False
    if sample.WhichOneof("image") != "encoded":
        return True
    pixels = header_pixels(sample.encoded)
    return pixels is not None and pixels <= INLINE_PREPROCESS_PIXELS


class UnknownModel(LookupError):
    """The request names a model this server does not serve (NOT_FOUND)."""


def preprocess_sample(sample: pb.ImageSample, spec: InputSpec) -> Float32Array:
    """The model input float32 [C, H, W] for one sample, or SampleError saying what is wrong."""
    kind = sample.WhichOneof("image")
    if kind == "encoded":
        return decode_image(sample.encoded, spec)
    if kind == "pixels":
        try:
            pixels = from_tensor(sample.pixels, "pixels")
        except TensorError as exc:
            raise SampleError("shape", str(exc)) from None
        return from_pixels(pixels, spec)
    raise SampleError("empty", "sample has neither encoded bytes nor pixels")


def sample_label(sample: pb.ImageSample, class_names: tuple[str, ...]) -> int:
    """The sample's given label as a class index, NO_LABEL when it has none."""
    kind = sample.WhichOneof("label")
    if kind == "label_index":
        if not 0 <= sample.label_index < len(class_names):
            raise SampleError(
                "label",
                f"label_index {sample.label_index} is out of range 0..{len(class_names) - 1}",
            )
        return sample.label_index
    if kind == "label_name":
        try:
            return class_names.index(sample.label_name)
        except ValueError:
            raise SampleError(
                "label", f"label_name {sample.label_name!r} is not one of the model's classes"
            ) from None
    return NO_LABEL


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


class ImageScorer:
    """Scores ScoreImages requests with the served model through the dynamic batcher."""

    def __init__(
        self, runner: ModelRunner, config: ServerConfig, metrics: ServerMetrics
    ) -> None:
        self.runner = runner
        self.manifest = runner.manifest
        self._config = config
        self._metrics = metrics
        m = self.manifest
        self.spec = InputSpec(
            channels=m.input_channels, height=m.input_height, width=m.input_width,
            mean=tuple(m.mean), std=tuple(m.std), resize=m.resize,
        )
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

    async def close(self) -> None:
        """Finishes every accepted request, then releases the threads."""
        await self.batcher.close()
        self._pool.shutdown(wait=True)

    def _check_model(self, name: str) -> None:
        if name and name != self.manifest.name:
            raise UnknownModel(f"model {name!r} is not served here; this server serves "
                               f"{self.manifest.name!r}")

    def _prepare(
        self, samples: list[pb.ImageSample]
    ) -> list[tuple[Float32Array | None, int, SampleError | None]]:
        """Worker thread: (input, label, error) per sample; exactly one of input/error is set."""
        out: list[tuple[Float32Array | None, int, SampleError | None]] = []
        observe = self._preprocess_time.observe
        for sample in samples:
            started = time.perf_counter()
            try:
                label = sample_label(sample, self.manifest.class_names)
                out.append((preprocess_sample(sample, self.spec), label, None))
            except SampleError as exc:
                out.append((None, NO_LABEL, exc))
            observe(time.perf_counter() - started)
        return out

    async def _prepare_all(
        self, samples: list[pb.ImageSample]
    ) -> list[tuple[Float32Array | None, int, SampleError | None]]:
        """Preprocesses in up to ``preprocess_threads`` slices in parallel, keeping order.

        A single small sample (the usual online call) is done on the event loop: decoding a few
        KiB costs less than the hand-off to a worker thread and back.
        """
        if len(samples) == 1 and _cheap_to_prepare(samples[0]):
            return self._prepare(samples)
        loop = asyncio.get_running_loop()
        slices = min(self._config.preprocess_threads, len(samples))
        bounds = np.linspace(0, len(samples), slices + 1).astype(int)
        parts = await asyncio.gather(*[
            loop.run_in_executor(self._pool, self._prepare, samples[a:b])
            for a, b in itertools.pairwise(bounds)
        ])
        return [item for part in parts for item in part]

    async def score(
        self, request: pb.ScoreImagesRequest, deadline: float | None
    ) -> pb.ScoreImagesResponse:
        """Scores every sample of ``request``; ``deadline`` is a time.monotonic() instant."""
        self._check_model(request.model_name)
        n = len(request.samples)
        limit = min(self._config.max_rows_per_request, self._config.max_queue_size)
        if n > limit:
            raise InvalidRequest(
                f"samples has {n} images, more than this server takes in one message ({limit}); "
                "send chunks with ScoreImagesStream"
            )
        temperature = check_temperature(request.options, self.manifest.temperature)
        reservation = self.batcher.reserve(n) if n else None  # refuse early, before decoding
        try:
            return await self._score_admitted(request, temperature, deadline, reservation)
        finally:
            if reservation is not None:
                reservation.release()

    async def _score_admitted(
        self, request: pb.ScoreImagesRequest, temperature: float, deadline: float | None,
        reservation: Reservation | None,
    ) -> pb.ScoreImagesResponse:
        n = len(request.samples)
        m = self.manifest
        response = pb.ScoreImagesResponse(model_name=m.name, model_version=m.version)
        prepared = await self._prepare_all(list(request.samples)) if n else []
        rows = np.array([i for i, (x, _, _) in enumerate(prepared) if x is not None], dtype=np.intp)
        for i, (_, _, error) in enumerate(prepared):
            if error is not None:
                response.errors.add(index=i, reason=error.reason, message=error.message)
                self._metrics.sample_errors.labels(error.reason).inc()
        has_labels = any(s.WhichOneof("label") is not None for s in request.samples)
        if len(rows):
            # one image (the usual online call) needs no copy: a view with a batch axis
            inputs = (prepared[0][0][None] if n == 1  # type: ignore[index]
                      else np.stack([prepared[i][0] for i in rows]))  # type: ignore[misc]
            logits = await self.batcher.infer(inputs, deadline, reservation)
        else:
            logits = np.zeros((0, m.num_classes), dtype=np.float32)
        labels = np.array([prepared[i][1] for i in rows], dtype=np.int64) if has_labels else None
        batch = score_logits(logits, labels, temperature)
        self._images_scored.inc(len(rows))
        self._metrics.observe_scores(m.name, batch.hardness, batch.mistakenness)
        full_logits = None
        if request.options.include_logits:
            full_logits = np.full((n, m.num_classes), np.nan, dtype=np.float32)
            full_logits[rows] = logits
        encode_scores(
            expand(batch, rows, n),
            ids=[s.id for s in request.samples] if any(s.id for s in request.samples) else (),
            class_names=m.class_names,
            include_probabilities=request.options.include_probabilities,
            logits=full_logits,
            into=response.scores,
        )
        return response

    def model_info(self, name: str) -> pb.GetModelInfoResponse:
        self._check_model(name)
        m = self.manifest
        b = self.batcher
        return pb.GetModelInfoResponse(
            name=m.name, version=m.version, class_names=m.class_names,
            input_channels=m.input_channels, input_height=m.input_height,
            input_width=m.input_width, mean=m.mean, std=m.std, resize=m.resize,
            temperature=m.temperature, execution_provider=self.runner.provider,
            batching=pb.BatchingSettings(
                max_batch_size=b.max_batch_size,
                max_queue_delay_microseconds=round(b.max_queue_delay_s * 1e6),
                preferred_batch_sizes=b.preferred_batch_sizes,
                max_queue_size=b.max_queue_size, instances=b.instances,
            ),
            weights_provenance=", ".join(f"{k}={v}" for k, v in m.provenance.items()),
            random_weights=m.random_weights,
        )
