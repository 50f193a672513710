"""Data-set level label issues by confident learning, in pure numpy.

The server scores each image on its own; finding which *labels* of a data set are wrong needs
the whole set at once, so it happens here, in the client, from the returned probabilities and
the given labels (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels", JAIR 2021):

1. **Per-class thresholds**: t_k = mean of p_k over the samples *given* label k (the model's
   average self-confidence on that class).
2. **Confident joint** C[i, j]: samples given label i whose probability reaches the threshold
   of class j (p_j >= t_j); a sample above several thresholds counts for its most probable class,
   one above none is not counted. Each diagonal entry is at least 1.
3. **Calibration**: each row rescaled to the number of samples given that label, the whole to
   the number of samples, rounded to integers keeping the row totals.
4. **Pruning by noise rate**: for each off-diagonal cell (given i, true j) of the calibrated
   joint (after leaving at least one sample per given class), the samples given label i with the
   largest p_j - p_i, as many as the cell counts, are flagged. Flagged samples whose prediction
   is their given label are then unflagged.

The estimated number of label issues is the number of samples counted off the diagonal of the
(uncalibrated) confident joint whose prediction differs from their label; the label-health
score is one minus that number over the number of samples.

The results equal ``cleanlab.filter.find_label_issues`` (its default ``prune_by_noise_rate``),
``cleanlab.count.compute_confident_joint`` / ``estimate_joint`` / ``num_label_issues`` and
``cleanlab.dataset.overall_label_health_score`` on the same inputs (tests/unit/test_label_issues.py
checks that against cleanlab 2.9).

**The probabilities must be out-of-sample**: from a model that did not train on those images
(a held-out model, or cross-validation). A model that saw an image has learnt its label, wrong
or not, and confirms it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NEAR = 1e-6
"""Slack in probability comparisons (thresholds, and prediction == given label)."""
MIN_THRESHOLD = 2 * NEAR
ABSENT_CLASS_THRESHOLD = 2.0
"""Threshold of a class that no sample is given: above any probability, so never confident."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ClassNoise:
    """Label noise among the samples *given* one class."""

    name: str
    count: int
    flagged: int
    """Samples of this given label in the flagged set."""
    estimated_issues: int
    """Off-diagonal mass of this row of the calibrated joint (samples given this label that
    truly belong to another class)."""
    noise_rate: float
    """estimated_issues / count."""
    likely_true: str
    """The other class most of its wrong labels belong to ("" when none)."""
    likely_true_count: int


@dataclass(frozen=True)
class LabelIssues:
    """Confident-learning estimates for N labelled samples over K classes."""

    class_names: list[str]
    labels: IntArray
    thresholds: FloatArray
    confident_joint: IntArray
    """[K, K] counts, rows = given label, columns = likely true label (uncalibrated)."""
    calibrated_joint: IntArray
    """[K, K] confident joint calibrated to the label counts; sums to N."""
    is_issue: BoolArray
    """The flagged set (pruning by noise rate)."""
    num_issues: int
    """Estimated number of label issues."""
    suggested_label: IntArray
    """The most probable class of each sample (a relabelling suggestion for flagged ones)."""

    @property
    def joint(self) -> FloatArray:
        """Estimated joint distribution P(given label, true label): sums to 1."""
        total = float(self.calibrated_joint.sum())
        return self.calibrated_joint / max(total, 1e-100)

    @property
    def health(self) -> float:
        """Overall label-health score: 1 - estimated issues / samples (1 = clean)."""
        n = len(self.labels)
        return 1.0 - self.num_issues / n if n else 1.0

    def class_noise(self) -> list[ClassNoise]:
        """The per-class label-noise table, one entry per class (in class order)."""
        rows = []
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        for k, name in enumerate(self.class_names):
            row = self.calibrated_joint[k].copy()
            off = int(row.sum() - row[k])
            row[k] = -1
            j = int(np.argmax(row))
            top = int(row[j]) if off > 0 else 0
            n_k = int(counts[k])
            rows.append(ClassNoise(
                name=name, count=n_k, flagged=int(self.is_issue[self.labels == k].sum()),
                estimated_issues=off, noise_rate=off / n_k if n_k else 0.0,
                likely_true=self.class_names[j] if top > 0 else "", likely_true_count=top,
            ))
        return rows


def confident_thresholds(probs: FloatArray, labels: IntArray) -> FloatArray:
    """t_k = mean p_k over the samples given label k (2.0 for a class given to none)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    means = np.array([
        probs[labels == c, c].mean() if counts[c] else ABSENT_CLASS_THRESHOLD for c in range(k)
    ])
    return np.maximum(means, MIN_THRESHOLD)


def confident_counts(
    probs: FloatArray, labels: IntArray, thresholds: FloatArray,
) -> tuple[IntArray, BoolArray]:
    """The uncalibrated confident joint and the mask of samples counted off its diagonal."""
    k = probs.shape[1]
    above = probs >= thresholds[None, :] - NEAR
    n_above = above.sum(axis=1)
    # One confident class: that one. Several: the most probable of all. None: not counted.
    guess = np.where(n_above > 1, probs.argmax(axis=1), above.argmax(axis=1))
    counted = n_above > 0
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    diagonal = np.arange(k)
    joint[diagonal, diagonal] = np.maximum(joint[diagonal, diagonal], 1)
    off_diagonal = counted & (guess != labels)
    return joint, off_diagonal


def round_keeping_total(values: FloatArray) -> IntArray:
    """Integers near ``values`` whose sum is the rounded sum of ``values``.

    Each value is rounded to nearest; the difference to the target total is then made up one
    unit at a time on the values whose rounding moved them most the other way.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.round(x)
    target = np.round(x.sum())
    while abs(out.sum() - target) > NEAR:
        missing = int(np.round(target - out.sum()))
        step = 1 if missing > 0 else -1
        # Ascending residuals in numpy's default sort order (ties included, as the reference
        # implementation orders them): raise from the top end, lower from the bottom end.
        order = np.argsort(x - out)
        if step > 0:
            order = order[::-1]
        out[order[: min(abs(missing), len(x))]] += step
    return out.astype(np.int64)


def calibrate(joint: IntArray, label_counts: IntArray) -> IntArray:
    """Rows rescaled to the label counts, the whole to their sum; rounded keeping row totals."""
    row_sums = np.maximum(joint.sum(axis=1).astype(np.float64), 1e-100)
    scaled = joint / row_sums[:, None] * label_counts[:, None]
    # Rescaling to the total changes nothing in exact arithmetic, but its rounding decides exact
    # .5 ties below: the total is summed in column order, as the reference sums it, to agree.
    total = float(np.asfortranarray(scaled).sum())
    scaled = scaled / max(total, 1e-100) * float(label_counts.sum())
    return np.stack([round_keeping_total(row) for row in scaled]).astype(np.int64)


def _keep_one_per_class(joint: IntArray) -> IntArray:
    """Counts to prune: the calibrated joint with each diagonal raised to at least 1 (at the
    expense of the row's non-zero off-diagonal cells, evenly; truncated to integers)."""
    counts = joint.astype(np.float64)
    k = len(counts)
    diagonal = np.arange(k)
    lift = np.maximum(counts[diagonal, diagonal], 1.0) - counts[diagonal, diagonal]
    spread = np.maximum(np.count_nonzero(counts, axis=1) - 1.0, 1.0)
    counts = np.maximum(counts - (lift / spread)[:, None], 0.0)
    counts[diagonal, diagonal] = joint[diagonal, diagonal] + lift
    return counts.astype(np.int64)


def prune_by_noise_rate(probs: FloatArray, labels: IntArray, calibrated: IntArray) -> BoolArray:
    """The flagged set: per off-diagonal cell (given i, true j), the samples given i with the
    largest p_j - p_i, as many as the cell holds (classes with one sample are left alone)."""
    to_prune = _keep_one_per_class(calibrated)
    flagged = np.zeros(len(labels), dtype=bool)
    for i in range(len(to_prune)):
        members = np.flatnonzero(labels == i)
        if len(members) <= 1:
            continue
        for j in np.flatnonzero(to_prune[i]):
            if j == i:
                continue
            lead = probs[members, j] - probs[members, i]
            order = np.argsort(-lead)  # numpy's default order on ties, as the reference
            flagged[members[order[: to_prune[i, j]]]] = True
    return flagged


def predicted_is_given(probs: FloatArray, labels: IntArray) -> BoolArray:
    """Whether the prediction is the given label, the given class winning near-ties."""
    boosted = np.array(probs, dtype=probs.dtype, copy=True)
    rows = np.arange(len(labels))
    boosted[rows, labels] += NEAR
    return np.asarray(boosted.argmax(axis=1) == labels)


def find_label_issues(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    class_names: Sequence[str] | None = None,
) -> LabelIssues:
    """Confident learning over out-of-sample ``probabilities`` [N, K] and given ``labels`` [N]
    (class indices 0..K-1). See the module docstring."""
    probs = np.asarray(probabilities)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, K] with K >= 2, got shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities must be finite (drop failed samples first)")
    given = np.asarray(labels).astype(np.int64)
    k = probs.shape[1]
    if given.shape != (len(probs),):
        raise ValueError(f"labels must be [N] = [{len(probs)}], got shape {given.shape}")
    if len(given) and (given.min() < 0 or given.max() >= k):
        raise ValueError(f"labels must be class indices 0..{k - 1}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")

    if not len(given):
        empty = np.zeros((k, k), dtype=np.int64)
        return LabelIssues(names, given, np.full(k, ABSENT_CLASS_THRESHOLD), empty, empty,
                           np.zeros(0, dtype=bool), 0, np.zeros(0, dtype=np.int64))
    thresholds = confident_thresholds(probs, given)
    joint, off_diagonal = confident_counts(probs, given, thresholds)
    label_counts = np.bincount(given, minlength=k)
    calibrated = calibrate(joint, label_counts)
    agrees = predicted_is_given(probs, given)
    flagged = prune_by_noise_rate(probs, given, calibrated) & ~agrees
    num_issues = int((off_diagonal & ~agrees).sum())
    return LabelIssues(
        class_names=names, labels=given, thresholds=thresholds, confident_joint=joint,
        calibrated_joint=calibrated, is_issue=flagged, num_issues=num_issues,
        suggested_label=probs.argmax(axis=1).astype(np.int64),
    )
