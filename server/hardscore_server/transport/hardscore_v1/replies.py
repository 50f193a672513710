"""hardscore.v1 replies: score arrays packed into the wire ``Scores`` message (one tensor per
score), image results and the model description."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hardscore_server.pipeline.image_pipeline import ImagePipeline, ImageScores
from hardscore_server.pipeline.scores import LABEL_SCORES, MODEL_SCORES, ScoreBatch
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire.tensors import fill_tensor


def encode_scores(
    batch: ScoreBatch,
    ids: Sequence[str] = (),
    class_names: Sequence[str] = (),
    include_probabilities: bool = False,
    logits: npt.NDArray[np.floating] | None = None,
    into: pb.Scores | None = None,
    embeddings: npt.NDArray[np.floating] | None = None,
) -> pb.Scores:
    """Scores message for ``batch``: float64 scores, int32 classes, float32 probabilities/logits
    and (when given) embeddings [N, D].

    Written into ``into`` (an empty message, e.g. a response's field) when given, else a new one.
    """
    n = len(batch.predicted_class)
    msg = pb.Scores() if into is None else into
    msg.num_rows = n
    msg.ids[:] = ids
    msg.class_names[:] = class_names
    fill_tensor(msg.predicted_class, batch.predicted_class, np.int32)
    for name in MODEL_SCORES:
        fill_tensor(getattr(msg, name), getattr(batch, name), np.float64)
    if batch.given_label is not None:
        fill_tensor(msg.given_label, batch.given_label, np.int32)
        for name in LABEL_SCORES:
            fill_tensor(getattr(msg, name), getattr(batch, name), np.float64)
    if include_probabilities:
        fill_tensor(msg.probabilities, batch.probabilities, np.float32)
    if logits is not None:
        fill_tensor(msg.logits, logits, np.float32)
    if embeddings is not None:
        fill_tensor(msg.embeddings, embeddings, np.float32)
    return msg


def image_response(
    result: ImageScores, request: pb.ScoreImagesRequest, pipeline: ImagePipeline
) -> pb.ScoreImagesResponse:
    """The ScoreImages reply: scores of every sample, in order, and the failed samples' errors."""
    m = pipeline.manifest
    response = pb.ScoreImagesResponse(model_name=m.name, model_version=m.version)
    for index, error in result.errors:
        response.errors.add(index=index, reason=error.reason, message=error.message)
    samples = request.samples
    encode_scores(
        result.scores,
        ids=[s.id for s in samples] if any(s.id for s in samples) else (),
        class_names=m.class_names,
        include_probabilities=request.options.include_probabilities,
        logits=result.logits if request.options.include_logits else None,
        into=response.scores,
        embeddings=result.embeddings,  # None unless the request asked
    )
    return response


def model_info(pipeline: ImagePipeline) -> pb.GetModelInfoResponse:
    """The GetModelInfo reply: the served model, its input and its batching settings."""
    m = pipeline.manifest
    b = pipeline.batcher
    return pb.GetModelInfoResponse(
        name=m.name, version=m.version, class_names=m.class_names,
        input_channels=m.input_channels, input_height=m.input_height,
        input_width=m.input_width, mean=m.mean, std=m.std, resize=m.resize,
        temperature=m.temperature, execution_provider=pipeline.provider,
        batching=pb.BatchingSettings(
            max_batch_size=b.max_batch_size,
            max_queue_delay_microseconds=round(b.max_queue_delay_s * 1e6),
            preferred_batch_sizes=b.preferred_batch_sizes,
            max_queue_size=b.max_queue_size, instances=b.instances,
        ),
        weights_provenance=", ".join(f"{k}={v}" for k, v in m.provenance.items()),
        random_weights=m.random_weights,
        embedding_dim=pipeline.embedding_dim,
    )


# -- reply sizes -------------------------------------------------------------------------------
# gRPC refuses to send a reply larger than the message limit (the caller gets RESOURCE_EXHAUSTED
# after the work is done). These functions give the exact serialized size of a reply from the
# request's shape, so a request whose reply cannot fit is refused before any scoring
# (errors.check_reply_fits).


def _varint_bytes(value: int) -> int:
    """Bytes of ``value`` (>= 0) as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def _field_bytes(payload: int) -> int:
    """Bytes of a length-delimited field numbered below 16: tag, length, payload."""
    return 1 + _varint_bytes(payload) + payload


def tensor_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Serialized size of a Tensor written by ``fill_tensor`` (dtype set, packed shape, data)."""
    data = math.prod(shape) * itemsize
    size = 2  # dtype: tag + a one-byte enum value (never the default 0)
    if shape:
        size += _field_bytes(sum(_varint_bytes(d) for d in shape))
    if data:
        size += _field_bytes(data)
    return size


def strings_bytes(values: Sequence[str]) -> int:
    """Serialized size of a repeated string field numbered below 16 holding ``values``."""
    if not values:
        return 0
    total = len("".join(values).encode())
    if max(map(len, values)) < 32:  # every value under 128 bytes: one-byte lengths
        return 2 * len(values) + total
    return sum(_field_bytes(len(v.encode())) for v in values)


def scores_bytes(
    n_rows: int,
    n_classes: int,
    *,
    labelled: bool,
    include_probabilities: bool = False,
    include_logits: bool = False,
    ids: Sequence[str] = (),
    class_names: Sequence[str] = (),
    embedding_dim: int = 0,
) -> int:
    """Exact serialized size, in bytes, of the ``Scores`` message ``encode_scores`` writes;
    ``embedding_dim`` > 0: with embeddings float32 [N, embedding_dim] (field 16: 2-byte tag)."""
    size = 0 if n_rows == 0 else 1 + _varint_bytes(n_rows)
    size += strings_bytes(ids) + strings_bytes(class_names)
    column = _field_bytes(tensor_bytes([n_rows], 8))  # one float64 score
    classes = _field_bytes(tensor_bytes([n_rows], 4))  # one int32 class index
    size += classes + len(MODEL_SCORES) * column
    if labelled:
        size += classes + len(LABEL_SCORES) * column
    matrix = _field_bytes(tensor_bytes([n_rows, n_classes], 4))  # float32 [N, C]
    size += matrix * (int(include_probabilities) + int(include_logits))
    if embedding_dim:
        payload = tensor_bytes([n_rows, embedding_dim], 4)
        size += 2 + _varint_bytes(payload) + payload
    return size


def scores_reply_bytes(scores: int, first_row: int | None = None) -> int:
    """Size of a ScoreLogitsResponse holding a Scores of ``scores`` bytes; with ``first_row``
    (a stream's reply), of a ScoreLogitsStreamResponse."""
    size = _field_bytes(scores)
    if first_row:
        size += 1 + _varint_bytes(first_row)
    return size


def image_reply_bytes(
    scores: int, model_name: str, model_version: str, first_row: int | None = None
) -> int:
    """Size of a ScoreImagesResponse (in a ScoreImagesStreamResponse with ``first_row``) holding
    a Scores of ``scores`` bytes and no sample errors: a lower bound when some samples fail."""
    size = _field_bytes(scores) + strings_bytes([s for s in (model_name, model_version) if s])
    return size if first_row is None else scores_reply_bytes(size, first_row)
