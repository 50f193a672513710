"""Score math: FiftyOne Brain's own numbers, hand-computed edge cases, and the fast path."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hardscore_server.pipeline.scores as S

from conftest import FIXTURES

REFERENCE = FIXTURES / "fiftyone_brain_reference_1000.npz"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def test_reproduces_fiftyone_brain_hardness_and_mistakenness(reference):
    batch = S.score_logits(reference["logits"], reference["gt_idx"])
    assert np.abs(batch.hardness - reference["hardness"]).max() < 1e-12
    assert np.abs(batch.mistakenness - reference["mistakenness"]).max() < 1e-12
    assert np.abs(batch.mistakenness_confidence - reference["mistakenness_conf"]).max() < 1e-12
    assert np.array_equal(batch.predicted_class, reference["pred_idx"])
    assert np.abs(batch.confidence - reference["confidence"]).max() < 1e-12


def test_single_score_functions_give_fiftyone_numbers(reference):
    log_probs = S.log_softmax(reference["logits"])
    probs = np.exp(log_probs)
    pred = S.predicted_class(probs)
    hardness = S.hardness(log_probs)
    assert np.abs(hardness - reference["hardness"]).max() < 1e-12
    labels = reference["gt_idx"]
    assert np.abs(S.mistakenness(hardness, pred, labels) - reference["mistakenness"]).max() < 1e-12
    conf = S.confidence(probs)
    assert (
        np.abs(S.mistakenness_confidence(conf, pred, labels) - reference["mistakenness_conf"]).max()
        < 1e-12
    )


@pytest.mark.parametrize("n_rows", [1, S.SMALL_BATCH_ROWS - 1, S.SMALL_BATCH_ROWS, 257])
def test_both_batch_paths_equal_single_score_functions(n_rows):
    rng = np.random.default_rng(7)
    for n_classes in (2, 3, 10, 100, 1000):
        logits = rng.normal(scale=3, size=(n_rows, n_classes))
        labels = rng.integers(-1, n_classes, size=n_rows)
        batch = S.score_logits(logits, labels, temperature=1.7)
        assert np.isnan(batch.mistakenness[labels == -1]).all()
        log_probs = S.log_softmax(logits, 1.7)
        probs = np.exp(log_probs)
        pred = S.predicted_class(probs)
        np.testing.assert_array_equal(batch.predicted_class, pred)
        np.testing.assert_allclose(batch.hardness, S.hardness(log_probs), atol=1e-12)
        np.testing.assert_allclose(batch.hardness_normalized, S.hardness_normalized(log_probs),
                                   atol=1e-12)
        np.testing.assert_allclose(batch.confidence, S.confidence(probs), atol=1e-15)
        np.testing.assert_allclose(batch.margin, S.margin(probs), atol=1e-15)
        np.testing.assert_allclose(batch.probabilities, probs, atol=1e-15)
        np.testing.assert_allclose(batch.label_issue_score, S.label_issue_score(probs, labels),
                                   atol=1e-15)
        np.testing.assert_allclose(batch.margin_issue_score, S.margin_issue_score(probs, labels),
                                   atol=1e-15)


def test_uniform_logits_are_maximally_hard():
    batch = S.score_logits(np.zeros((1, 4)), [2])
    assert batch.hardness[0] == pytest.approx(math.log(4), abs=1e-15)
    assert batch.hardness_normalized[0] == pytest.approx(1.0, abs=1e-15)
    assert batch.confidence[0] == pytest.approx(0.25)
    assert batch.margin[0] == 0.0
    # ties go to the lowest index: class 0 predicted, label 2 disagrees (s = +1)
    assert batch.predicted_class[0] == 0
    assert batch.mistakenness[0] == pytest.approx((0.25 + 1) / 2)
    assert batch.mistakenness_confidence[0] == pytest.approx((0.25 + 1) / 2)
    assert batch.label_issue_score[0] == pytest.approx(0.75)
    # p(given) = 0.25, max other = 0.25: normalized margin 0 -> issue score 0.5
    assert batch.margin_issue_score[0] == pytest.approx(0.5)


def test_one_dominant_logit_is_easy_and_confident():
    batch = S.score_logits(np.array([[50.0, 0.0, 0.0]]), [0])
    assert batch.hardness[0] == pytest.approx(0.0, abs=1e-18)
    assert batch.confidence[0] == pytest.approx(1.0, abs=1e-15)
    assert batch.mistakenness[0] == pytest.approx(0.0, abs=1e-15)  # agrees, certain
    assert batch.label_issue_score[0] == pytest.approx(0.0, abs=1e-15)
    assert batch.margin_issue_score[0] == pytest.approx(0.0, abs=1e-15)
    wrong = S.score_logits(np.array([[50.0, 0.0, 0.0]]), [1])
    assert wrong.mistakenness[0] == pytest.approx(1.0, abs=1e-15)  # disagrees, certain
    assert wrong.label_issue_score[0] == pytest.approx(1.0, abs=1e-15)
    assert wrong.margin_issue_score[0] == pytest.approx(1.0, abs=1e-15)


def test_two_classes_hand_computed():
    # logits (0, ln 3): p = (1/4, 3/4)
    batch = S.score_logits(np.array([[0.0, math.log(3.0)]]), [0])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert batch.hardness[0] == pytest.approx(h, abs=1e-15)
    assert batch.hardness_normalized[0] == pytest.approx(h / math.log(2), abs=1e-15)
    assert batch.predicted_class[0] == 1
    assert batch.confidence[0] == pytest.approx(0.75, abs=1e-15)
    assert batch.margin[0] == pytest.approx(0.5, abs=1e-15)
    assert batch.mistakenness[0] == pytest.approx((math.exp(-h) + 1) / 2, abs=1e-15)
    assert batch.mistakenness_confidence[0] == pytest.approx((0.75 + 1) / 2, abs=1e-15)
    assert batch.label_issue_score[0] == pytest.approx(0.75, abs=1e-15)
    # normalized margin = 0.25 - 0.75 = -0.5 -> label quality 0.25 -> issue 0.75
    assert batch.margin_issue_score[0] == pytest.approx(0.75, abs=1e-15)


def test_label_equal_to_prediction_scores_below_half():
    batch = S.score_logits(np.array([[2.0, 1.0, 0.0]]), [0])
    p = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    h = -(p * np.log(p)).sum()
    assert batch.mistakenness[0] == pytest.approx((1 - math.exp(-h)) / 2, abs=1e-15)
    assert batch.mistakenness_confidence[0] == pytest.approx((1 - p[0]) / 2, abs=1e-15)
    assert batch.label_issue_score[0] == pytest.approx(1 - p[0], abs=1e-15)
    assert batch.margin_issue_score[0] == pytest.approx(1 - (p[0] - p[1] + 1) / 2, abs=1e-15)
    assert batch.mistakenness[0] < 0.5


@pytest.mark.parametrize("repeat", [1, S.SMALL_BATCH_ROWS])  # both batch paths
def test_huge_magnitudes_stay_finite_and_exact(repeat):
    logits = np.tile([[1e6, 0.0, -1e6], [1e6, 1e6, -1e6], [-1e6, -1e6, -1e6]], (repeat, 1))
    batch = S.score_logits(logits, [0, 1, 2] * repeat)
    for name in ("hardness", "confidence", "margin", "mistakenness", "label_issue_score",
                 "margin_issue_score"):
        assert np.isfinite(getattr(batch, name)).all(), name
    assert batch.hardness[0] == 0.0
    assert batch.hardness[1] == pytest.approx(math.log(2), abs=1e-15)
    assert batch.hardness[2] == pytest.approx(math.log(3), abs=1e-15)
    assert batch.predicted_class[:3].tolist() == [0, 0, 0]
    assert batch.label_issue_score[1] == pytest.approx(0.5, abs=1e-15)
    assert batch.margin_issue_score[1] == pytest.approx(0.5, abs=1e-15)


def test_temperature_divides_logits_before_every_score():
    logits = np.array([[4.0, 2.0, 0.0]])
    hot = S.score_logits(logits, [1], temperature=2.0)
    plain = S.score_logits(logits / 2.0, [1])
    for name in ("hardness", "confidence", "margin", "mistakenness", "label_issue_score",
                 "margin_issue_score", "mistakenness_confidence"):
        assert getattr(hot, name)[0] == pytest.approx(getattr(plain, name)[0], abs=1e-15)
    assert hot.hardness[0] > S.score_logits(logits, [1]).hardness[0]


def test_rows_without_label_get_nan_label_scores():
    batch = S.score_logits(np.array([[1.0, 0.0], [0.0, 1.0]]), [S.NO_LABEL, 1])
    for name in S.LABEL_SCORES:
        values = getattr(batch, name)
        assert math.isnan(values[0]), name
        assert not math.isnan(values[1]), name


def test_no_labels_means_no_label_scores():
    batch = S.score_logits(np.array([[1.0, 0.0]]))
    assert batch.given_label is None and batch.mistakenness is None


def test_empty_batch_gives_empty_scores():
    batch = S.score_logits(np.zeros((0, 5), dtype=np.float32), np.zeros(0, dtype=np.int64))
    assert batch.hardness.shape == (0,) and batch.mistakenness is not None
    assert batch.mistakenness.shape == (0,)


def test_label_issue_ranks_corrupted_labels_first(reference):
    batch = S.score_logits(reference["logits"], reference["gt_idx"])
    corrupted = reference["corrupted"]
    k = int(corrupted.sum())
    top = np.argsort(-batch.label_issue_score)[:k]
    precision = corrupted[top].mean()
    assert precision > 0.7, precision
