"""FiftyOne fields: score a FiftyOne dataset (or view) through a hardscore server and write the
fields FiftyOne Brain's ``compute_hardness`` and ``compute_mistakenness`` write, with the same
values, and the label-issue scores beside them (``pip install 'hardscore[fiftyone]'``).

Two sources of predictions:

- ``score_images``: each sample's image file goes to ScoreImages; the model's prediction is
  written as a ``Classification`` (label, confidence, logits) in ``pred_field``. The logits
  written are the ones the scores come from: the model's logits divided by the served model's
  calibrated temperature (1.0 unless its manifest sets one). ``model_name`` and
  ``model_version`` pick a model of a server with several; the version is resolved once (empty:
  the only model, its highest loaded version) and named in every call, so all the fields of one
  call come from one model version (``Written.model_name``/``model_version``). A sample whose
  image could not be read, decoded or scored gets None in ``pred_field`` and in every score
  field (never FiftyOne's 1.0 mistakenness for a missing prediction) and is listed in
  ``Written.failed`` with its reason.
- ``score_logits``: the logits already stored on the samples' ``pred_field`` (a
  ``Classification`` with ``logits``, e.g. from ``apply_model(..., store_logits=True)``) go to
  ScoreLogits; ``pred_field`` is left as it is.

Fields written (names are arguments), float or None per sample:

- ``hardness``: entropy of softmax(logits), natural log: ``compute_hardness(samples,
  pred_field)``'s value. None where the sample has no prediction.
- ``mistakenness``: ``compute_mistakenness(samples, pred_field, label_field,
  use_logits=...)``'s value, with FiftyOne's conventions: (s · c + 1) / 2 where c is the
  prediction's confidence (default) or exp(-hardness) (``use_logits=True``), s = -1 when the
  prediction's label equals the ground-truth label or the sample has no ground truth, +1
  otherwise; 1.0 for a sample with ground truth but no prediction; None with neither.
- ``label_issue_score`` (1 - p(given label)) and ``margin_issue_score`` (one minus the
  normalized margin): hardscore's, higher = more likely mislabelled; None where the sample has
  no ground truth, or one that is not a class of the model.

FiftyOne is imported only inside these functions: the rest of the client never needs it. No
brain run is registered (``list_brain_runs`` does not list these fields); views, sorting and
the App work on them as on any float field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hardscore_client.client import ScoringClient

FloatArray = npt.NDArray[np.float64]
READ_CHUNK = 256
"""Images read and scored per round (memory stays bounded whatever the dataset's size)."""


@dataclass(frozen=True)
class Fields:
    """Names of the fields written on each sample."""

    hardness: str = "hardness"
    mistakenness: str = "mistakenness"
    label_issue: str = "label_issue_score"
    margin_issue: str = "margin_issue_score"


@dataclass
class Written:
    """What a call wrote: samples scored, samples that were not (id, reason), fields set."""

    scored: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    """The model version that computed the fields (score_images; empty for score_logits)."""


def fiftyone_mistakenness(
    certainty: FloatArray, predicted: Sequence[str | None], given: Sequence[str | None]
) -> FloatArray:
    """FiftyOne Brain's classification mistakenness per sample, NaN for "None".

    ``certainty`` is the prediction's confidence, or exp(-hardness) for the logits variant (NaN
    where there is no prediction); ``predicted`` / ``given`` the predicted and ground-truth
    label names (None = absent). In [0, 1]; higher = more likely mislabelled.
    """
    out = np.full(len(predicted), math.nan)
    for i, (p, g) in enumerate(zip(predicted, given, strict=True)):
        if p is None:
            out[i] = math.nan if g is None else 1.0
            continue
        agrees = g is None or p == g  # FiftyOne counts a missing ground truth as agreeing
        out[i] = ((-1.0 if agrees else 1.0) * certainty[i] + 1.0) / 2.0
    return out


def _values(array: FloatArray) -> list[float | None]:
    """Floats for a FiftyOne field: NaN becomes None."""
    return [None if math.isnan(v) else float(v) for v in array.tolist()]


def _labels_of(samples: Any, label_field: str | None) -> list[str | None]:
    if label_field is None:
        return [None] * len(samples)
    return list(samples.values(f"{label_field}.label"))


def _indices(given: Sequence[str | None], class_names: Sequence[str]) -> list[int]:
    """Class index per ground-truth label; -1 for none or a name that is not a class."""
    index = {name: i for i, name in enumerate(class_names)}
    return [index.get(g, -1) if g is not None else -1 for g in given]


def _write(
    samples: Any,
    names: Fields,
    hardness: FloatArray,
    certainty: FloatArray,
    predicted: Sequence[str | None],
    given: Sequence[str | None],
    label_issue: FloatArray | None,
    margin_issue: FloatArray | None,
    written: Written,
    failed: Sequence[int] = (),
) -> Written:
    """Writes the score fields; rows ``failed`` (not scored) get None in every one."""
    import fiftyone as fo

    dataset = samples._dataset
    for name in (names.hardness, names.mistakenness, names.label_issue, names.margin_issue):
        if not dataset.has_sample_field(name):  # typed up front: a column may be all None
            dataset.add_sample_field(name, fo.FloatField)
    mistakenness = fiftyone_mistakenness(certainty, predicted, given)
    rows = list(failed)
    for array in (hardness, mistakenness, label_issue, margin_issue):
        if array is not None:
            array[rows] = math.nan
    samples.set_values(names.hardness, _values(hardness))
    samples.set_values(names.mistakenness, _values(mistakenness))
    written.fields += [names.hardness, names.mistakenness]
    if label_issue is not None and margin_issue is not None:
        samples.set_values(names.label_issue, _values(label_issue))
        samples.set_values(names.margin_issue, _values(margin_issue))
        written.fields += [names.label_issue, names.margin_issue]
    return written


def score_images(
    samples: Any,
    client: ScoringClient,
    *,
    label_field: str | None = "ground_truth",
    pred_field: str = "hardscore",
    use_logits: bool = False,
    names: Fields = Fields(),  # frozen: a shared default is safe
    model_name: str = "",
    model_version: str = "",
) -> Written:
    """Scores every sample's image with the served model and writes ``pred_field`` (a
    Classification with label, confidence and logits) and the score fields (``names``).

    ``label_field`` holds the ground truth (Classification; None = no labels);
    ``use_logits`` picks the mistakenness variant as compute_mistakenness does.
    ``model_name``/``model_version``: the model of a server with several (empty: the only
    one, its highest loaded version), resolved once and named in every call. A sample whose
    file cannot be read, decoded or scored gets None in ``pred_field`` and every score field,
    and is listed in ``Written.failed`` (sample id, reason).
    """
    import fiftyone as fo  # the fiftyone extra: imported only here

    info = client.get_model_info(model_name, model_version)
    class_names = list(info.class_names)
    temperature = float(info.temperature) or 1.0
    ids = list(samples.values("id"))
    paths = list(samples.values("filepath"))
    given = _labels_of(samples, label_field)
    label_idx = _indices(given, class_names)
    n = len(ids)
    hardness, certainty_conf = np.full(n, math.nan), np.full(n, math.nan)
    label_issue, margin_issue = np.full(n, math.nan), np.full(n, math.nan)
    predictions: list[Any] = [None] * n
    predicted: list[str | None] = [None] * n
    written = Written(model_name=info.name, model_version=info.version)
    not_scored: list[int] = []
    for start in range(0, n, READ_CHUNK):
        stop = min(start + READ_CHUNK, n)
        images, unread = [], {}
        for i in range(start, stop):
            try:
                images.append(Path(paths[i]).read_bytes())
            except OSError as exc:
                images.append(b"")
                unread[i] = f"read: {exc}"
        result = client.score_images(
            images, [label_idx[i] if label_idx[i] >= 0 else None for i in range(start, stop)],
            include_logits=True, model_name=info.name, model_version=info.version)
        failed = {start + e.index: f"{e.reason}: {e.message}" for e in result.errors}
        failed.update(unread)
        assert result.logits is not None
        logits = np.asarray(result.logits, dtype=np.float64)
        if temperature != 1.0:
            logits = logits / temperature
        for j in range(stop - start):
            i = start + j
            if i in failed:
                written.failed.append((ids[i], failed[i]))
                not_scored.append(i)
                continue
            label = class_names[int(result.predicted_class[j])]
            predicted[i] = label
            predictions[i] = fo.Classification(label=label,
                                               confidence=float(result.confidence[j]),
                                               logits=logits[j].tolist())
            hardness[i] = result.hardness[j]
            certainty_conf[i] = result.confidence[j]
            if result.label_issue_score is not None:
                label_issue[i] = result.label_issue_score[j]
                margin_issue[i] = result.margin_issue_score[j]  # type: ignore[index]
            written.scored += 1
    samples.set_values(pred_field, predictions)
    written.fields.append(pred_field)
    certainty = np.exp(-hardness) if use_logits else certainty_conf
    return _write(samples, names, hardness, certainty, predicted, given, label_issue,
                  margin_issue, written, not_scored)


def score_logits(
    samples: Any,
    client: ScoringClient,
    pred_field: str,
    *,
    label_field: str | None = "ground_truth",
    class_names: Sequence[str] | None = None,
    use_logits: bool = False,
    names: Fields = Fields(),  # frozen: a shared default is safe
) -> Written:
    """Scores the logits stored on ``pred_field`` (a Classification with ``logits``) and
    writes the score fields (``names``); ``pred_field`` is not changed.

    The label-issue scores need the class of each logit: ``class_names`` (default: the
    dataset's ``classes[pred_field]`` or ``default_classes``); without them only hardness and
    mistakenness are written. As compute_hardness, a prediction without logits is an error.
    """
    ids = list(samples.values("id"))
    logits_of = list(samples.values(f"{pred_field}.logits"))
    predicted: list[str | None] = list(samples.values(f"{pred_field}.label"))
    given = _labels_of(samples, label_field)
    for sample_id, label, logits in zip(ids, predicted, logits_of, strict=True):
        if label is not None and logits is None:
            raise ValueError(f"sample {sample_id!r} field {pred_field!r} has no logits")
    if class_names is None:
        dataset = samples._dataset
        class_names = dataset.classes.get(pred_field) or dataset.default_classes or None
    rows = [i for i, logits in enumerate(logits_of) if logits is not None]
    n = len(ids)
    hardness, confidence = np.full(n, math.nan), np.full(n, math.nan)
    label_issue = margin_issue = None
    written = Written()
    if rows:
        matrix = np.array([logits_of[i] for i in rows], dtype=np.float64)
        labels = None
        if class_names is not None:
            labels = np.array(_indices([given[i] for i in rows], class_names), dtype=np.int64)
        result = client.score_logits(matrix, labels)
        hardness[rows] = result.hardness
        confidence[rows] = samples_confidence(samples, pred_field, rows, result.confidence)
        if result.label_issue_score is not None and result.margin_issue_score is not None:
            label_issue, margin_issue = np.full(n, math.nan), np.full(n, math.nan)
            label_issue[rows] = result.label_issue_score
            margin_issue[rows] = result.margin_issue_score
        written.scored = len(rows)
    certainty = np.exp(-hardness) if use_logits else confidence
    return _write(samples, names, hardness, certainty, predicted, given, label_issue,
                  margin_issue, written)


def samples_confidence(
    samples: Any, pred_field: str, rows: Sequence[int], computed: FloatArray
) -> FloatArray:
    """The confidence compute_mistakenness uses: the one stored on the prediction (NaN where
    it has none: FiftyOne refuses those; the computed max probability stands in)."""
    stored = list(samples.values(f"{pred_field}.confidence"))
    values = np.array([stored[i] if stored[i] is not None else math.nan for i in rows],
                      dtype=np.float64)
    return np.where(np.isnan(values), computed, values)


# -- collection verdicts ----------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionFields:
    """Names of the collection-verdict fields, as FiftyOne Brain's own functions name them:
    ``compute_uniqueness`` and ``compute_representativeness`` write ``uniqueness`` and
    ``representativeness``; ``duplicates_view(type_field=, id_field=, dist_field=)`` of a
    ``compute_near_duplicates`` index writes ``"nearest"`` / ``"duplicate"``, the id of the
    nearest kept sample and the distance to it (Brain has no default names there: these are
    the arguments hardscore passes); ``tag_leaks()`` of ``compute_leaky_splits`` tags the
    leaks ``"leak"``. ``exact_dup_id``: the id of the first sample with the same bytes
    (Brain's ``compute_exact_duplicates`` returns that mapping instead of writing it)."""

    uniqueness: str = "uniqueness"
    representativeness: str = "representativeness"
    dup_type: str = "dup_type"
    dup_id: str = "dup_id"
    dup_dist: str = "dup_dist"
    leak_tag: str = "leak"
    exact_dup_id: str = "exact_dup_id"


MAPPED_COLUMNS = ("uniqueness", "representativeness", "near_duplicate_of",
                  "near_duplicate_distance", "leak", "exact_duplicate_of")
"""Verdict columns written under FiftyOne's names; the others keep their column names."""


def write_collection_fields(
    samples: Any, columns: dict[str, npt.NDArray[Any]], *,
    names: CollectionFields = CollectionFields(),  # frozen: a shared default is safe
) -> list[str]:
    """Writes verdict ``columns`` (verdicts.COLUMNS names; one value per sample, in the order
    of ``samples``; row indices refer to that order) on ``samples``; returns the fields set
    (and the tag, when leaks were given). NaN and -1 (no verdict) become None.

    Near duplicates are written as ``duplicates_view`` writes them: a kept sample that has
    duplicates gets ``"nearest"``, its own id and 0.0; each duplicate ``"duplicate"``, its
    kept sample's id and the distance; other samples None. Leaks get the ``"leak"`` tag. The
    other columns (Datalab's, loss, focal weight) are float fields of their own names."""
    import fiftyone as fo

    dataset = samples._dataset
    ids = list(samples.values("id"))
    n = len(ids)
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} samples")
    written: list[str] = []

    def floats(name: str, values: npt.NDArray[Any]) -> None:
        if not dataset.has_sample_field(name):
            dataset.add_sample_field(name, fo.FloatField)
        array = np.asarray(values, dtype=np.float64)
        if np.issubdtype(np.asarray(values).dtype, np.integer):
            array = np.where(np.asarray(values) < 0, np.nan, array)
        samples.set_values(name, _values(array))
        written.append(name)

    for column, field_name in (("uniqueness", names.uniqueness),
                               ("representativeness", names.representativeness)):
        if column in columns:
            floats(field_name, columns[column])
    if "near_duplicate_of" in columns:
        rep = np.asarray(columns["near_duplicate_of"], dtype=np.int64)
        dist = np.asarray(columns.get("near_duplicate_distance", np.full(n, np.nan)),
                          dtype=np.float64)
        kinds: list[str | None] = [None] * n
        nearest: list[str | None] = [None] * n
        dists: list[float | None] = [None] * n
        for i in np.flatnonzero(rep >= 0).tolist():
            r = int(rep[i])
            kinds[i], nearest[i] = "duplicate", ids[r]
            dists[i] = None if math.isnan(dist[i]) else float(dist[i])
            kinds[r], nearest[r], dists[r] = "nearest", ids[r], 0.0
        for name, ftype in ((names.dup_type, fo.StringField), (names.dup_id, fo.StringField),
                            (names.dup_dist, fo.FloatField)):
            if not dataset.has_sample_field(name):
                dataset.add_sample_field(name, ftype)
        samples.set_values(names.dup_type, kinds)
        samples.set_values(names.dup_id, nearest)
        samples.set_values(names.dup_dist, dists)
        written += [names.dup_type, names.dup_id, names.dup_dist]
    if "exact_duplicate_of" in columns:
        first = np.asarray(columns["exact_duplicate_of"], dtype=np.int64)
        if not dataset.has_sample_field(names.exact_dup_id):
            dataset.add_sample_field(names.exact_dup_id, fo.StringField)
        samples.set_values(names.exact_dup_id,
                           [ids[int(j)] if j >= 0 else None for j in first.tolist()])
        written.append(names.exact_dup_id)
    if "leak" in columns:
        leaked = [ids[i] for i in np.flatnonzero(np.asarray(columns["leak"]) == 1).tolist()]
        samples.untag_samples(names.leak_tag)
        if leaked:
            samples.select(leaked).tag_samples(names.leak_tag)
        written.append(f"tag:{names.leak_tag}")
    for name, values in columns.items():
        if name not in MAPPED_COLUMNS:
            floats(name, values)
    return written


def collection_fields_from_embeddings(
    samples: Any, embeddings: npt.ArrayLike, *, split_field: str | None = None,
    names: CollectionFields = CollectionFields(), **kwargs: Any,
) -> list[str]:
    """verdicts.collection_verdicts on ``embeddings`` (one row per sample, in the order of
    ``samples``; ``split_field``: a string field naming each sample's split; ``kwargs``:
    collection_verdicts' options, e.g. ``variant="fiftyone"``, ``probabilities``,
    ``labels``, ``digests``), written by write_collection_fields."""
    from hardscore_client.verdicts import collection_verdicts

    splits = list(samples.values(split_field)) if split_field is not None else None
    result = collection_verdicts(embeddings, splits=splits, **kwargs)
    return write_collection_fields(samples, result.columns, names=names)


def collection_fields_from_table(
    samples: Any, table: str | Path, *, names: CollectionFields = CollectionFields(),
) -> list[str]:
    """The verdict columns of a table written by ``hardscore verdicts``, matched to the samples
    by ``filepath`` (the table's ``path``), written by write_collection_fields. Samples that
    are not in the table get no verdict (None); a row index that points at a row whose path is
    not among the samples counts as none."""
    from hardscore_client.tables import read_table
    from hardscore_client.verdicts import COLUMNS

    columns = read_table(Path(table))
    if "path" not in columns:
        raise ValueError(f"{table}: no 'path' column to match the samples' filepath")
    paths = [str(p) for p in columns["path"].tolist()]
    row_of = {p: i for i, p in enumerate(paths)}
    order = [row_of.get(str(p), -1) for p in samples.values("filepath")]
    position = {r: i for i, r in enumerate(order) if r >= 0}
    picked: dict[str, npt.NDArray[Any]] = {}
    for name in COLUMNS:
        if name not in columns:
            continue
        source = np.asarray(columns[name])
        integer = np.issubdtype(source.dtype, np.integer)
        out = np.full(len(order), -1 if integer else np.nan,
                      dtype=np.int64 if integer else np.float64)
        for i, r in enumerate(order):
            if r >= 0:
                out[i] = source[r]
        if name in ("near_duplicate_of", "exact_duplicate_of"):  # table rows -> sample order
            out = np.array([position.get(int(r), -1) if r >= 0 else -1 for r in out.tolist()],
                           dtype=np.int64)
        picked[name] = out
    return write_collection_fields(samples, picked, names=names)
