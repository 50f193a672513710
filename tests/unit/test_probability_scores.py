"""Scores from predicted probabilities (score_probabilities), the probabilities checks shared by
the server and the client (hardscore_wire.scores), and the client's renormalisation of
low-precision probabilities (hardscore_client.probabilities)."""

from __future__ import annotations

import numpy as np
import pytest

from hardscore_client.errors import InputError
from hardscore_client.probabilities import (
    ProbabilitiesRenormalisedWarning,
    checked_probabilities,
    prepare_probabilities,
)
from hardscore_server.pipeline.scores import score_logits, score_probabilities, softmax
from hardscore_wire.scores import (
    PROBABILITY_SUM_TOLERANCE,
    ROUNDING_SUM_LIMIT,
    looks_like_probabilities,
    probabilities_problem,
    rounding_sum_tolerance,
)


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


def drifting_float16(n: int, k: int, seed: int, drift: float = 0.014) -> np.ndarray:
    """Softmax rows scaled by 1 +- up to ``drift`` (capped at 1) and stored as float16: rows
    off the sum as far as the published float16 CIFAR-10 probabilities are (1.4e-2)."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(scale=3.0, size=(n, k)))
    p = np.minimum(p * (1.0 + rng.uniform(-drift, drift, size=(n, 1))), 1.0)
    return p.astype(np.float16)


def test_the_rounding_tolerance_of_each_dtype():
    eps16, eps32 = 2.0**-10, 2.0**-23
    assert rounding_sum_tolerance(np.float16, 10) == 24 * eps16 == 0.0234375
    assert rounding_sum_tolerance(np.float16, 2) == 8 * eps16
    assert rounding_sum_tolerance(np.float16, 23) == 50 * eps16
    assert rounding_sum_tolerance(np.float16, 24) == ROUNDING_SUM_LIMIT == 0.05
    assert rounding_sum_tolerance(np.float32, 10) == PROBABILITY_SUM_TOLERANCE
    assert rounding_sum_tolerance(np.float32, 4192) == PROBABILITY_SUM_TOLERANCE
    assert rounding_sum_tolerance(np.float32, 100_000) == 2 * 100_002 * eps32
    assert rounding_sum_tolerance(np.float64, 10**6) == PROBABILITY_SUM_TOLERANCE
    assert rounding_sum_tolerance(np.int64, 10) == PROBABILITY_SUM_TOLERANCE


def test_the_float16_tolerance_covers_a_softmax_computed_in_float16():
    """Exponentials, a class-by-class sum and the division, each rounded to float16: the rows
    stay within the first-order bound, and the tolerance is four times it (0.05 at most)."""
    rng = np.random.default_rng(0)
    for k in (2, 10, 20, 100):
        x = rng.normal(scale=3.0, size=(20_000, k)).astype(np.float16)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        total = np.zeros((len(x), 1), dtype=np.float16)
        for j in range(k):
            total = (total + e[:, j:j + 1]).astype(np.float16)
        p = (e / total).astype(np.float16)
        off = np.abs(p.sum(axis=1, dtype=np.float64) - 1.0).max()
        first_order = (k + 2) * 2.0**-10 / 2
        assert off <= first_order, k
        assert rounding_sum_tolerance(np.float16, k) == min(4 * first_order, ROUNDING_SUM_LIMIT)


def test_float16_probabilities_look_like_probabilities_within_their_rounding():
    p16 = drifting_float16(500, 10, seed=1)
    off = np.abs(p16.sum(axis=1, dtype=np.float64) - 1.0).max()
    assert PROBABILITY_SUM_TOLERANCE < off < rounding_sum_tolerance(np.float16, 10)
    assert looks_like_probabilities(p16)
    assert not looks_like_probabilities(p16.astype(np.float64))  # float64 is held to 1e-3


def test_float16_probabilities_are_renormalised_in_float64_with_a_warning():
    p16 = drifting_float16(500, 10, seed=2)
    sums = p16.sum(axis=1, dtype=np.float64)
    sent, renormalised = prepare_probabilities(p16)
    assert sent.dtype == np.float64
    np.testing.assert_array_equal(sent, p16.astype(np.float64) / sums[:, None])
    np.testing.assert_allclose(sent.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert renormalised is not None
    off = np.abs(sums - 1.0)
    assert (renormalised.rows, renormalised.rows_off) == (500, int((off > 1e-3).sum()))
    assert renormalised.max_off == off.max()
    assert renormalised.message == (
        f"float16 probabilities of 10 classes: {renormalised.rows_off} of 500 rows sum to 1 "
        f"only within {off.max():.3g} (largest |row sum - 1|; the server takes 0.001, float16 "
        "rounding explains up to 0.0234): every row was divided by its sum in float64 before "
        "scoring")
    with pytest.warns(ProbabilitiesRenormalisedWarning) as caught:
        checked_probabilities(p16)
    assert len(caught) == 1 and str(caught[0].message) == renormalised.message

    exact = drifting_float16(50, 10, seed=3, drift=0.0)  # within 1e-3: sent as given
    off = np.abs(exact.sum(axis=1, dtype=np.float64) - 1.0).max()
    assert 0 < off <= PROBABILITY_SUM_TOLERANCE
    sent, renormalised = prepare_probabilities(exact)
    assert sent is exact and renormalised is None


def test_rows_off_more_than_rounding_explains_are_refused_with_the_fix():
    p16 = drifting_float16(20, 10, seed=4)
    p16[7] = (p16[7] * 0.9).astype(np.float16)
    with pytest.raises(InputError, match=r"^probabilities row 7 sums to 0\.9\d+, expected 1 "
                                         r"within 0\.0234: if these are probabilities, divide "
                                         r"each row by its sum; otherwise check where they "
                                         r"came from$"):
        prepare_probabilities(p16)
    p64 = softmax(np.random.default_rng(5).normal(size=(20, 10)))
    p64[3] *= 1.005
    with pytest.raises(InputError, match=r"^probabilities row 3 sums to 1\.005, expected 1 "
                                         r"within 0\.001: "):
        prepare_probabilities(p64)


def test_what_is_wrong_with_an_array_that_is_not_probabilities():
    logits = np.array([[0.2, 0.8], [2.5, -1.0]])
    assert probabilities_problem(logits, 1e-3, as_logits="send them as logits") == (
        "probabilities row 1 has a value outside [0, 1] (2.5 in class 0): these look like "
        "logits or log-probabilities: send them as logits")
    rounded = np.array([[0.5, 0.5], [1.0000001, 0.0]], dtype=np.float32)
    assert probabilities_problem(rounded, 1e-3) == (
        "probabilities row 1 has a value outside [0, 1] (1.00000012 in class 0): a rounding "
        "error? clip the values to [0, 1] and divide each row by its sum")
    assert probabilities_problem(np.array([[0.2, 0.8]]), 1e-3) is None
