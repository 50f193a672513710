"""Checks hardscore.v1 requests and turns them into domain inputs, or raises InvalidRequest
naming the field.

Every message names the offending field and, for per-row problems, the first offending row, so
a caller can find the bad sample in a million-row upload without bisecting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hardscore_server.pipeline.errors import InvalidRequest
from hardscore_server.pipeline.image_pipeline import ImageBatch, Label
from hardscore_server.pipeline.preprocess import SampleError
from hardscore_server.pipeline.scores import NO_LABEL
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire.scores import PROBABILITY_SUM_TOLERANCE, probabilities_problem
from hardscore_wire.tensors import TensorError, dtype_name, from_tensor


@dataclass(frozen=True)
class LogitsInput:
    """A validated ScoreLogits request."""

    logits: npt.NDArray[np.floating]
    labels: npt.NDArray[np.int64] | None
    ids: Sequence[str]
    class_names: Sequence[str]
    temperature: float
    include_probabilities: bool
    kind: str = "logits"
    """What ``logits`` holds: "logits", or "probabilities" (predicted probabilities)."""


def check_temperature(options: pb.ScoringOptions, default: float) -> float:
    """The request's temperature (finite, > 0), or ``default`` when it sets none."""
    if not options.HasField("temperature"):
        return default
    t = options.temperature
    if not (math.isfinite(t) and t > 0):
        raise InvalidRequest(f"options.temperature must be finite and > 0, got {t}")
    return t


def check_class_names(names: Sequence[str], n_classes: int) -> list[str]:
    """Class names, when given: one per class, unique, non-empty."""
    names = list(names)
    if not names:
        return names
    if len(names) != n_classes:
        raise InvalidRequest(
            f"options.class_names has {len(names)} names, expected {n_classes} (one per class)"
        )
    for i, name in enumerate(names):
        if not name:
            raise InvalidRequest(f"options.class_names[{i}] is empty")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise InvalidRequest(f"options.class_names has the name {dup!r} twice")
    return names


def check_ids(ids: Sequence[str], n_rows: int) -> Sequence[str]:
    if len(ids) not in (0, n_rows):
        raise InvalidRequest(f"ids has {len(ids)} entries, expected 0 or {n_rows} (one per row)")
    return ids


def label_indices(
    labels: pb.GivenLabels, n_rows: int, n_classes: int, class_names: Sequence[str]
) -> npt.NDArray[np.int64] | None:
    """Given labels as class indices (-1 = no label), or None when the request has none."""
    kind = labels.WhichOneof("labels")
    if kind is None:
        return None
    if kind == "indices":
        values = np.asarray(labels.indices.values, dtype=np.int64)
        if len(values) != n_rows:
            raise InvalidRequest(
                f"labels.indices has {len(values)} labels, expected {n_rows} (one per row)"
            )
        bad = np.flatnonzero((values < NO_LABEL) | (values >= n_classes))
        if len(bad):
            i = int(bad[0])
            raise InvalidRequest(
                f"labels.indices[{i}] = {values[i]} is out of range: expected 0..{n_classes - 1} "
                f"or -1 for no label"
            )
        return values
    names = labels.names.values
    if len(names) != n_rows:
        raise InvalidRequest(
            f"labels.names has {len(names)} labels, expected {n_rows} (one per row)"
        )
    if not class_names:
        raise InvalidRequest("labels.names needs options.class_names to map names to classes")
    lookup = {name: i for i, name in enumerate(class_names)}
    lookup[""] = NO_LABEL
    out = np.empty(n_rows, dtype=np.int64)
    for i, name in enumerate(names):
        index = lookup.get(name)
        if index is None:
            raise InvalidRequest(f"labels.names[{i}] = {name!r} is not a known class name")
        out[i] = index
    return out


LOGITS = "logits"
PROBABILITIES = "probabilities"


def parse_logits_request(request: pb.ScoreLogitsRequest, max_rows: int) -> LogitsInput:
    """Validates a ScoreLogits request; raises InvalidRequest on the first problem found.

    The request carries logits or (``probabilities`` field) predicted probabilities, not both.
    """
    has_logits, has_probs = request.HasField("logits"), request.HasField("probabilities")
    if has_logits and has_probs:
        raise InvalidRequest("set logits or probabilities, not both")
    if not (has_logits or has_probs):
        raise InvalidRequest("logits is required: a [N, C] FLOAT32 or FLOAT64 tensor "
                             "(or probabilities, for predicted probabilities)")
    kind = LOGITS if has_logits else PROBABILITIES
    tensor = request.logits if has_logits else request.probabilities
    values = _float_matrix(tensor, kind, max_rows)
    if kind == PROBABILITIES:
        check_probabilities(values)
        if request.options.HasField("temperature"):
            raise InvalidRequest("options.temperature applies to logits only: probabilities are "
                                 "scored as given")
    n_rows, n_classes = values.shape
    class_names = check_class_names(request.options.class_names, n_classes)
    return LogitsInput(
        logits=values,
        labels=label_indices(request.labels, n_rows, n_classes, class_names),
        ids=check_ids(request.ids, n_rows),
        class_names=class_names,
        temperature=check_temperature(request.options, 1.0),
        include_probabilities=request.options.include_probabilities,
        kind=kind,
    )


def _float_matrix(tensor: pb.Tensor, field: str, max_rows: int) -> npt.NDArray[np.floating]:
    """``tensor`` as a finite float [N, C] array with C >= 2 and N <= max_rows."""
    if tensor.dtype not in (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64):
        raise InvalidRequest(
            f"{field}.dtype must be DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT64, got "
            + dtype_name(tensor.dtype)
        )
    if len(tensor.shape) != 2:
        raise InvalidRequest(f"{field}.shape must be [N, C], got {list(tensor.shape)}")
    n_rows, n_classes = tensor.shape
    if n_rows > max_rows:
        raise InvalidRequest(
            f"{field} has {n_rows} rows, more than max_rows_per_request ({max_rows}); "
            "send chunks with ScoreLogitsStream"
        )
    if n_classes < 2:
        raise InvalidRequest(f"{field} must have at least 2 classes, got C = {n_classes}")
    try:
        values = from_tensor(tensor, field)
    except TensorError as exc:
        raise InvalidRequest(str(exc)) from None
    finite = np.isfinite(values)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise InvalidRequest(
            f"{field} row {row} has a non-finite value ({values[row, col]} in class {col})"
        )
    return values  # type: ignore[return-value]  # dtype checked above: float32/64


def check_probabilities(probs: npt.NDArray[np.floating]) -> None:
    """Every value in [0, 1] and every row summing to 1 within PROBABILITY_SUM_TOLERANCE;
    raises InvalidRequest naming the first bad row and the fix otherwise (values far outside
    [0, 1]: send them as logits; a row off the sum: renormalise it or check the source)."""
    problem = probabilities_problem(probs, PROBABILITY_SUM_TOLERANCE,
                                    as_logits="send them in the logits field")
    if problem is not None:
        raise InvalidRequest(problem)


def image_batch(request: pb.ScoreImagesRequest, max_samples: int) -> ImageBatch:
    """A ScoreImages request as the image pipeline's input.

    A sample's problems that the message itself shows (no image, a pixels tensor that cannot be
    read) become that sample's error; the pipeline reports them in its place.
    """
    n = len(request.samples)
    if n > max_samples:
        raise InvalidRequest(
            f"samples has {n} images, more than this server takes in one message "
            f"({max_samples}); send chunks with ScoreImagesStream"
        )
    temperature = (check_temperature(request.options, 1.0)
                   if request.options.HasField("temperature") else None)
    images: list[bytes | np.ndarray | SampleError] = []
    labels: list[Label] = []
    for sample in request.samples:
        kind = sample.WhichOneof("image")
        if kind == "encoded":
            images.append(sample.encoded)
        elif kind == "pixels":
            try:
                images.append(from_tensor(sample.pixels, "pixels"))
            except TensorError as exc:
                images.append(SampleError("shape", str(exc)))
        else:
            images.append(SampleError("empty", "sample has neither encoded bytes nor pixels"))
        label = sample.WhichOneof("label")
        labels.append(sample.label_index if label == "label_index"
                      else sample.label_name if label == "label_name" else None)
    has_labels = any(label is not None for label in labels)
    return ImageBatch(images=images, labels=labels if has_labels else None,
                      temperature=temperature, model_name=request.model_name,
                      include_embeddings=request.options.include_embeddings)
