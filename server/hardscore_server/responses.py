"""hardscore.v1 replies: score arrays packed into the wire ``Scores`` message (one tensor per
score), image results and the model description."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hardscore_server.image_pipeline import ImagePipeline, ImageScores
from hardscore_server.scores import LABEL_SCORES, MODEL_SCORES, ScoreBatch
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire.tensors import fill_tensor


def encode_scores(
    batch: ScoreBatch,
    ids: Sequence[str] = (),
    class_names: Sequence[str] = (),
    include_probabilities: bool = False,
    logits: npt.NDArray[np.floating] | None = None,
    into: pb.Scores | None = None,
) -> pb.Scores:
    """Scores message for ``batch``: float64 scores, int32 classes, float32 probabilities/logits.

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
    )
