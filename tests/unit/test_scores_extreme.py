"""Exact or refused: every finite input and every accepted temperature gives finite scores in
their documented ranges, through both batch paths, extremes of float64 included."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hardscore_server.pipeline.scores as S

FLOAT64_MAX = float(np.finfo(np.float64).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)

extreme64 = st.sampled_from([FLOAT64_MAX, -FLOAT64_MAX, 1.7e308, -1.7e308, 5e-324, -5e-324,
                             0.0, 1.0, -1.0, 1e300, -1e300])
float64s = st.floats(allow_nan=False, allow_infinity=False) | extreme64
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from(
    [FLOAT32_MAX, -FLOAT32_MAX, 0.0])
temperatures = st.floats(min_value=5e-324, max_value=FLOAT64_MAX) | st.sampled_from(
    [5e-324, 1e-308, 1e-300, 1.0, 1e300, FLOAT64_MAX])


def logits_arrays(dtype: type, elements: st.SearchStrategy[float]) -> st.SearchStrategy[np.ndarray]:
    shapes = st.tuples(st.integers(1, 4), st.integers(2, 5))
    return hnp.arrays(dtype, shapes, elements=elements)


def check_finite_in_range(batch: S.ScoreBatch, labels: np.ndarray, n_classes: int) -> None:
    eps = 1e-12
    for name in ("confidence", "margin", "hardness", "hardness_normalized"):
        assert np.isfinite(getattr(batch, name)).all(), name
    assert (batch.confidence >= 1 / n_classes - eps).all() and (batch.confidence <= 1).all()
    assert ((batch.margin >= 0) & (batch.margin <= 1)).all()
    assert ((batch.hardness >= 0) & (batch.hardness <= math.log(n_classes) + eps)).all()
    assert ((batch.hardness_normalized >= 0) & (batch.hardness_normalized <= 1 + eps)).all()
    assert np.isfinite(batch.probabilities).all()
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    rows = np.arange(len(labels))
    # the predicted class holds the largest probability
    np.testing.assert_array_equal(batch.probabilities[rows, batch.predicted_class],
                                  batch.confidence)
    has = labels != S.NO_LABEL
    for name in ("mistakenness", "mistakenness_confidence", "label_issue_score",
                 "margin_issue_score"):
        values = getattr(batch, name)
        assert np.isfinite(values[has]).all(), name
        assert ((values[has] >= -eps) & (values[has] <= 1 + eps)).all(), name
        assert np.isnan(values[~has]).all(), name


def scores_on_both_paths(
    logits: np.ndarray, labels: np.ndarray, temperature: float
) -> tuple[S.ScoreBatch, S.ScoreBatch]:
    """(the rows scored on the row-major path, the same rows on the class-major path)."""
    n = len(logits)
    small = S.score_logits(logits, labels, temperature)
    reps = -(-S.SMALL_BATCH_ROWS // n)
    large = S.score_logits(np.tile(logits, (reps, 1)), np.tile(labels, reps), temperature)
    return small, large


@settings(max_examples=150, deadline=None)
@given(logits=logits_arrays(np.float64, float64s) | logits_arrays(np.float32, float32s),
       temperature=temperatures, data=st.data())
def test_finite_logits_give_finite_scores_for_every_temperature(logits, temperature, data):
    n, c = logits.shape
    labels = np.asarray(data.draw(st.lists(st.integers(-1, c - 1), min_size=n, max_size=n)))
    small, large = scores_on_both_paths(logits, labels, temperature)
    check_finite_in_range(small, labels, c)
    check_finite_in_range(large, np.tile(labels, len(large.hardness) // n), c)
    for name in ("confidence", "margin", "hardness", "label_issue_score"):
        np.testing.assert_allclose(getattr(large, name)[:n], getattr(small, name), rtol=0,
                                   atol=1e-12, err_msg=name)


@pytest.mark.parametrize("rows", [1, S.SMALL_BATCH_ROWS])
def test_the_reported_cases_are_exact(rows):
    # float64 logits at the ends of the range: one class holds all the probability
    logits = np.tile([[1.7e308, -1.7e308], [-FLOAT64_MAX, FLOAT64_MAX]], (rows, 1))
    batch = S.score_logits(logits, np.tile([0, 0], rows))
    assert batch.predicted_class[:2].tolist() == [0, 1]
    assert batch.confidence[:2].tolist() == [1.0, 1.0]
    assert batch.hardness[:2].tolist() == [0.0, 0.0]
    assert batch.mistakenness[:2].tolist() == [0.0, 1.0]
    assert batch.label_issue_score[:2].tolist() == [0.0, 1.0]
    # a temperature of 1e-308 sharpens any gap into certainty; equal logits stay a tie
    tiny = S.score_logits(np.tile([[1.0, 2.0], [3.0, 3.0]], (rows, 1)), temperature=1e-308)
    assert tiny.predicted_class[:2].tolist() == [1, 0]
    assert tiny.confidence[:2].tolist() == [1.0, 0.5]
    assert tiny.hardness[:2].tolist() == [0.0, math.log(2)]


def test_non_finite_logits_still_give_nan_rows_only():
    with np.errstate(all="ignore"):
        batch = S.score_logits(np.array([[np.nan, 0.0], [np.inf, 0.0], [1.0, 0.0]]))
    assert np.isnan(batch.hardness[:2]).all() and np.isnan(batch.confidence[:2]).all()
    assert np.isfinite(batch.hardness[2])
