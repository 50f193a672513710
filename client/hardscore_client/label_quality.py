"""Label-quality rankings of a labelled data set, in pure numpy: cleanlab 2.9's three scores,
each on the probabilities as they are or adjusted for class imbalance.

A label-quality score is in [0, 1] per sample; **lower = the given label is more likely
wrong** (cleanlab's direction; ``1 - score`` is this project's issue direction). With
p = the sample's predicted probabilities, y = its given label and K classes:

- ``self_confidence``: p_y.
- ``normalized_margin``: (p_y - max_{k != y} p_k + 1) / 2.
- ``confidence_weighted_entropy``: with x = H(p) / ln K / max(p_y, 1e-6) (normalized entropy
  over self-confidence), log(1 + x) / max(x, 1e-6). A sample whose prediction is (almost)
  certain has x near 0 and gets a score near 0 as well, whatever its label: this score ranks
  near-one-hot predictions among the likely issues (cleanlab's definition, kept as it is).

``adjust_pred_probs`` first corrects each row for class imbalance: subtract each class's
confident threshold t_k (the mean p_k over the samples given label k; label_issues), add
max_k t_k back, and renormalise the row. A class the model favours on average then needs more
evidence. The adjusted probabilities are seen only by the ranking.

The numbers equal ``cleanlab.rank.get_label_quality_scores(labels, pred_probs, method=...,
adjust_pred_probs=...)`` on the same arrays to within 1e-12 (tests/unit/test_label_quality.py).
cleanlab refuses ``adjust_pred_probs`` for confidence-weighted entropy; here it is the same
adjustment followed by the same score (checked against cleanlab's two internal functions
composed). Which to use when: docs/dataset-workflow.md, measured by
bench/label_quality_methods.py.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hardscore_client.label_issues import confident_thresholds

METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
"""cleanlab's names of the three label-quality scores."""
DEFAULT_METHOD = "self_confidence"
CLIP = 1e-6
"""Lower bound of the divisors of confidence-weighted entropy (as cleanlab's)."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def adjusted_probabilities(probs: FloatArray, labels: IntArray) -> FloatArray:
    """Rows corrected for class imbalance: p - t + max(t), renormalised (t: confident
    thresholds of ``labels``). Every value stays >= 0 and every row sums to 1."""
    thresholds = confident_thresholds(probs, labels)
    adjusted = probs - thresholds
    adjusted += thresholds.max()
    adjusted /= adjusted.sum(axis=1, keepdims=True)
    return np.asarray(adjusted, dtype=np.float64)


def self_confidence(probs: FloatArray, labels: IntArray) -> FloatArray:
    """p(given label), in [0, 1]; lower = more likely mislabelled."""
    return np.asarray(probs[np.arange(len(labels)), labels], dtype=np.float64)


def normalized_margin(probs: FloatArray, labels: IntArray) -> FloatArray:
    """(p(given) - largest other p + 1) / 2, in [0, 1]; lower = more likely mislabelled."""
    given = self_confidence(probs, labels)
    others = np.array(probs, dtype=np.float64, copy=True)
    others[np.arange(len(labels)), labels] = -np.inf
    return (given - others.max(axis=1) + 1.0) / 2.0


def normalized_entropy(probs: FloatArray) -> FloatArray:
    """-sum p ln p / ln K per row (0 ln 0 = 0), in [0, 1]."""
    logs = np.log(probs, out=np.zeros_like(probs, dtype=np.float64), where=probs > 0)
    return np.asarray(-np.sum(probs * logs, axis=1) / np.log(probs.shape[1]), dtype=np.float64)


def confidence_weighted_entropy(probs: FloatArray, labels: IntArray) -> FloatArray:
    """log(1 + x) / max(x, 1e-6) with x = normalized entropy / max(p(given), 1e-6), in [0, 1];
    lower = more likely mislabelled (and near 0 for near-certain predictions)."""
    x = normalized_entropy(probs) / np.maximum(self_confidence(probs, labels), CLIP)
    return np.asarray(np.log(x + 1.0) / np.maximum(x, CLIP), dtype=np.float64)


_SCORES = {
    "self_confidence": self_confidence,
    "normalized_margin": normalized_margin,
    "confidence_weighted_entropy": confidence_weighted_entropy,
}


def label_quality_scores(
    probabilities: npt.ArrayLike,
    labels: npt.ArrayLike,
    method: str = DEFAULT_METHOD,
    adjust_pred_probs: bool = False,
) -> FloatArray:
    """Label-quality score of each sample, in [0, 1], lower = more likely mislabelled.

    ``probabilities`` [N, K] out-of-sample predicted probabilities, ``labels`` [N] given labels
    (0..K-1, every row labelled); ``method`` one of METHODS. With ``adjust_pred_probs`` the
    probabilities are first corrected for class imbalance (thresholds from these rows).
    """
    if method not in _SCORES:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    probs = np.asarray(probabilities, dtype=np.float64)
    given = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, K] with K >= 2, got shape {probs.shape}")
    if given.shape != (len(probs),):
        raise ValueError(f"labels must be [N] = [{len(probs)}], got shape {given.shape}")
    if len(given) and (given.min() < 0 or given.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class indices 0..{probs.shape[1] - 1}")
    if not len(given):
        return np.zeros(0)
    if adjust_pred_probs:
        probs = adjusted_probabilities(probs, given)
    return _SCORES[method](probs, given)


def method_name(method: str, adjust_pred_probs: bool) -> str:
    """How tables and reports name a ranking, e.g. ``normalized_margin+adjusted``."""
    return f"{method}+adjusted" if adjust_pred_probs else method
