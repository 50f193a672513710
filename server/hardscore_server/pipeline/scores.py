"""Score math: pure, vectorised numpy functions over a batch of logits.

Every function takes arrays for a whole batch (N rows, C classes) and returns one array of N
values; nothing loops over samples and nothing keeps state. ``score_logits`` starts from logits,
``score_probabilities`` from predicted probabilities (used as given: the same scores, computed
from the probabilities directly). Probabilities are computed in float64
with the log-sum-exp shift, so logits of any finite magnitude (1e6 included) give exact results.
Every finite input gives finite scores, whatever its range and whatever the temperature (> 0):
each row is shifted by its largest logit *before* the division by the temperature, so no shifted
value is positive, and shifted values below ``LOG_FLOOR`` (where the shift of float64 logits near
+-1.8e308 or a temperature like 1e-308 overflows to -inf) are raised to it: their probability is
0 either way (exp underflows below -745), and 0 * LOG_FLOOR is 0 where 0 * -inf would be NaN.
Non-finite logits (NaN, +-inf) give NaN scores for their row.

Scores that describe the model's view of a sample (no label needed):

- ``hardness``: entropy of softmax(logits), natural log, in [0, ln C]; higher = harder. Exactly
  FiftyOne Brain's ``compute_hardness``.
- ``hardness_normalized``: hardness / ln C, in [0, 1]; comparable across class counts.
- ``confidence``: max probability, in [1/C, 1]; higher = more certain.
- ``margin``: top-1 minus top-2 probability, in [0, 1]; lower = more ambiguous.

Scores that judge a given label (higher = more likely mislabelled for all four, NaN for rows
whose label is missing, i.e. -1):

- ``mistakenness``: FiftyOne Brain's ``compute_mistakenness(use_logits=True)``,
  (s * exp(-hardness) + 1) / 2 with s = -1 where the prediction equals the label, +1 otherwise.
- ``mistakenness_confidence``: FiftyOne's default, (s * confidence + 1) / 2.
- ``label_issue_score``: 1 - p(given label), self-confidence. The best single ranking of real
  label errors in published comparisons (Northcutt et al., cleanlab); prefer it for label QA.
- ``margin_issue_score``: 1 - (p(given) - max_{k != given} p_k + 1) / 2, one minus the normalized
  margin. Strongest when errors are swaps between two similar classes.

FiftyOne's two mistakenness variants rank every disagreement above every agreement, so they
sort by "does the model disagree" first; the two issue scores also order samples within each group.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from hardscore_wire.scores import LABEL_SCORES, MODEL_SCORES, NO_LABEL

__all__ = [
    "LABEL_SCORES", "MODEL_SCORES", "NO_LABEL", "ScoreBatch", "score_logits",
    "score_probabilities",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

LOG_FLOOR = -1e4
"""Least shifted, scaled logit used: exp(LOG_FLOOR) is 0 in float64, as is any lower value's."""


def _shift_and_scale(z: FloatArray, top: FloatArray, temperature: float) -> None:
    """``z = (z - top) / temperature`` in place, each value <= 0 for ``top`` the row maximum.

    Where that overflows (to -inf: float64 logits near +-1.8e308, a tiny temperature), values
    are raised to LOG_FLOOR; the check costs nothing when nothing overflows.
    """
    overflowed = False

    def note(kind: str, flag: int) -> None:
        nonlocal overflowed
        overflowed = True

    with np.errstate(over="call", call=note):
        z -= top
        if temperature != 1.0:
            z /= temperature
    if overflowed:
        np.maximum(z, LOG_FLOOR, out=z)


def log_softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Log-probabilities (float64, [N, C], each <= 0) of ``logits / temperature``, shift-stable.

    Finite for finite logits and any temperature > 0; a class whose probability underflows to 0
    gets at least LOG_FLOOR minus the row's log-sum (not -inf).
    """
    z = np.array(logits, dtype=np.float64, copy=True)
    _shift_and_scale(z, z.max(axis=1, keepdims=True), temperature)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Probabilities (float64, [N, C], rows sum to 1) of ``logits / temperature``."""
    return np.exp(log_softmax(logits, temperature))


def hardness(log_probs: FloatArray) -> FloatArray:
    """Entropy of each row, natural log, in [0, ln C]; higher = harder for the model.

    ``log_probs`` are log-softmax outputs; 0 * log 0 counts as 0 (a probability that underflowed).
    """
    return _entropy(np.exp(log_probs), log_probs)


def _entropy(probs: FloatArray, log_probs: FloatArray) -> FloatArray:
    return -np.einsum("ij,ij->i", probs, log_probs)


def hardness_normalized(log_probs: FloatArray) -> FloatArray:
    """Entropy divided by ln C, in [0, 1]; 1 = uniform prediction, 0 = one-hot."""
    return hardness(log_probs) / np.log(log_probs.shape[1])


def predicted_class(probs: FloatArray) -> IntArray:
    """Index of the most probable class; ties go to the lowest index (as numpy's argmax)."""
    return np.argmax(probs, axis=1).astype(np.int64)


def top_two(probs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The largest and second-largest probability of each row."""
    if probs.shape[1] == 2:
        return probs.max(axis=1), probs.min(axis=1)
    part = np.partition(probs, probs.shape[1] - 2, axis=1)
    return part[:, -1].copy(), part[:, -2].copy()


def confidence(probs: FloatArray) -> FloatArray:
    """Max probability, in [1/C, 1]; higher = more certain."""
    return probs.max(axis=1)


def margin(probs: FloatArray) -> FloatArray:
    """Top-1 minus top-2 probability, in [0, 1]; lower = more ambiguous."""
    first, second = top_two(probs)
    return first - second


def _agreement_sign(predicted: IntArray, labels: IntArray) -> FloatArray:
    """-1 where the prediction equals the given label, +1 where it differs, NaN without a label."""
    sign = np.where(predicted == labels, -1.0, 1.0)
    sign[labels == NO_LABEL] = np.nan
    return sign


def mistakenness(hardness_: FloatArray, predicted: IntArray, labels: IntArray) -> FloatArray:
    """FiftyOne Brain's logits mistakenness, (s * exp(-hardness) + 1) / 2, in [0, 1].

    Higher = more likely mislabelled; > 0.5 exactly when the model disagrees with the label.
    """
    return (_agreement_sign(predicted, labels) * np.exp(-hardness_) + 1.0) / 2.0


def mistakenness_confidence(
    confidence_: FloatArray, predicted: IntArray, labels: IntArray
) -> FloatArray:
    """FiftyOne Brain's default mistakenness, (s * confidence + 1) / 2, in [0, 1].

    Higher = more likely mislabelled; > 0.5 exactly when the model disagrees with the label.
    """
    return (_agreement_sign(predicted, labels) * confidence_ + 1.0) / 2.0


def given_label_probability(probs: FloatArray, labels: IntArray) -> FloatArray:
    """p(given label) per row (self-confidence), NaN where the row has no label."""
    rows = np.arange(probs.shape[0])
    out = probs[rows, np.where(labels == NO_LABEL, 0, labels)]
    out[labels == NO_LABEL] = np.nan
    return out


def label_issue_score(probs: FloatArray, labels: IntArray) -> FloatArray:
    """1 - p(given label), in [0, 1]; higher = more likely mislabelled (self-confidence)."""
    return 1.0 - given_label_probability(probs, labels)


def margin_issue_score(probs: FloatArray, labels: IntArray) -> FloatArray:
    """1 - (p(given) - max other p + 1) / 2, in [0, 1]; higher = more likely mislabelled.

    One minus cleanlab's normalized margin; best at finding swaps between two similar classes.
    """
    first, second = top_two(probs)
    return _margin_issue(given_label_probability(probs, labels), first, second)


def _margin_issue(p_given: FloatArray, first: FloatArray, second: FloatArray) -> FloatArray:
    # The largest probability among the other classes is the top-1 unless the given label holds
    # it; then it is the top-2 (equal to the top-1 on ties, as it should be).
    max_other = np.where(p_given >= first, second, first)
    return (1.0 - p_given + max_other) / 2.0


@dataclass(frozen=True)
class ScoreBatch:
    """Every score of a batch of N rows. Label scores are None when no labels were given."""

    predicted_class: IntArray
    confidence: FloatArray
    margin: FloatArray
    hardness: FloatArray
    hardness_normalized: FloatArray
    probabilities: FloatArray
    given_label: IntArray | None = None
    mistakenness: FloatArray | None = None
    mistakenness_confidence: FloatArray | None = None
    label_issue_score: FloatArray | None = None
    margin_issue_score: FloatArray | None = None


def score_logits(
    logits: npt.ArrayLike, labels: npt.ArrayLike | None = None, temperature: float = 1.0
) -> ScoreBatch:
    """Computes every score for ``logits`` [N, C] (finite, C >= 2) and optional ``labels`` [N].

    Labels are class indices in [0, C) or -1 for rows without one; ``temperature`` (> 0) divides
    the logits once each row is shifted by its largest (finite scores for any finite input).
    Same numbers as the single-score functions above (a test checks both paths). The softmax is
    computed once and shared. Large batches go through a class-major copy, where every
    reduction over the classes becomes C vector operations over N contiguous values; small ones
    (online calls) take the row-major path, which makes fewer
    numpy calls.
    """
    logits = np.asarray(logits)
    if logits.shape[0] < SMALL_BATCH_ROWS:
        batch, second = _model_scores_row_major(logits, temperature)
    else:
        batch, second = _model_scores_class_major(logits, temperature)
    return _with_label_scores(batch, second, labels)


def score_probabilities(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike | None = None
) -> ScoreBatch:
    """Computes every score from predicted probabilities [N, C] (C >= 2; values in [0, 1],
    rows summing to 1: checked by the caller) and optional ``labels`` [N] (-1 = none).

    The probabilities are used as given, in float64: no renormalisation, no softmax, no log
    then exp. Entropy counts 0 * log 0 as 0, so zeros are exact (a one-hot row has hardness 0).
    The label scores equal cleanlab's on the same array: ``label_issue_score`` is one minus its
    self-confidence, ``margin_issue_score`` one minus its normalized margin, and
    ``hardness_normalized`` its normalized entropy.
    """
    probs = np.array(probabilities, dtype=np.float64, copy=True)
    first, second = top_two(probs)
    entropy = entropy_of_probabilities(probs)
    batch = ScoreBatch(
        predicted_class=predicted_class(probs),
        confidence=first,
        margin=first - second,
        hardness=entropy,
        hardness_normalized=entropy / np.log(probs.shape[1]),
        probabilities=probs,
    )
    return _with_label_scores(batch, second, labels)


def entropy_of_probabilities(probs: FloatArray) -> FloatArray:
    """-sum p log p per row, natural log, with 0 * log 0 = 0 (zeros never reach the log)."""
    positive = probs > 0.0
    logs = np.log(probs, out=np.zeros_like(probs), where=positive)
    return np.maximum(-np.einsum("ij,ij->i", probs, logs), 0.0)


def _with_label_scores(
    batch: ScoreBatch, second: FloatArray, labels: npt.ArrayLike | None
) -> ScoreBatch:
    """``batch`` with its label scores (``second`` = second-largest probability of each row)."""
    if labels is None:
        return batch
    given = np.asarray(labels, dtype=np.int64)
    p_given = given_label_probability(batch.probabilities, given)
    first = batch.confidence
    return replace(
        batch,
        given_label=given,
        mistakenness=mistakenness(batch.hardness, batch.predicted_class, given),
        mistakenness_confidence=mistakenness_confidence(first, batch.predicted_class, given),
        label_issue_score=1.0 - p_given,
        margin_issue_score=_margin_issue(p_given, first, second),
    )


SMALL_BATCH_ROWS = 64
"""Below this many rows score_logits takes the row-major path (fewer, smaller numpy calls)."""


def _model_scores_row_major(
    logits: npt.NDArray[np.generic], temperature: float
) -> tuple[ScoreBatch, FloatArray]:
    """The label-free scores, and the second-largest probability of each row."""
    log_probs = log_softmax(logits, temperature)
    probs = np.exp(log_probs)
    first, second = top_two(probs)
    entropy = np.maximum(_entropy(probs, log_probs), 0.0)
    return ScoreBatch(
        predicted_class=predicted_class(log_probs),
        confidence=first,
        margin=first - second,
        hardness=entropy,
        hardness_normalized=entropy / np.log(log_probs.shape[1]),
        probabilities=probs,
    ), second


def _model_scores_class_major(
    logits: npt.NDArray[np.generic], temperature: float
) -> tuple[ScoreBatch, FloatArray]:
    """The label-free scores, and the second-largest probability of each row."""
    z = logits.T.astype(np.float64, order="C")  # [C, N]
    predicted, top_logit = _argmax_rows(z)
    _shift_and_scale(z, top_logit, temperature)
    probs = np.exp(z)
    total = probs.sum(axis=0)
    probs /= total
    entropy = np.log(total) - np.einsum("cn,cn->n", probs, z)
    np.maximum(entropy, 0.0, out=entropy)  # rounding can leave -1e-17 on one-hot rows
    first, second = _top_two_columns(probs)
    return ScoreBatch(
        predicted_class=predicted,
        confidence=first,
        margin=first - second,
        hardness=entropy,
        hardness_normalized=entropy / np.log(z.shape[0]),
        probabilities=probs.T,
    ), second


def _argmax_rows(z: FloatArray) -> tuple[IntArray, FloatArray]:
    """Index and value of the largest entry of each column of class-major ``z`` [C, N]."""
    best = z[0].copy()
    index = np.zeros(z.shape[1], dtype=np.int64)
    for c in range(1, z.shape[0]):
        np.copyto(index, c, where=z[c] > best)
        np.maximum(best, z[c], out=best)
    return index, best


def _top_two_columns(probs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Largest and second-largest entry of each column of class-major ``probs`` [C, N]."""
    if probs.shape[0] > 64:
        return top_two(probs.T)
    first = probs[0].copy()
    second = np.zeros_like(first)
    for c in range(1, probs.shape[0]):
        np.maximum(second, np.minimum(first, probs[c]), out=second)
        np.maximum(first, probs[c], out=first)
    return first, second
