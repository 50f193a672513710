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
"""Largest |row sum - 1| accepted for predicted probabilities (float32 softmax outputs of
thousands of classes, or probabilities stored in half precision, stay well inside it)."""


def looks_like_probabilities(values: npt.NDArray[np.generic]) -> bool:
    """True when a non-empty [N, C] array is all in [0, 1] with every row summing to 1 within
    PROBABILITY_SUM_TOLERANCE: predicted probabilities, not logits."""
    if values.ndim != 2 or values.size == 0 or values.dtype.kind != "f":
        return False
    if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
        return False
    sums = values.sum(axis=1, dtype=np.float64)
    return bool(np.abs(sums - 1.0).max() <= PROBABILITY_SUM_TOLERANCE)
