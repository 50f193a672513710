"""A score table read back for data-set analysis: labels, predictions, probabilities, label
issues and class-wise statistics (shared by ``hardscore select``, ``label-issues`` and
``report``).

Reads the tables ``score-dir`` writes (``path``, ``label``, ``prediction``, scores,
``p_<class>``) and also those of ``score-images`` / ``score-logits`` (``id``, ``given_label`` and
``predicted_class`` as indices).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.label_issues import LabelIssues, find_label_issues
from hardscore_client.label_quality import (
    DEFAULT_METHOD,
    METHODS,
    label_quality_scores,
    method_name,
)
from hardscore_client.tables import Columns, read_table

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class ScoreTable:
    """N scored samples over K classes."""

    columns: Columns
    paths: list[str]
    class_names: list[str]
    labels: IntArray
    """Given label index per row, -1 where none."""
    predicted: IntArray
    probabilities: FloatArray | None
    """[N, K] when the table has p_<class> columns."""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> BoolArray:
        return np.asarray(self.labels >= 0)

    def score(self, name: str) -> FloatArray:
        """A score column as float64 (NaN when the table lacks it)."""
        if name not in self.columns:
            return np.full(len(self), math.nan)
        return np.asarray(self.columns[name], dtype=np.float64)

    def name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else ""

    failed: int = 0
    """Rows of the table left out: images that failed (a non-empty ``error``, score-dir)."""

    @classmethod
    def load(cls, path: Path, keep: Callable[[str], bool] | None = None) -> ScoreTable:
        """The table at ``path``; ``keep`` picks the columns read (tables.read_table; the
        ``error`` column is always read)."""
        wanted = None if keep is None else (lambda name: name == "error" or keep(name))
        return cls.from_columns(read_table(path, wanted))

    @classmethod
    def from_columns(cls, columns: Columns) -> ScoreTable:
        """The table's scored rows: rows with an ``error`` (score-dir's failed images, no
        scores) are left out, counted in ``failed``."""
        failed = 0
        if "error" in columns:
            scored = np.array([not e for e in columns["error"].tolist()], dtype=bool)
            failed = int((~scored).sum())
            if failed:
                columns = {k: v[scored] for k, v in columns.items()}
        n = len(next(iter(columns.values()))) if columns else 0
        prob_names = [c[2:] for c in columns if c.startswith("p_")]
        if prob_names:
            names = prob_names
        elif "prediction" in columns or "label" in columns:
            texts = {str(v) for c in ("prediction", "label") if c in columns for v in columns[c]}
            names = _names_in_index_order(columns) or sorted(texts - {""})
        else:
            top = max((int(np.max(columns[c], initial=-1)) for c in ("predicted_class",
                                                                     "given_label")
                       if c in columns), default=-1)
            names = [str(i) for i in range(top + 1)]
        index = {name: i for i, name in enumerate(names)}

        def indices(text_col: str, int_col: str) -> IntArray:
            if text_col in columns:
                return np.array([index.get(str(v), -1) for v in columns[text_col]],
                                dtype=np.int64)
            if int_col in columns:
                values = np.asarray(columns[int_col], dtype=np.float64)
                return np.where(np.isfinite(values), values, -1).astype(np.int64)
            return np.full(n, -1, dtype=np.int64)

        if "path" in columns:
            paths = [str(v) for v in columns["path"]]
        elif "id" in columns:
            paths = [str(v) for v in columns["id"]]
        else:
            paths = [str(i) for i in range(n)]
        probs = (np.stack([np.asarray(columns[f"p_{c}"], dtype=np.float64) for c in names],
                          axis=1) if prob_names else None)
        return cls(columns=columns, paths=paths, class_names=names,
                   labels=indices("label", "given_label"),
                   predicted=indices("prediction", "predicted_class"), probabilities=probs,
                   failed=failed)


def _names_in_index_order(columns: Columns) -> list[str] | None:
    """The class names seen in a table with both names and indices (score-logits and
    score-images tables with class names), in class index order; None when the two do not
    pair up one to one."""
    pairs: dict[int, str] = {}
    for text, index in (("prediction", "predicted_class"), ("label", "given_label")):
        if text in columns and index in columns:
            indices = np.asarray(columns[index], dtype=np.int64)
            seen, first = np.unique(indices, return_index=True)
            for i, row in zip(seen.tolist(), first.tolist(), strict=True):
                name = str(columns[text][row])
                if i >= 0 and name and pairs.setdefault(i, name) != name:
                    return None
    names = [pairs[i] for i in sorted(pairs)]
    return names if names and len(set(names)) == len(names) else None


@dataclass(frozen=True)
class ClassStats:
    """One row of the class-wise table (samples grouped by given label, else by prediction)."""

    name: str
    count: int
    mean_hardness: float
    accuracy: float
    """Share of the class's samples predicted as their given label (NaN when unlabelled)."""
    flagged: int
    """Samples of this given label in the confident-learning flagged set."""
    estimated_issues: int
    noise_rate: float
    likely_true: str


@dataclass
class Analysis:
    """A table with its confident-learning results mapped back to every row, and the ranking
    (``method``, ``adjust_pred_probs``: hardscore_client.label_quality) that orders them."""

    table: ScoreTable
    issues: LabelIssues | None
    """None without probabilities, or with fewer than two labelled classes."""
    flagged: BoolArray
    """Per row: in the flagged set (False for rows not analysed)."""
    analysed: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """The rows analysed (labelled, with finite probabilities): confident learning ran on them
    when they hold two classes or more; the rankings score them in any case."""
    method: str = DEFAULT_METHOD
    adjust_pred_probs: bool = False

    @property
    def ranking(self) -> str:
        """The ranking's name, e.g. ``normalized_margin+adjusted``."""
        return method_name(self.method, self.adjust_pred_probs)

    @property
    def issue_rows(self) -> IntArray:
        """Flagged rows, most likely mistake first (by rank_score)."""
        rows = np.flatnonzero(self.flagged)
        score = self.rank_score()
        return rows[np.argsort(-score[rows], kind="stable")]

    def label_quality(self) -> FloatArray:
        """Per row: the ranking's label-quality score, in [0, 1], lower = more likely wrong;
        NaN for rows not analysed (unlabelled, no probabilities)."""
        return self._label_quality

    @cached_property
    def _label_quality(self) -> FloatArray:
        t = self.table
        quality = np.full(len(t), math.nan)
        if t.probabilities is not None and len(self.analysed):
            rows = self.analysed
            quality[rows] = label_quality_scores(t.probabilities[rows], t.labels[rows],
                                                 self.method, self.adjust_pred_probs)
        return quality

    def rank_score(self) -> FloatArray:
        """Per row, higher = more likely mislabelled, by the chosen ranking: issue_score for
        the default (self-confidence as is), else 1 - label_quality (NaN where not analysed)."""
        if self.method == DEFAULT_METHOD and not self.adjust_pred_probs:
            return self.issue_score()
        return 1.0 - self.label_quality()

    def issue_score(self) -> FloatArray:
        """Per row: label_issue_score, else 1 - p(given label) (NaN for unlabelled rows)."""
        return self._issue_score

    @cached_property
    def _issue_score(self) -> FloatArray:
        t = self.table
        score = t.score("label_issue_score")
        if t.probabilities is not None:
            labelled = t.labelled
            own = np.full(len(t), math.nan)
            own[labelled] = 1.0 - t.probabilities[np.flatnonzero(labelled), t.labels[labelled]]
            score = np.where(np.isnan(score), own, score)
        return score

    def group(self) -> IntArray:
        """The class each row is grouped under: its given label, else its prediction."""
        t = self.table
        return np.where(t.labels >= 0, t.labels, t.predicted)

    def class_stats(self) -> list[ClassStats]:
        t = self.table
        group = self.group()
        hardness = t.score("hardness")
        noise = {c.name: c for c in self.issues.class_noise()} if self.issues else {}
        out = []
        for k, name in enumerate(t.class_names):
            rows = group == k
            labelled = rows & t.labelled
            n = int(rows.sum())
            h = hardness[rows]
            h = h[np.isfinite(h)]
            c = noise.get(name)
            out.append(ClassStats(
                name=name, count=n, mean_hardness=float(h.mean()) if len(h) else math.nan,
                accuracy=(float((t.predicted[labelled] == k).mean()) if labelled.any()
                          else math.nan),
                flagged=int(self.flagged[labelled].sum()),
                estimated_issues=c.estimated_issues if c else 0,
                noise_rate=c.noise_rate if c else math.nan,
                likely_true=c.likely_true if c else "",
            ))
        return out


def analyse(
    table: ScoreTable, method: str = DEFAULT_METHOD, adjust_pred_probs: bool = False
) -> Analysis:
    """Runs confident learning over the labelled rows with finite probabilities; ``method``
    and ``adjust_pred_probs`` choose the label-quality ranking (label_quality.METHODS)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    flagged = np.zeros(len(table), dtype=bool)
    probs = table.probabilities
    if probs is None:
        return Analysis(table, None, flagged, method=method, adjust_pred_probs=adjust_pred_probs)
    rows = np.flatnonzero(table.labelled & np.isfinite(probs).all(axis=1))
    if len(np.unique(table.labels[rows])) < 2:  # no confident learning; rankings still work
        return Analysis(table, None, flagged, rows, method, adjust_pred_probs)
    issues = find_label_issues(probs[rows], table.labels[rows], table.class_names)
    flagged[rows[issues.is_issue]] = True
    return Analysis(table, issues, flagged, rows, method, adjust_pred_probs)
