"""The per-sample scores of the wire contract: their names, and the label that means "none".

Each name is a field of the ``Scores`` message and a column of the client's tables. The meaning
of each score (range, direction) is documented where it is computed, in the server's score math
and in docs/scores.md.
"""

from __future__ import annotations

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
