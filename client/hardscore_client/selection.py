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

The queue is written as CSV and as a JSON task list (format in docs/dataset-workflow.md).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.analysis import Analysis
from hardscore_client.errors import InputError

STRATEGIES = ("hardest", "margin", "per-class", "mistakes")
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


def select(analysis: Analysis, budget: int, strategy: str) -> IntArray:
    """Row indices of the queue, in annotation order (InputError for a negative budget)."""
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
    raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Written:
    csv: Path
    json: Path
    rows: int


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def queue_records(analysis: Analysis, rows: IntArray, strategy: str) -> list[dict[str, object]]:
    """One flat record per selected row (the CSV columns)."""
    t = analysis.table
    group = analysis.group()
    scores = {name: t.score(name) for name in ("confidence", "margin", "hardness")}
    issue = analysis.issue_score()
    quality = analysis.label_quality()
    records = []
    for rank, i in enumerate(rows.tolist(), start=1):
        path = t.paths[i]
        uri = Path(path).as_uri() if Path(path).is_absolute() else path
        records.append({
            "rank": rank, "path": path, "uri": uri,
            "given_label": t.name(int(t.labels[i])),
            "predicted_label": t.name(int(t.predicted[i])),
            "group": t.name(int(group[i])),
            **{name: _number(values[i]) for name, values in scores.items()},
            "label_issue_score": _number(issue[i]),
            "flagged_label_issue": (bool(analysis.flagged[i]) if analysis.issues is not None
                                    else None),
            "strategy": strategy,
            "label_quality": _number(quality[i]),
            "ranking": analysis.ranking,
        })
    return records


def label_studio_tasks(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """The records as a Label Studio task list: ``data`` holds the image URI and the record,
    ``predictions`` the model's class as a pre-annotation (Choices "label" on Image "image")."""
    tasks = []
    for r in records:
        data = {"image": r["uri"], **{k: v for k, v in r.items() if k != "uri"}}
        task: dict[str, object] = {"data": data}
        if r["predicted_label"]:
            task["predictions"] = [{
                "model_version": "hardscore",
                "score": r["confidence"],
                "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                            "value": {"choices": [r["predicted_label"]]}}],
            }]
        tasks.append(task)
    return tasks


def write_queue(analysis: Analysis, rows: IntArray, strategy: str, out: Path) -> Written:
    """Writes ``out``.csv and ``out``.json (a suffix .csv/.json on ``out`` is dropped)."""
    if out.suffix.lower() in (".csv", ".json"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    records = queue_records(analysis, rows, strategy)
    csv_path, json_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in records:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    tasks = label_studio_tasks(records)
    json_path.write_text(json.dumps(tasks, indent=1, allow_nan=False) + "\n")
    return Written(csv_path, json_path, len(records))
