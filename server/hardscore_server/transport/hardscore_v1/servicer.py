"""The hardscore.v1 ScoringService: unpack the request, call the domain code, pack the response.

No score math, batching or model code lives here. Domain errors are answered with the status
``transport.statuses`` maps them to (through ``transport.calls``); anything unexpected becomes
INTERNAL and is logged, never a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import InvalidRequest, UnknownModel, check_reply_fits
from hardscore_server.pipeline.image_pipeline import ImagePipeline
from hardscore_server.pipeline.model_repository import ModelRepository
from hardscore_server.pipeline.scores import score_logits, score_probabilities
from hardscore_server.transport.call_gate import UnparseableMessage, release_when_done
from hardscore_server.transport.calls import (
    CallRecorder,
    cancelled_code,
    deadline_of,
    pass_on,
)
from hardscore_server.transport.hardscore_v1.replies import (
    encode_scores,
    image_reply_bytes,
    image_response,
    model_info,
    scores_bytes,
    scores_reply_bytes,
)
from hardscore_server.transport.hardscore_v1.requests import (
    PROBABILITIES,
    LogitsInput,
    image_batch,
    parse_logits_request,
)
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

T = TypeVar("T")

LOGITS_MODEL_LABEL = "logits"
"""The ``model`` label of score histograms for ScoreLogits (the caller's model is unknown)."""


class ScoringServicer(pb_grpc.ScoringServiceServicer):
    """Serves ScoreLogits(Stream), ScoreImages(Stream), GetModelInfo and ListModels."""

    def __init__(
        self, config: ServerConfig, metrics: ServerMetrics, models: ModelRepository | None
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._models = models
        self._calls = CallRecorder(metrics)
        # numpy releases the GIL in its kernels: scoring off the event loop keeps it responsive.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="score")

    def close(self) -> None:
        """Releases the scoring threads without waiting (the calls they served have ended)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- logits -------------------------------------------------------------------------------

    def _score_logits(
        self, request: pb.ScoreLogitsRequest, first_row: int | None = None
    ) -> pb.Scores:
        """Scores one ScoreLogits request, or a stream's chunk starting at ``first_row``."""
        parsed: LogitsInput = parse_logits_request(request, self._config.max_rows_per_request)
        n_rows, n_classes = parsed.logits.shape
        size = scores_bytes(
            n_rows, n_classes, labelled=parsed.labels is not None,
            include_probabilities=parsed.include_probabilities, ids=parsed.ids,
            class_names=parsed.class_names)
        check_reply_fits(scores_reply_bytes(size, first_row), self._config.max_message_bytes,
                         n_rows, "ScoreLogitsStream" if first_row is None else None)
        if parsed.kind == PROBABILITIES:
            batch = score_probabilities(parsed.logits, parsed.labels)
        else:
            batch = score_logits(parsed.logits, parsed.labels, parsed.temperature)
        self._metrics.samples.labels(parsed.kind).inc(len(parsed.logits))
        self._metrics.observe_scores(LOGITS_MODEL_LABEL, batch.hardness, batch.mistakenness)
        return encode_scores(batch, parsed.ids, parsed.class_names, parsed.include_probabilities)

    async def ScoreLogits(
        self, request: pb.ScoreLogitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreLogitsResponse:
        async def work() -> pb.ScoreLogitsResponse:
            scores = await self._in_pool(self._score_logits, request)
            return pb.ScoreLogitsResponse(scores=scores)

        return await self._calls.unary("ScoreLogits", context, work)

    async def ScoreLogitsStream(
        self,
        request_iterator: AsyncIterator[pb.ScoreLogitsStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ScoreLogitsStreamResponse]:
        async def score_chunk(
            first_row: int, msg: pb.ScoreLogitsStreamRequest
        ) -> pb.ScoreLogitsStreamResponse:
            scores = await self._in_pool(
                lambda chunk: self._score_logits(chunk, first_row), msg.chunk)
            return pb.ScoreLogitsStreamResponse(scores=scores, first_row=first_row)

        def rows_of(msg: pb.ScoreLogitsStreamRequest) -> int:
            chunk = msg.chunk
            shape = (chunk.probabilities if chunk.HasField("probabilities") else chunk.logits).shape
            return int(shape[0]) if len(shape) else 0

        replies = self._stream("ScoreLogitsStream", request_iterator, context, score_chunk,
                               rows_of, "rows")
        async for response in replies:
            try:
                yield response
            except BaseException as exc:  # cancelled while written: _stream counts it
                await pass_on(replies, exc)
                raise

    # -- images -------------------------------------------------------------------------------

    def _repository(self) -> ModelRepository:
        if self._models is None:
            raise UnknownModel("this server runs with --no-model: only ScoreLogits is served")
        return self._models

    async def _score_images(
        self, request: pb.ScoreImagesRequest, context: grpc.aio.ServicerContext,
        first_row: int | None = None,
    ) -> pb.ScoreImagesResponse:
        """Scores one ScoreImages request, or a stream's chunk starting at ``first_row``.

        A reply that cannot fit in the message limit is refused before any decoding (its size
        without sample errors is known from the request); one that sample errors push over the
        limit is refused once scored.
        """
        # the version that admits the call computes it, whatever is loaded meanwhile
        with self._repository().use(request.model_name, request.model_version) as pipeline:
            batch = image_batch(request, pipeline.max_samples)
            self._check_image_reply(request, pipeline, first_row, None)
            result = await pipeline.score(batch, deadline_of(context))
            response = image_response(result, request, pipeline)
            if result.errors:
                self._check_image_reply(request, pipeline, first_row, response)
            return response

    def _check_image_reply(
        self, request: pb.ScoreImagesRequest, pipeline: ImagePipeline, first_row: int | None,
        response: pb.ScoreImagesResponse | None,
    ) -> None:
        """Refuses a reply over the message limit: ``response`` itself, or (None) its lower
        bound, the reply without sample errors."""
        n = len(request.samples)
        m = pipeline.manifest
        if response is None:
            samples = request.samples
            size = image_reply_bytes(
                scores_bytes(
                    n, len(m.class_names),
                    labelled=any(s.WhichOneof("label") is not None for s in samples),
                    include_probabilities=request.options.include_probabilities,
                    include_logits=request.options.include_logits,
                    embedding_dim=(pipeline.embedding_dim
                                   if request.options.include_embeddings else 0),
                    ids=[s.id for s in samples] if any(s.id for s in samples) else (),
                    class_names=m.class_names),
                m.name, m.version, first_row)
        else:
            size = response.ByteSize()
            if first_row is not None:
                size = scores_reply_bytes(size, first_row)
        check_reply_fits(size, self._config.max_message_bytes, n,
                         "ScoreImagesStream" if first_row is None else None, "samples")

    async def ScoreImages(
        self, request: pb.ScoreImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreImagesResponse:
        async def work() -> pb.ScoreImagesResponse:
            return await self._score_images(request, context)

        return await self._calls.unary("ScoreImages", context, work)

    async def ScoreImagesStream(
        self,
        request_iterator: AsyncIterator[pb.ScoreImagesStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ScoreImagesStreamResponse]:
        async def score_chunk(
            first_row: int, msg: pb.ScoreImagesStreamRequest
        ) -> pb.ScoreImagesStreamResponse:
            result = await self._score_images(msg.chunk, context, first_row)
            return pb.ScoreImagesStreamResponse(result=result, first_row=first_row)

        replies = self._stream("ScoreImagesStream", request_iterator, context, score_chunk,
                               lambda m: len(m.chunk.samples), "samples",
                               has_room=self._image_queue_has_room)
        async for response in replies:
            try:
                yield response
            except BaseException as exc:  # cancelled while written: _stream counts it
                await pass_on(replies, exc)
                raise

    def _image_queue_has_room(self, samples: int) -> bool:
        try:  # the version an unversioned chunk goes to now
            pipeline = self._repository().resolve("").pipeline
        except UnknownModel:
            return True  # several models, or none: the chunk itself is answered
        return pipeline.batcher.has_room(samples)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        async def work() -> pb.GetModelInfoResponse:
            with self._repository().use(request.model_name, request.model_version) as pipeline:
                return model_info(pipeline)

        return await self._calls.unary("GetModelInfo", context, work)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            rows = await self._repository().index(request.ready_only)
            return pb.ListModelsResponse(models=[pb.ModelVersionState(**row) for row in rows])

        return await self._calls.unary("ListModels", context, work)

    # -- plumbing -----------------------------------------------------------------------------

    async def _in_pool(self, fn: Callable[[Any], T], arg: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)

    async def _stream(
        self,
        method: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        handle: Callable[[int, Any], Awaitable[T]],
        rows_of: Callable[[Any], int],
        unit: str,
        read_ahead: int = 2,
        has_room: Callable[[int], bool] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Handles chunks concurrently (up to ``read_ahead`` ahead) and yields results in order.

        ``handle(first_row, message)`` scores one chunk; an InvalidRequest it raises is answered
        naming the chunk and where it starts in the stream (in ``unit``, e.g. rows).
        ``has_room(rows)`` says whether a chunk of that size would be admitted now: a chunk is
        started while earlier ones are in flight only then, else once they are done, so a
        stream is never refused because of its own read-ahead.
        """
        started = time.perf_counter()
        pending: asyncio.Queue[asyncio.Task[T] | None] = asyncio.Queue(maxsize=read_ahead)

        async def located(index: int, first_row: int, msg: Any) -> T:
            try:
                return await handle(first_row, msg)
            except InvalidRequest as exc:
                raise InvalidRequest(
                    f"chunk {index} (stream {unit} from {first_row}): {exc}") from None

        async def read_all() -> None:
            first_row = 0
            index = 0
            in_flight: list[asyncio.Task[T]] = []
            try:
                async for msg in _located_messages(requests):
                    rows = rows_of(msg)
                    in_flight = [t for t in in_flight if not t.done()]
                    if in_flight and has_room is not None and not has_room(rows):
                        await asyncio.wait(in_flight)  # admission now sees only other callers
                    task = asyncio.ensure_future(located(index, first_row, msg))
                    # a chunk that fails after an earlier one already ended the stream is
                    # never awaited: read its outcome so asyncio logs no "never retrieved"
                    task.add_done_callback(_read_outcome)
                    # its request budget comes back once it is scored (call_gate)
                    task.add_done_callback(release_when_done(requests, msg))
                    in_flight.append(task)
                    await pending.put(task)
                    first_row += rows
                    index += 1
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read_all())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a failure to read the request stream
        except asyncio.CancelledError:
            self._calls.record(method, cancelled_code(context), started)
            raise
        except Exception as exc:
            await self._calls.fail(method, context, exc, started)
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
        self._calls.record(method, grpc.StatusCode.OK, started)


def _read_outcome(task: asyncio.Task[Any]) -> None:
    """Marks a finished chunk's exception as retrieved (its caller may have gone)."""
    if not task.cancelled():
        task.exception()


async def _located_messages(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The stream's messages; one that does not parse is reported with its index (from 0)."""
    iterator = requests.__aiter__()
    index = 0
    while True:
        try:
            msg = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except UnparseableMessage as exc:
            raise UnparseableMessage(f"stream message {index}: {exc}") from None
        index += 1
        yield msg
