"""A Label Studio QA view for collection verdicts (``hardscore label-studio qa-tasks``): the
duplicates, leaks and outliers of a verdicts table (``hardscore verdicts``) as Label Studio tasks,
each image beside the one it is judged against, with a label config that shows both and asks
for a decision.

- A **duplicate** (exact: same file content; near: embeddings within the threshold) is shown
  beside its kept representative, with the distance, and marked when the two are in different
  splits (a **leak**).
- An **outlier** is shown beside the most typical row of its class (given label, else
  prediction): the highest ``representativeness``, else the highest ``outlier_score``, among
  rows that are neither outliers nor duplicates.

Tasks come in review order (leaks, exact duplicates, near duplicates closest first, flagged
outliers lowest score first), so Label Studio's task ids follow it. Decisions read back from
annotated tasks (an export, or the API's task list) with ``qa_decisions``. No HTTP here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from hardscore_client.analysis import Analysis
from hardscore_client.label_studio import annotated_choice, parse_label_config
from hardscore_client.report_verdicts import VerdictRows, duplicate_pairs, verdict_rows
from hardscore_client.selection import file_uri

QA_CHOICES = ("keep", "remove duplicate", "outlier ok", "relabel")
KINDS = ("duplicates", "outliers")
QA_LABEL_CONFIG = """<View>
  <Header value="$title"/>
  <View style="display: flex; gap: 16px; align-items: flex-start">
    <View style="flex: 1; min-width: 0">
      <Header value="$caption" size="5"/>
      <Image name="image" value="$image" zoom="true"/>
    </View>
    <View style="flex: 1; min-width: 0">
      <Header value="$other_caption" size="5"/>
      <Image name="other" value="$other_image" zoom="true"/>
    </View>
  </View>
  <Choices name="decision" toName="image" choice="single" showInline="true" required="true">
    <Choice value="keep" hint="both images stay in the data set"/>
    <Choice value="remove duplicate" hint="drop this image: the one beside it stays"/>
    <Choice value="outlier ok" hint="unusual but right: keep it"/>
    <Choice value="relabel" hint="the given label is wrong (say which in the note)"/>
  </Choices>
  <TextArea name="note" toName="image" placeholder="note, or the right label" rows="1"
            maxSubmissions="1" editable="true"/>
</View>
"""
"""The QA project's label config: the task's image (``$image``, the one decided on) beside
``$other_image``, a single choice of QA_CHOICES (``decision``) and a free-text note."""


def image_url_for(root: Path | None, prefix: str | None) -> Callable[[str], str]:
    """How a table path becomes a task's image reference: a path under ``root`` becomes
    ``prefix`` + its relative path, URL-quoted (``--image-root``/``--image-url``; e.g. Label
    Studio's local files: root = LOCAL_FILES_DOCUMENT_ROOT, prefix ``/data/local-files/?d=``);
    any other path, or no root, its ``file://`` URI (rewrite it where your storage serves it)."""
    base = os.path.abspath(root) if root is not None else None

    def url(path: str) -> str:
        if base is not None and prefix is not None and "://" not in path:
            full = os.path.abspath(path)
            if full.startswith(base.rstrip(os.sep) + os.sep):
                return prefix + quote(os.path.relpath(full, base).replace(os.sep, "/"),
                                      safe="/")
        return file_uri(path)

    return url


def _text(column: Any, row: int) -> str:
    return "" if column is None else str(column[row] or "")


def typical_rows(analysis: Analysis, v: VerdictRows) -> dict[int, int]:
    """Per class index: its most typical row (representativeness, else outlier score, highest
    first) among rows that are neither outliers nor duplicates."""
    t = analysis.table
    typical = t.score("representativeness")
    if not np.isfinite(typical).any():
        typical = t.score("outlier_score")
    group = analysis.group()
    ok = np.isfinite(typical) & ~v.is_outlier & ~v.duplicate & (group >= 0)
    out: dict[int, int] = {}
    for k in np.unique(group[ok]).tolist():
        rows = np.flatnonzero(ok & (group == k))
        out[int(k)] = int(rows[np.argmax(typical[rows])])
    return out


@dataclass(frozen=True)
class QaTask:
    """One QA task: the row decided on, the row shown beside it, why."""

    row: int
    other: int
    kind: str
    """"exact duplicate", "near duplicate" or "outlier"."""


def qa_rows(analysis: Analysis, kinds: Iterable[str] = KINDS,
            limit: int | None = None) -> list[QaTask]:
    """The QA tasks in review order: duplicates (leaks first, then exact, then near ones
    closest first), then the flagged outliers (lowest score first)."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; use {', '.join(KINDS)}")
    v = verdict_rows(analysis)
    out: list[QaTask] = []
    if "duplicates" in kinds:
        out += [QaTask(dup, kept, f"{kind} duplicate")
                for dup, kept, kind in duplicate_pairs(v)]
    if "outliers" in kinds:
        typical = typical_rows(analysis, v)
        group = analysis.group()
        rows = np.flatnonzero(v.is_outlier & np.isfinite(v.outlier_score))
        for i in rows[np.argsort(v.outlier_score[rows], kind="stable")].tolist():
            out.append(QaTask(i, typical.get(int(group[i]), i), "outlier"))
    return out if limit is None else out[:limit]


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def qa_task(analysis: Analysis, v: VerdictRows, task: QaTask,
            image_url: Callable[[str], str]) -> dict[str, Any]:
    """One Label Studio task (``data`` only) for the QA label config."""
    t = analysis.table
    i, j = task.row, task.other
    split = t.columns.get("split")
    name = Path(t.paths[i]).name
    other_name = Path(t.paths[j]).name
    given = t.name(int(t.labels[i]))
    leak = bool(v.leak[i])
    if task.kind == "outlier":
        title = f"Outlier: score {v.outlier_score[i]:.3f} (lower = farther from its neighbours)"
        cls = t.name(int(analysis.group()[i]))
        other_caption = (f"typical {cls}: {other_name}" if j != i else
                         "no typical row of its class")
    else:
        distance = 0.0 if task.kind == "exact duplicate" else float(v.near_distance[i])
        title = (f"{task.kind.capitalize()} of the image beside it (distance {distance:.4f})"
                 + (f" · LEAK: {_text(split, i)} / {_text(split, j)}" if leak else ""))
        other_caption = f"kept: {other_name}"
    data: dict[str, Any] = {
        "image": image_url(t.paths[i]), "other_image": image_url(t.paths[j]),
        "title": title, "caption": f"this image: {name}" + (f" (given {given})" if given else ""),
        "other_caption": other_caption, "kind": task.kind, "leak": leak,
        "row": i, "path": t.paths[i], "other_row": j, "other_path": t.paths[j],
        "given_label": given, "predicted_label": t.name(int(t.predicted[i])),
        "split": _text(split, i), "other_split": _text(split, j),
        "outlier_score": _number(v.outlier_score[i]), "is_outlier": bool(v.is_outlier[i]),
        "near_duplicate_distance": _number(v.near_distance[i]),
        "exact_duplicate": bool(v.exact_of[i] >= 0),
    }
    return {"data": data}


def qa_tasks(analysis: Analysis, image_url: Callable[[str], str],
             kinds: Iterable[str] = KINDS, limit: int | None = None) -> list[dict[str, Any]]:
    """The QA task list (qa_rows, each as qa_task)."""
    v = verdict_rows(analysis)
    return [qa_task(analysis, v, task, image_url) for task in qa_rows(analysis, kinds, limit)]


@dataclass(frozen=True)
class QaDecision:
    row: int
    path: str
    kind: str
    decision: str
    other_row: int


def qa_decisions(tasks: Sequence[Mapping[str, Any]],
                 label_config: str = QA_LABEL_CONFIG) -> list[QaDecision]:
    """The decisions of annotated QA tasks (Label Studio's JSON export, or its API's tasks with
    their annotations): the latest non-cancelled annotation's choice of each; tasks without one
    are left out."""
    control = parse_label_config(label_config)
    out = []
    for task in tasks:
        choice = annotated_choice(task, control)
        data = task.get("data")
        if choice is None or not isinstance(data, Mapping):
            continue
        out.append(QaDecision(int(data.get("row", -1)), str(data.get("path", "")),
                              str(data.get("kind", "")), choice,
                              int(data.get("other_row", -1))))
    return out
