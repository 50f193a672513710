"""Scores from predicted probabilities (score_probabilities) and the probabilities check shared
by the server and the client (hardscore_wire.scores.looks_like_probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from hardscore_server.pipeline.scores import score_logits, score_probabilities, softmax
from hardscore_wire.scores import PROBABILITY_SUM_TOLERANCE, looks_like_probabilities


@pytest.mark.parametrize("n", [10, 500])  # both paths of score_logits
def test_probabilities_of_logits_give_the_logits_scores(n):
    rng = np.random.default_rng(n)
    logits = rng.normal(scale=3.0, size=(n, 6))
    labels = rng.integers(-1, 6, size=n)
    from_logits = score_logits(logits, labels)
    from_probs = score_probabilities(softmax(logits), labels)
    for name in ("confidence", "margin", "hardness", "hardness_normalized", "mistakenness",
                 "mistakenness_confidence", "label_issue_score", "margin_issue_score"):
        np.testing.assert_allclose(getattr(from_probs, name), getattr(from_logits, name),
                                   rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(from_probs.predicted_class, from_logits.predicted_class)


def test_zeros_and_one_hot_rows_are_exact():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.25, 0.25, 0.5]])
    batch = score_probabilities(probs, np.array([1, 2, 2]))
    np.testing.assert_array_equal(batch.hardness[0], 0.0)
    assert batch.hardness[1] == pytest.approx(np.log(2), abs=1e-15)
    np.testing.assert_array_equal(batch.label_issue_score, [1.0, 0.5, 0.5])
    np.testing.assert_array_equal(batch.margin_issue_score, [1.0, 0.5, 0.375])
    np.testing.assert_array_equal(batch.predicted_class, [0, 1, 2])  # ties: lowest index
    np.testing.assert_array_equal(batch.mistakenness[0], 1.0)  # sure and disagreeing


def test_looks_like_probabilities():
    p = np.array([[0.2, 0.8], [1.0, 0.0]])
    assert looks_like_probabilities(p)
    assert looks_like_probabilities(p.astype(np.float32))
    off = p.copy()
    off[1, 0] = 1.0 - 2 * PROBABILITY_SUM_TOLERANCE
    assert not looks_like_probabilities(off)
    assert not looks_like_probabilities(np.array([[1.5, -0.5], [0.5, 0.5]]))
    assert not looks_like_probabilities(np.zeros((0, 3)))  # nothing to judge
    assert not looks_like_probabilities(np.array([[0, 1], [1, 0]]))  # integers: not floats
    assert not looks_like_probabilities(np.array([0.5, 0.5]))  # not [N, C]
