"""The image pipeline, the same for every protocol: check -> admit -> preprocess -> batch -> score.

Servicers (hardscore.v1, the Open Inference Protocol) translate their messages into an
``ImageBatch`` and the ``ImageScores`` back into their replies; everything between is here:
the model check, the per-request sample limit, the labels, admission to the batcher's queue
(before any decoding, so a full queue refuses at once), preprocessing (decode_scheduler: the
decode budget, one bounded thread pool that calls share turn by turn and that stops a call's
decoding when the call has gone), the model run through the dynamic batcher, and the scores.
The model is anything shaped like ``ServedModel`` (the ONNX Runtime ``ModelRunner``, or a
stand-in in tests).

One bad sample (undecodable bytes, a wrong tensor shape, an unknown label) is reported in
``ImageScores.errors`` and gets predicted_class -1 and NaN scores; its neighbours are scored.
A caller that cannot report per-sample errors asks for ``on_sample_error="raise"``: the first
bad sample then fails the request with ``SampleFailed`` before the model runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import ModelManifest
from hardscore_server.pipeline.batcher import DynamicBatcher, RequestTiming, Reservation
from hardscore_server.pipeline.decode_scheduler import DecodeScheduler, DecodeShare, Image
from hardscore_server.pipeline.errors import (
    DeadlineExpired,
    InvalidRequest,
    NoEmbeddings,
    UnknownModel,
)
from hardscore_server.pipeline.preprocess import InputSpec, SampleError
from hardscore_server.pipeline.scores import (
    LABEL_SCORES,
    MODEL_SCORES,
    NO_LABEL,
    ScoreBatch,
    score_logits,
)

Float32Array = npt.NDArray[np.float32]

__all__ = ["Image", "ImageBatch", "ImagePipeline", "ImageScores", "Label", "SampleFailed",
           "ServedModel", "expand", "input_spec", "label_indices", "score_rows"]

Label = int | str | None
"""A given label: a class index, a class name, or None for none."""


class ServedModel(Protocol):
    """What the pipeline needs of the model: ``ModelRunner``, or a stand-in in tests."""

    @property
    def manifest(self) -> ModelManifest:
        """Input size and normalisation, class names (output columns), temperature."""

    @property
    def provider(self) -> str:
        """The execution provider running it, e.g. "CPUExecutionProvider" (metrics, metadata)."""

    def run(self, instance: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """Logits float32 [b, K] of model inputs float32 [b, C, H, W], on model instance
        ``instance`` (0 .. config.instances - 1); called from the batcher's threads."""

    # A model whose manifest has an embedding also has ``run_with_embedding(instance, inputs)
    # -> (logits [b, K], embeddings float32 [b, D])`` (D = manifest.embedding_dim), as
    # ModelRunner does; without it, asking for embeddings is refused (NoEmbeddings).


@dataclass(frozen=True)
class ImageBatch:
    """The images of one request and what to do with them.

    ``images`` is a sequence of ``Image`` (forms may be mixed), or one array of the whole batch
    at the model's size [N, C, H, W]: float32 is the model input taken as is (NaN and infinity
    give NaN scores, never an error), uint8 is pixels 0..255, normalised with the model's mean
    and std. ``labels`` (one per image, or None for no label scores at all) turns the label
    scores on; rows whose label is None (or NO_LABEL, in an integer array of class indices) get
    NaN label scores. ``temperature`` (> 0) replaces
    the model's own. ``include_embeddings`` asks for the model's embeddings too (NoEmbeddings
    when it has none).
    """

    images: Sequence[Image] | np.ndarray
    labels: Sequence[Label] | npt.NDArray[np.integer] | None = None
    temperature: float | None = None
    model_name: str = ""
    on_sample_error: Literal["report", "raise"] = "report"
    include_embeddings: bool = False

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageScores:
    """The result of one ImageBatch, N rows in input order.

    ``scores`` holds every score (label scores None when the batch had no labels); ``logits``
    float32 [N, K] is the model output. Rows in ``errors`` have predicted_class -1 and NaN
    scores and logits; so do rows whose logits are not finite. ``embeddings`` float32 [N, D]
    (the model's penultimate pooled features) only when the batch asked for them, else None;
    rows in ``errors`` are NaN.
    """

    scores: ScoreBatch
    logits: Float32Array
    errors: list[tuple[int, SampleError]] = field(default_factory=list)
    embeddings: Float32Array | None = None


class SampleFailed(InvalidRequest):
    """A sample could not be used and the batch asked for ``on_sample_error="raise"``."""

    def __init__(self, index: int, error: SampleError) -> None:
        super().__init__(f"sample {index}: {error}")
        self.index = index
        self.error = error


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


def input_spec(manifest: ModelManifest) -> InputSpec:
    """The preprocessing of a model directory: its input size, normalisation and resize."""
    m = manifest
    return InputSpec(
        channels=m.input_channels, height=m.input_height, width=m.input_width,
        mean=tuple(m.mean), std=tuple(m.std), resize=m.resize,
    )


def label_indices(
    labels: Sequence[Label] | npt.NDArray[np.integer] | None, names: Sequence[str], n: int
) -> tuple[npt.NDArray[np.int64] | None, list[tuple[int, SampleError]]]:
    """Each of ``n`` labels as an index of ``names`` (NO_LABEL for None), and the labels that
    are unknown (reason "label"); (None, []) without labels."""
    if labels is None:
        return None, []
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


def score_rows(
    logits: npt.NDArray[np.float32], labels: npt.NDArray[np.int64] | None, temperature: float
) -> ScoreBatch:
    """Every score of the scored rows' ``logits`` and ``labels`` (NO_LABEL = none); rows whose
    logits are not finite get predicted_class -1 and NaN scores, quietly."""
    with np.errstate(all="ignore"):
        scores = score_logits(logits, labels, temperature)
    return replace(scores, predicted_class=np.where(
        np.isfinite(scores.confidence), scores.predicted_class, -1))


class ImagePipeline:
    """Scores ImageBatches with the served model through one dynamic batcher and one decode
    scheduler; ``close()`` it at the end. Score on one event loop."""

    def __init__(
        self, runner: ServedModel, config: ServerConfig, metrics: ServerMetrics,
        decode_share: DecodeShare | None = None,
    ) -> None:
        self.manifest: ModelManifest = runner.manifest
        self.provider: str = runner.provider
        self._config = config
        self._metrics = metrics
        m = self.manifest
        self.spec = input_spec(m)
        self._mean = np.asarray(m.mean, dtype=np.float32)[:, np.newaxis, np.newaxis]
        self._std = np.asarray(m.std, dtype=np.float32)[:, np.newaxis, np.newaxis]
        # a model repository's models share one decode pool and budget (decode_share)
        self.decoder = DecodeScheduler(self.spec, config, metrics, m.name,
                                       shared=decode_share)
        self.batcher = DynamicBatcher(
            runner.run,
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
            max_queue_size=config.max_queue_size,
            instances=config.instances,
            preferred_batch_sizes=config.preferred_batch_sizes,
            metrics=metrics,
            model=m.name,
            run_all=getattr(runner, "run_with_embedding", None) if m.has_embedding else None,
        )
        metrics.model_info.labels(m.name, m.version, runner.provider).set(1)
        self._images_scored = metrics.samples.labels("images")

    @property
    def has_embeddings(self) -> bool:
        """Whether requests may ask for the model's embeddings."""
        return self.batcher.can_infer_all

    @property
    def embedding_dim(self) -> int:
        """Width of the model's embeddings; 0 when it has none."""
        return self.manifest.embedding_dim if self.has_embeddings else 0

    @property
    def max_samples(self) -> int:
        """The most images one request may hold (the row limit, at most the queue's size)."""
        return min(self._config.max_rows_per_request, self._config.max_queue_size)

    async def close(self) -> None:
        """Finishes every queued request, then releases the threads without waiting for
        decodes still running or queued (their calls have ended: the server drains first)."""
        await self.batcher.close()
        self.decoder.close()

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
        not match the images, a bad temperature), NoEmbeddings, SampleFailed, the batcher's
        QueueFull and DeadlineExpired, and the decoder's DecodeBudgetExceeded, DeadlineExpired and
        ShuttingDown. ``timing``, when given, gets the batcher's queue and model time.
        """
        self.check_model(batch.model_name)
        if batch.include_embeddings and not self.has_embeddings:
            raise NoEmbeddings(self.manifest.name)
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
        embeddings: Float32Array | None = None
        if len(rows) and batch.include_embeddings:
            outputs = await self.batcher.infer_all(inputs, deadline, reservation, timing)
            logits = np.asarray(outputs[0], dtype=np.float32)
            embeddings = np.asarray(outputs[1], dtype=np.float32)
        elif len(rows):
            logits = np.asarray(await self.batcher.infer(inputs, deadline, reservation, timing),
                                dtype=np.float32)
        else:
            logits = np.zeros((0, m.num_classes), dtype=np.float32)
            if batch.include_embeddings:
                embeddings = np.zeros((0, self.embedding_dim), dtype=np.float32)
        scores = score_rows(logits, None if labels is None else labels[rows], temperature)
        self._images_scored.inc(len(rows))
        self._metrics.observe_scores(m.name, scores.hardness, scores.mistakenness)
        if len(rows) != n:
            full = np.full((n, m.num_classes), np.nan, dtype=np.float32)
            full[rows] = logits
            logits = full
            if embeddings is not None:
                full_emb = np.full((n, self.embedding_dim), np.nan, dtype=np.float32)
                full_emb[rows] = embeddings
                embeddings = full_emb
        return ImageScores(scores=expand(scores, rows, n), logits=logits, errors=errors,
                           embeddings=embeddings)

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
                inputs = await self.decoder.run_in_pool(self._normalise, images)
            else:
                inputs = np.ascontiguousarray(images, dtype=np.float32)
            if bad:
                inputs = inputs[[i for i in range(n) if i not in bad]]
        else:
            prepared = await self.decoder.preprocess(
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
        return label_indices(labels, self.manifest.class_names, n)

    def _normalise(self, pixels: npt.NDArray[np.uint8]) -> Float32Array:
        """uint8 [N, C, H, W] pixels -> (pixel / 255 - mean) / std in float32, as a decoded
        file's pixels are."""
        x = pixels.astype(np.float32)
        x /= np.float32(255)
        x -= self._mean
        x /= self._std
        return x
