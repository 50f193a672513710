"""Request building and response decoding shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from hardscore_wire import scoring_pb2 as pb
from hardscore_wire.scores import SCORE_NAMES
from hardscore_wire.tensors import fill_tensor, from_tensor

MAX_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class SampleError:
    """Why one image was not scored: its index in the input, a reason token, a message."""

    index: int
    reason: str
    message: str


@dataclass(frozen=True)
class ModelRun:
    """Rows ``first_row`` onwards (up to the next run's ``first_row``) were computed by model
    ``name``, version ``version``, as the server's replies name them."""

    first_row: int
    name: str
    version: str


class MixedVersions(ValueError):
    """The rows of one result were computed by more than one model version (a version swap
    during a chunked call): ``ScoreResult.computed_by`` says which rows each computed."""


@dataclass
class ScoreResult:
    """Scores of N rows, one numpy array per score (attribute named like the score).

    Label scores (``given_label``, ``mistakenness``, ...) are None when no labels were sent and
    NaN on rows without a label. For images, failed samples have ``predicted_class`` -1, NaN
    scores and an entry in ``errors``. ``embeddings`` float32 [N, D] (the model's penultimate
    pooled features; NaN rows for failed samples) only when asked for, else None.

    For images, ``computed_by`` says which model version computed which rows, from the tags of
    the server's replies: one ModelRun per stretch of rows (a chunked call whose chunks were
    computed by different versions, during a swap, has several). ``model_name`` and
    ``model_version`` name the one model version (MixedVersions when there were several);
    ``row_models()`` gives each row's. Empty for logits (no model runs) and for servers that do
    not tag their replies.
    """

    predicted_class: npt.NDArray[np.int32]
    confidence: npt.NDArray[np.float64]
    margin: npt.NDArray[np.float64]
    hardness: npt.NDArray[np.float64]
    hardness_normalized: npt.NDArray[np.float64]
    given_label: npt.NDArray[np.int32] | None = None
    mistakenness: npt.NDArray[np.float64] | None = None
    mistakenness_confidence: npt.NDArray[np.float64] | None = None
    label_issue_score: npt.NDArray[np.float64] | None = None
    margin_issue_score: npt.NDArray[np.float64] | None = None
    probabilities: npt.NDArray[np.float32] | None = None
    logits: npt.NDArray[np.float32] | None = None
    embeddings: npt.NDArray[np.float32] | None = None
    ids: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    errors: list[SampleError] = field(default_factory=list)
    computed_by: list[ModelRun] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predicted_class)

    @property
    def model_name(self) -> str:
        """The model that computed every row ("" when untagged); MixedVersions if several."""
        return self._one_run().name

    @property
    def model_version(self) -> str:
        """The version that computed every row ("" when untagged); MixedVersions if several."""
        return self._one_run().version

    def _one_run(self) -> ModelRun:
        if not self.computed_by:
            return ModelRun(0, "", "")
        if len(self.computed_by) > 1:
            stretches = "; ".join(
                f"rows {run.first_row}-{end - 1} by {run.name} version {run.version}"
                for run, end in zip(self.computed_by,
                                    [r.first_row for r in self.computed_by[1:]] + [len(self)],
                                    strict=True))
            raise MixedVersions(f"these rows were computed by several model versions (a swap "
                                f"during the call): {stretches}; see computed_by or "
                                "row_models()")
        return self.computed_by[0]

    def row_models(self) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
        """(model name, model version) of each row, as text arrays ("" where untagged)."""
        names = np.full(len(self), "", dtype=object)
        versions = np.full(len(self), "", dtype=object)
        for run in self.computed_by:
            names[run.first_row:] = run.name
            versions[run.first_row:] = run.version
        return names, versions

    def columns(self) -> dict[str, npt.NDArray[np.generic]]:
        """The 1-D score arrays that are present, by name (for tables and files)."""
        out: dict[str, npt.NDArray[np.generic]] = {}
        for name in SCORE_NAMES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @staticmethod
    def concat(parts: Sequence[ScoreResult]) -> ScoreResult:
        """Joins results of consecutive chunks (errors re-indexed to the whole input)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise ValueError("concat needs at least one result")
        merged: dict[str, object] = {}
        for f in fields(ScoreResult):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "class_names":
                merged[f.name] = next((v for v in values if v), [])
            elif f.name == "ids":
                merged[f.name] = [i for v in values for i in v]
            elif f.name == "computed_by":
                merged[f.name] = _join_runs(parts)
            elif f.name == "errors":
                offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
                merged[f.name] = [
                    SampleError(e.index + int(off), e.reason, e.message)
                    for off, p in zip(offsets, parts, strict=True) for e in p.errors
                ]
            elif any(v is None for v in values):
                merged[f.name] = None
            else:
                merged[f.name] = np.concatenate(values)
        return ScoreResult(**merged)  # type: ignore[arg-type]


def _join_runs(parts: Sequence[ScoreResult]) -> list[ModelRun]:
    """The model runs of consecutive results as one list: offsets added, runs of no rows
    dropped (unless every part is empty), neighbours with the same model version joined."""
    runs: list[ModelRun] = []
    offset = 0
    total = sum(len(p) for p in parts)
    for part in parts:
        own = part.computed_by or [ModelRun(0, "", "")]  # an untagged reply: rows of no name
        ends = [r.first_row for r in own[1:]] + [len(part)]
        for run, end in zip(own, ends, strict=True):
            if end <= run.first_row and total:
                continue
            if runs and (runs[-1].name, runs[-1].version) == (run.name, run.version):
                continue
            runs.append(ModelRun(run.first_row + offset, run.name, run.version))
        offset += len(part)
    return [] if all(not r.name and not r.version for r in runs) else runs


def decode_scores(msg: pb.Scores, errors: Sequence[pb.SampleError] = (),
                  model_name: str = "", model_version: str = "") -> ScoreResult:
    """ScoreResult from a wire Scores message (arrays are views on the message's bytes);
    ``model_name``/``model_version``: the reply's tags (the version that computed it)."""
    arrays: dict[str, npt.NDArray[np.generic] | None] = {}
    for name in (*SCORE_NAMES, "probabilities", "logits", "embeddings"):
        arrays[name] = from_tensor(getattr(msg, name), name) if msg.HasField(name) else None
    n = int(msg.num_rows)
    for name in ("predicted_class", "confidence", "margin", "hardness", "hardness_normalized"):
        if arrays[name] is None:
            arrays[name] = np.empty(0, dtype=np.int32 if name == "predicted_class" else np.float64)
        if len(arrays[name]) != n:  # type: ignore[arg-type]
            raise ValueError(f"response {name} has {len(arrays[name])} rows, expected {n}")  # type: ignore[arg-type]
    return ScoreResult(
        **arrays,  # type: ignore[arg-type]
        ids=list(msg.ids),
        class_names=list(msg.class_names),
        errors=[SampleError(int(e.index), e.reason, e.message) for e in errors],
        computed_by=[ModelRun(0, model_name, model_version)]
        if model_name or model_version else [],
    )


def options_message(
    class_names: Sequence[str] | None = None,
    temperature: float | None = None,
    include_probabilities: bool = False,
    include_logits: bool = False,
    include_embeddings: bool = False,
) -> pb.ScoringOptions:
    options = pb.ScoringOptions(
        class_names=list(class_names or ()),
        include_probabilities=include_probabilities,
        include_logits=include_logits,
        include_embeddings=include_embeddings,
    )
    if temperature is not None:
        options.temperature = temperature
    return options


def labels_message(
    labels: Sequence[int] | Sequence[str] | npt.NDArray[np.generic],
) -> pb.GivenLabels:
    """GivenLabels from class indices (-1 = none) or class names ("" = none)."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "US":
        return pb.GivenLabels(names=pb.LabelNames(values=[str(v) for v in arr.tolist()]))
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers or strings, got dtype {arr.dtype}")
    return pb.GivenLabels(indices=pb.LabelIndices(values=arr.astype(np.int32).tolist()))


def logits_request(
    logits: npt.NDArray[np.floating],
    labels: npt.NDArray[np.generic] | None,
    ids: Sequence[str] | None,
    options: pb.ScoringOptions,
    probabilities: bool = False,
) -> pb.ScoreLogitsRequest:
    """A ScoreLogits request; ``probabilities`` sends the array as predicted probabilities."""
    request = pb.ScoreLogitsRequest(options=options, ids=list(ids) if ids is not None else [])
    dtype = np.float64 if np.asarray(logits).dtype == np.float64 else np.float32
    fill_tensor(request.probabilities if probabilities else request.logits, logits, dtype)
    if labels is not None:
        request.labels.CopyFrom(labels_message(labels))
    return request


MESSAGE_OVERHEAD_BYTES = 1024
"""Room left in every message for its framing (tags, lengths, shapes, options)."""


def _max_utf8_bytes(values: Sequence[str]) -> int:
    """The longest of ``values`` in UTF-8 bytes (0 for none)."""
    if not values:
        return 0
    longest = max(map(len, values))
    if len("".join(values).encode()) == sum(map(len, values)):  # all ASCII
        return longest
    return max(len(v.encode()) for v in values)


def chunk_rows_for(
    n_classes: int,
    max_message_bytes: int,
    with_probabilities: bool,
    *,
    logits_itemsize: int = 4,
    labels: npt.NDArray[np.generic] | None = None,
    ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> int:
    """Rows per message that keep both the request and its reply within the message limit.

    Per row, the request carries the logits (``logits_itemsize`` bytes per class), a label (up
    to 10 bytes as an index: -1 is a 10-byte varint; a name's bytes) and an id; the reply an
    int32 class, 4 float64 scores, with labels another int32 and 4 float64, the id again, and
    with probabilities 4 bytes per class. Both carry the class names once. Sizes are upper
    bounds (the longest id and name), so every chunk fits; at most MAX_CHUNK_ROWS rows.
    """
    id_bytes = 0 if not ids else 6 + _max_utf8_bytes(ids)  # tag, length varint, text
    names = list(class_names or ())
    labelled = labels is not None
    if labels is None:
        label_bytes = 0
    elif labels.dtype.kind in "US":
        label_bytes = 6 + _max_utf8_bytes([str(v) for v in set(labels.tolist())])
    else:
        label_bytes = 10
    request_row = logits_itemsize * n_classes + label_bytes + id_bytes
    reply_row = 4 + 8 * 4 + (4 + 8 * 4 if labelled else 0) + id_bytes
    reply_row += 4 * n_classes if with_probabilities else 0
    fixed = MESSAGE_OVERHEAD_BYTES + sum(6 + len(n.encode()) for n in names)
    rows = (max_message_bytes - fixed) // max(request_row, reply_row)
    return int(max(1, min(MAX_CHUNK_ROWS, rows)))


def logits_chunks(
    logits: npt.NDArray[np.floating],
    labels: npt.NDArray[np.generic] | None,
    ids: Sequence[str] | None,
    options: pb.ScoringOptions,
    chunk_rows: int,
    probabilities: bool = False,
) -> Iterator[pb.ScoreLogitsRequest]:
    """The input cut into consecutive requests of at most ``chunk_rows`` rows."""
    for start in range(0, max(len(logits), 1), chunk_rows):
        stop = start + chunk_rows
        yield logits_request(
            logits[start:stop],
            None if labels is None else labels[start:stop],
            None if ids is None else ids[start:stop],
            options,
            probabilities,
        )


def image_sample(
    image: bytes | npt.NDArray[np.generic], label: int | str | None = None, sample_id: str = ""
) -> pb.ImageSample:
    """One ImageSample: encoded file bytes, or pixels (uint8 [H,W,C] / float32 [3,H,W])."""
    sample = pb.ImageSample(id=sample_id)
    if isinstance(image, bytes | bytearray | memoryview):
        sample.encoded = bytes(image)
    else:
        fill_tensor(sample.pixels, image)
    if isinstance(label, str):
        sample.label_name = label
    elif label is not None and int(label) >= 0:
        sample.label_index = int(label)
    return sample
