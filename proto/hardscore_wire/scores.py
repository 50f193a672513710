"""The per-sample scores of the wire contract: their names, the label that means "none", and
what counts as predicted probabilities (shared by the server's checks and the client's warning).

Each name is a field of the ``Scores`` message and a column of the client's tables. The meaning
of each score (range, direction) is documented where it is computed, in the server's score math
and in docs/scores.md.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

NO_LABEL = -1
"""Label value meaning "this row has no given label"."""

MODEL_SCORES = ("confidence", "margin", "hardness", "hardness_normalized")
"""Scores of the model's view of a sample: float64, one per row, no label needed."""

LABEL_SCORES = (
    "mistakenness", "mistakenness_confidence", "label_issue_score", "margin_issue_score"
)
"""Scores that judge a given label: float64, higher = more likely mislabelled, NaN without one."""

SCORE_NAMES = ("predicted_class", *MODEL_SCORES, "given_label", *LABEL_SCORES)
"""Per-row result arrays, in the order tables print them."""

PROBABILITY_SUM_TOLERANCE = 1e-3
"""Largest |row sum - 1| the server accepts for predicted probabilities (float32 softmax outputs
of thousands of classes, or a float64 softmax stored in half precision, stay well inside it)."""

ROUNDING_SUM_LIMIT = 0.05
"""The most of |row sum - 1| that any dtype's rounding is taken to explain
(rounding_sum_tolerance)."""


def rounding_sum_tolerance(dtype: npt.DTypeLike, n_classes: int) -> float:
    """Largest |row sum - 1| accepted for probabilities of ``n_classes`` classes stored in
    ``dtype``: ``2 * (C + 2) * eps`` of the dtype (eps = 9.8e-4 for float16, 1.2e-7 for
    float32), at most ROUNDING_SUM_LIMIT and at least PROBABILITY_SUM_TOLERANCE.

    A softmax computed, summed and stored in that precision is off by at most about
    ``(C + 2) * eps / 2`` (one rounding of relative size eps / 2 per exponential, per addition,
    for the division and for the storage); the tolerance is four times that, room for
    approximate exponentials and averaged predictions (the published float16 CIFAR-10
    probabilities of the confident-learning paper are off by up to 1.4e-2, 2.4 times it).
    float16 with 10 classes: 0.0234; 24 classes or more: 0.05. float32 stays at 1e-3 up to
    4,192 classes; float64 always does.
    """
    kind = np.dtype(dtype)
    if kind.kind != "f":
        return PROBABILITY_SUM_TOLERANCE
    explained = 2.0 * (n_classes + 2) * float(np.finfo(kind).eps)
    return max(PROBABILITY_SUM_TOLERANCE, min(explained, ROUNDING_SUM_LIMIT))


def looks_like_probabilities(values: npt.NDArray[np.generic]) -> bool:
    """True when a non-empty [N, C] float array is all in [0, 1] with every row summing to 1
    within rounding_sum_tolerance of its dtype: predicted probabilities, not logits."""
    if values.ndim != 2 or values.size == 0 or values.dtype.kind != "f":
        return False
    if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
        return False
    sums = values.sum(axis=1, dtype=np.float64)
    tolerance = rounding_sum_tolerance(values.dtype, values.shape[1])
    return bool(np.abs(sums - 1.0).max() <= tolerance)


def probabilities_problem(
    probs: npt.NDArray[np.generic], tolerance: float, field: str = "probabilities",
    as_logits: str = "send them as logits",
) -> str | None:
    """Why the [N, C] array ``probs`` is not predicted probabilities, naming the first bad row
    and the fix; None when every value is finite and in [0, 1] and every row sums to 1 within
    ``tolerance``. ``as_logits`` is the fix offered for values far outside [0, 1] (logits or
    log-probabilities, which are scored right as logits)."""
    values = np.asarray(probs)
    finite = np.isfinite(values)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        return f"{field} row {row} has a non-finite value ({values[row, col]} in class {col})"
    outside = (values < 0.0) | (values > 1.0)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        value = float(values[row, col])
        if -tolerance <= value <= 1.0 + tolerance:
            fix = "a rounding error? clip the values to [0, 1] and divide each row by its sum"
        else:
            fix = f"these look like logits or log-probabilities: {as_logits}"
        return (f"{field} row {row} has a value outside [0, 1] ({value:.9g} in class {col}): "
                f"{fix}")
    sums = values.sum(axis=1, dtype=np.float64)
    off = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if len(off):
        row = int(off[0])
        return (f"{field} row {row} sums to {sums[row]:.9g}, expected 1 within {tolerance:.3g}: "
                "if these are probabilities, divide each row by its sum; otherwise check where "
                "they came from")
    return None
