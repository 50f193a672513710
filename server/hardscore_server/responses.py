"""Packs score arrays into the wire ``Scores`` message (one tensor per score)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hardscore_client.proto import scoring_pb2 as pb
from hardscore_client.tensors import fill_tensor
from hardscore_server.scores import LABEL_SCORES, MODEL_SCORES, ScoreBatch


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
