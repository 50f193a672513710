"""The annotation queue: ``hardscore select --budget N --strategy ...``.

Strategies (rows with a missing score are never selected):

- ``hardest``: highest hardness (entropy of the prediction) first.
- ``margin``: smallest margin (top-1 minus top-2 probability) first: the most ambiguous.
- ``per-class``: the budget spread over the classes in proportion to their mean hardness (a
  class that is twice as hard gets twice the share, never more than it has), hardest first
  within each class. Rows are grouped by given label, unlabelled rows by prediction.
- ``mistakes``: the most likely label errors among labelled rows: the confident-learning
  flagged set first (when the table has probabilities), then the other rows, each by the
  analysis's ranking (default: label_issue_score, 1 - p(given label); another
  ``--method`` / ``--adjust-pred-probs``: its label quality, lowest first).

Strategies that use the collection verdicts (``hardscore verdicts``; collection.py):

- ``hard-clean``: hardest first among the rows that are not outliers (``is_outlier``), not near
  duplicates of a kept row (``near_duplicate_of``) and not exact copies of an earlier row
  (``exact_duplicate_of``): hard, not odd. Rows without verdicts (no embedding) are left out.
- ``diverse-hard``: k-centre greedy over the embeddings, each row's reach weighted by its
  hardness (diversity.k_centre_greedy), among the rows with an embedding and a hardness and,
  when the table has verdicts, the same clean rows as ``hard-clean``; in pick order.
- ``activelab``: cleanlab's ActiveLab scores with one label per row (labelled rows by the
  probability of their label, unlabelled rows by their top probability), lowest first: what to
  label, or relabel, next.

Their queue rows also carry the verdict columns that drove the choice (``VERDICT_COLUMNS``).

The queue is written as CSV, at full precision, and on request as a Label Studio task list
(JSON; formats in docs/dataset-workflow.md).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import numpy as np
import numpy.typing as npt

from hardscore_client.analysis import Analysis
from hardscore_client.diversity import activelab_scores, hard_candidates, k_centre_greedy
from hardscore_client.errors import InputError
from hardscore_client.label_quality import DEFAULT_METHOD
from hardscore_client.tables import class_name_column

STRATEGIES = ("hardest", "margin", "per-class", "mistakes", "hard-clean", "diverse-hard",
              "activelab")
CLEAN_COLUMNS = ("is_outlier", "near_duplicate_of", "exact_duplicate_of")
"""The verdict columns that make a row not clean: an outlier, a copy of a kept row."""
VERDICT_COLUMNS = {
    "hard-clean": (*CLEAN_COLUMNS, "outlier_score", "uniqueness"),
    "diverse-hard": (*CLEAN_COLUMNS, "outlier_score", "uniqueness"),
    "activelab": ("activelab_score",),
}
"""The columns a strategy adds to its queue (after CSV_COLUMNS)."""
NEEDS_EMBEDDINGS = ("diverse-hard",)
CSV_COLUMNS = (
    "rank", "path", "uri", "given_label", "predicted_label", "group", "confidence", "margin",
    "hardness", "label_issue_score", "flagged_label_issue", "strategy", "label_quality",
    "ranking",
)
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _descending(values: FloatArray, rows: IntArray) -> IntArray:
    rows = rows[np.isfinite(values[rows])]
    return rows[np.argsort(-values[rows], kind="stable")]


def per_class_quota(weights: FloatArray, sizes: IntArray, budget: int) -> IntArray:
    """Splits ``budget`` over classes in proportion to ``weights``, at most ``sizes[k]`` each,
    whole numbers by largest remainder; what a full class cannot take goes to the others."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    budget = min(budget, int(sizes.sum()))
    w = np.where(np.isfinite(weights) & (weights > 0), weights, 0.0)
    while budget > int(quota.sum()):
        open_ = quota < sizes
        share = np.where(open_, w, 0.0)
        if share.sum() <= 0:  # no weight left: by size among the open classes
            share = np.where(open_, sizes - quota, 0).astype(np.float64)
        left = budget - int(quota.sum())
        exact = share / share.sum() * left
        extra = np.floor(exact).astype(np.int64)
        remainder = left - int(extra.sum())
        if remainder:
            order = np.argsort(-(exact - extra), kind="stable")
            extra[order[:remainder]] += 1
        quota = np.minimum(quota + extra, sizes)
    return quota


def clean_rows(analysis: Analysis, strategy: str, required: bool = True) -> npt.NDArray[np.bool_]:
    """Rows that are not outliers nor duplicates of a kept row, by the table's verdict columns
    (rows without verdicts, -1/NaN, are not clean). Without the columns: InputError when
    ``required``, else every row."""
    columns = analysis.table.columns
    absent = [c for c in CLEAN_COLUMNS if c not in columns]
    n = len(analysis.table)
    if absent:
        if required or len(absent) < len(CLEAN_COLUMNS):
            raise InputError(f"--strategy {strategy} needs the verdict columns "
                             f"{', '.join(absent)}: run `hardscore verdicts TABLE` and select "
                             "from the .verdicts table it writes")
        return np.ones(n, dtype=bool)
    outlier = np.asarray(columns["is_outlier"], dtype=np.float64)
    known = np.isfinite(outlier) & (outlier >= 0)
    candidates = hard_candidates(
        np.ones(n), is_outlier=np.where(known, outlier, 1.0) > 0,
        duplicate_of=np.asarray(columns["near_duplicate_of"], dtype=np.float64),
        exact_duplicate_of=np.asarray(columns["exact_duplicate_of"], dtype=np.float64))
    return np.asarray(candidates & known)


def activelab_score(analysis: Analysis) -> FloatArray:
    """Per row, ActiveLab's score (diversity.activelab_scores): labelled rows from the
    probability of their label, unlabelled rows from their top probability; lower = label
    next; NaN without probabilities."""
    t = analysis.table
    score = np.full(len(t), np.nan)
    if t.probabilities is None:
        return score
    finite = np.isfinite(t.probabilities).all(axis=1)
    labelled = np.flatnonzero(t.labelled & finite)
    unlabelled = np.flatnonzero(~t.labelled & finite)
    given, free = activelab_scores(
        t.probabilities[labelled] if len(labelled) else None,
        t.labels[labelled] if len(labelled) else None,
        t.probabilities[unlabelled] if len(unlabelled) else None)
    score[labelled] = given
    score[unlabelled] = free
    return score


def select(analysis: Analysis, budget: int, strategy: str,
           embeddings: npt.NDArray[np.floating] | None = None) -> IntArray:
    """Row indices of the queue, in annotation order (InputError for a negative budget).
    ``embeddings`` [N, D] (NaN rows where none) are needed by ``diverse-hard``."""
    if budget < 0:
        raise InputError(f"budget must be >= 0 (how many samples to select), got {budget}")
    t = analysis.table
    every = np.arange(len(t))
    if strategy == "hardest":
        return _descending(t.score("hardness"), every)[:budget]
    if strategy == "margin":
        return _descending(-t.score("margin"), every)[:budget]
    if strategy == "per-class":
        hardness = t.score("hardness")
        group = analysis.group()
        valid = np.isfinite(hardness) & (group >= 0)
        k = len(t.class_names)
        sizes = np.bincount(group[valid], minlength=k).astype(np.int64)
        sums = np.bincount(group[valid], weights=hardness[valid], minlength=k)
        means = np.divide(sums, sizes, out=np.zeros(k), where=sizes > 0)
        quota = per_class_quota(means, sizes, budget)
        picked = [_descending(hardness, np.flatnonzero(valid & (group == c)))[:quota[c]]
                  for c in range(k)]
        rows = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        return rows[np.argsort(-hardness[rows], kind="stable")]
    if strategy == "mistakes":
        score = analysis.rank_score()
        labelled = np.flatnonzero(t.labelled)
        first = analysis.issue_rows
        rest = _descending(score, labelled[~analysis.flagged[labelled]])
        return np.concatenate([first, rest]).astype(np.int64)[:budget]
    if strategy == "hard-clean":
        hardness = t.score("hardness")
        return _descending(hardness, np.flatnonzero(clean_rows(analysis, strategy)))[:budget]
    if strategy == "diverse-hard":
        if embeddings is None:
            raise InputError("--strategy diverse-hard needs the embeddings (score-dir "
                             "--embeddings, or --embeddings FILE)")
        x = np.asarray(embeddings, dtype=np.float32)
        if x.shape[0] != len(t):
            raise InputError(f"{x.shape[0]} embeddings for {len(t)} rows")
        hardness = t.score("hardness")
        has = np.isfinite(x).all(axis=1) & np.isfinite(hardness)
        allowed = has & clean_rows(analysis, strategy, required=False)
        if not allowed.any() or budget == 0:
            return np.zeros(0, dtype=np.int64)
        return k_centre_greedy(np.where(has[:, None], x, 0.0), budget,
                               hardness=np.where(has, hardness, 0.0), candidates=allowed)
    if strategy == "activelab":
        if t.probabilities is None:
            raise InputError("--strategy activelab needs p_<class> probability columns")
        return _descending(-activelab_score(analysis), every)[:budget]
    raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


NEEDED_COLUMNS = frozenset({
    "row", "id", "path", "label", "prediction", "predicted_class", "given_label",
    "confidence", "margin", "hardness", "label_issue_score",
})
"""The columns of a score table that select reads, with every ``p_<class>``."""


def needed_column(name: str) -> bool:
    """Whether select reads column ``name`` of a score table (ScoreTable.load's ``keep``)."""
    return (name in NEEDED_COLUMNS or name.startswith("p_")
            or any(name in cols for cols in VERDICT_COLUMNS.values()))


def order_score(analysis: Analysis, strategy: str) -> tuple[str, FloatArray]:
    """The score a strategy orders by, per row, and its name (for what select prints)."""
    if strategy == "margin":
        return "margin", analysis.table.score("margin")
    if strategy == "mistakes":
        if analysis.ranking != DEFAULT_METHOD:
            return f"label_quality ({analysis.ranking})", analysis.label_quality()
        return "label_issue_score", analysis.issue_score()
    if strategy == "activelab":
        return "activelab_score", activelab_score(analysis)
    return "hardness", analysis.table.score("hardness")


@dataclass(frozen=True)
class Written:
    csv: Path
    json: Path | None
    """None when the Label Studio task list was not asked for."""
    rows: int


def file_uri(path: str) -> str:
    """``path`` as a ``file://`` URI when it is absolute (Path.as_uri), else as it is."""
    if os.sep == "/" and _normal_absolute(path):  # what Path.as_uri does with it, faster
        return "file://" + quote_from_bytes(os.fsencode(path))
    p = Path(path)
    return p.as_uri() if p.is_absolute() else path


def _normal_absolute(path: str) -> bool:
    """An absolute POSIX path that pathlib keeps as it is (no //, no /./, no trailing /)."""
    return (path.startswith("/") and "//" not in path and "/./" not in path
            and not path.endswith(("/", "/.")))


def _cells(values: FloatArray) -> list[object]:
    """Full-precision floats (their repr round-trips), None for NaN."""
    out: list[object] = np.asarray(values, dtype=np.float64).tolist()
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = None
    return out


def queue_columns(analysis: Analysis, rows: IntArray, strategy: str) -> dict[str, list[object]]:
    """The queue's CSV columns (CSV_COLUMNS, in order) for ``rows``; None for an empty cell."""
    t = analysis.table
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    paths = [t.paths[i] for i in rows.tolist()]
    names = t.class_names
    flagged: list[object] = (analysis.flagged[rows].tolist() if analysis.issues is not None
                             else [None] * n)
    return {
        "rank": list(range(1, n + 1)), "path": paths, "uri": [file_uri(p) for p in paths],
        "given_label": class_name_column(t.labels[rows], names).tolist(),
        "predicted_label": class_name_column(t.predicted[rows], names).tolist(),
        "group": class_name_column(analysis.group()[rows], names).tolist(),
        **{name: _cells(t.score(name)[rows]) for name in ("confidence", "margin", "hardness")},
        "label_issue_score": _cells(analysis.issue_score()[rows]),
        "flagged_label_issue": flagged,
        "strategy": [strategy] * n,
        "label_quality": _cells(analysis.label_quality()[rows]),
        "ranking": [analysis.ranking] * n,
        **verdict_cells(analysis, rows, strategy),
    }


def verdict_cells(analysis: Analysis, rows: IntArray, strategy: str) -> dict[str, list[object]]:
    """The verdict columns of ``strategy``'s queue (VERDICT_COLUMNS) for ``rows``: whole
    numbers as ints, floats in full, None where the table has no such column."""
    out: dict[str, list[object]] = {}
    columns = analysis.table.columns
    for name in VERDICT_COLUMNS.get(strategy, ()):
        if name == "activelab_score":
            out[name] = _cells(activelab_score(analysis)[rows])
        elif name not in columns:
            out[name] = [None] * len(rows)
        elif np.issubdtype(np.asarray(columns[name]).dtype, np.integer):
            out[name] = np.asarray(columns[name])[rows].tolist()
        else:
            out[name] = _cells(np.asarray(columns[name], dtype=np.float64)[rows])
    return out


def queue_records(analysis: Analysis, rows: IntArray, strategy: str) -> list[dict[str, object]]:
    """One flat record per selected row (the CSV columns)."""
    columns = queue_columns(analysis, rows, strategy)
    return [dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)]


def label_studio_task(record: dict[str, object]) -> dict[str, object]:
    """One record as a Label Studio task: ``data`` holds the image URI and the record,
    ``predictions`` the model's class as a pre-annotation (Choices "label" on Image "image")."""
    data = {"image": record["uri"], **{k: v for k, v in record.items() if k != "uri"}}
    task: dict[str, object] = {"data": data}
    if record["predicted_label"]:
        task["predictions"] = [{
            "model_version": "hardscore",
            "score": record["confidence"],
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [record["predicted_label"]]}}],
        }]
    return task


def label_studio_tasks(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """The records as a Label Studio task list (label_studio_task each)."""
    return [label_studio_task(r) for r in records]


_ENCODER = json.JSONEncoder(allow_nan=False)


def write_label_studio_json(path: Path, columns: dict[str, list[object]]) -> None:
    """Writes the queue as a Label Studio task list, one task a line, task by task."""
    keys = list(columns)
    with path.open("w") as f:
        f.write("[")
        for i, values in enumerate(zip(*columns.values(), strict=True)):
            task = label_studio_task(dict(zip(keys, values, strict=True)))
            f.write(("\n" if i == 0 else ",\n") + _ENCODER.encode(task))
        f.write("\n]\n")


def write_queue(
    analysis: Analysis, rows: IntArray, strategy: str, out: Path, label_studio_json: bool = False
) -> Written:
    """Writes ``out``.csv, and ``out``.json (Label Studio tasks) with ``label_studio_json``; a
    suffix .csv/.json on ``out`` is dropped."""
    if out.suffix.lower() in (".csv", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = queue_columns(analysis, rows, strategy)
    csv_path, json_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)  # None is written as an empty cell, a float as its repr
        writer.writerow(columns)  # CSV_COLUMNS, then the strategy's VERDICT_COLUMNS
        writer.writerows(zip(*columns.values(), strict=True))
    if label_studio_json:
        write_label_studio_json(json_path, columns)
    return Written(csv_path, json_path if label_studio_json else None, len(rows))
