"""Confident learning in the client (hardscore_client.label_issues) against cleanlab 2.9.

Same inputs to both: the flagged set of ``cleanlab.filter.find_label_issues`` (default
``prune_by_noise_rate``), the confident joint (raw and calibrated), the estimated joint, the
thresholds, ``num_label_issues`` and the overall label-health score must be equal.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hardscore_client.label_issues import find_label_issues, round_keeping_total

from digits_example import corrupt_labels

cleanlab_count = pytest.importorskip("cleanlab.count")
cleanlab_filter = pytest.importorskip("cleanlab.filter")
cleanlab_dataset = pytest.importorskip("cleanlab.dataset")


def assert_same_as_cleanlab(probs: np.ndarray, labels: np.ndarray) -> None:
    ours = find_label_issues(probs, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes with one sample
        flagged = cleanlab_filter.find_label_issues(labels, probs, n_jobs=1)
        raw = cleanlab_count.compute_confident_joint(labels, probs, calibrate=False)
        calibrated = cleanlab_count.compute_confident_joint(labels, probs)
        joint = cleanlab_count.estimate_joint(labels, probs)
        thresholds = cleanlab_count.get_confident_thresholds(labels, probs)
        count = cleanlab_count.num_label_issues(labels, probs)
        health = cleanlab_dataset.overall_label_health_score(labels, probs, verbose=False)
    np.testing.assert_array_equal(ours.is_issue, flagged)
    np.testing.assert_array_equal(ours.confident_joint, raw)
    np.testing.assert_array_equal(ours.calibrated_joint, calibrated)
    np.testing.assert_allclose(ours.joint, joint, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ours.thresholds, thresholds, rtol=0, atol=1e-15)
    assert ours.num_issues == count
    assert ours.health == pytest.approx(health, abs=1e-12)


@pytest.fixture(scope="module")
def digits_cv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-sample probabilities: 5-fold cross-validated logistic regression on scikit-learn's
    digits with 10% of the labels corrupted. Returns (probs, noisy labels, corrupted mask)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    noisy, flipped = corrupt_labels(np.asarray(digits.target, dtype=np.int64), 10, 0.10, 0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    probs = cross_val_predict(model, digits.data, noisy, cv=folds, method="predict_proba")
    return np.asarray(probs, dtype=np.float64), noisy, flipped


def test_digits_cross_validated_agrees_with_cleanlab(digits_cv):
    probs, noisy, _ = digits_cv
    assert_same_as_cleanlab(probs, noisy)
    # As the server sends them: float32.
    assert_same_as_cleanlab(probs.astype(np.float32), noisy)


def test_digits_finds_the_corrupted_labels(digits_cv):
    probs, noisy, flipped = digits_cv
    issues = find_label_issues(probs, noisy)
    precision = flipped[issues.is_issue].mean()
    recall = issues.is_issue[flipped].mean()
    assert precision > 0.8 and recall > 0.6, (precision, recall)
    # The estimated count is near the true number of corrupted labels (180).
    assert 0.6 * flipped.sum() < issues.num_issues < 1.4 * flipped.sum()
    table = issues.class_noise()
    assert [c.name for c in table] == [str(k) for k in range(10)]
    assert sum(c.count for c in table) == len(noisy)
    assert sum(c.flagged for c in table) == issues.is_issue.sum()
    assert sum(c.estimated_issues for c in table) == issues.calibrated_joint.sum() - np.trace(
        issues.calibrated_joint)
    assert 0.0 < issues.health < 1.0


@pytest.mark.parametrize("seed", range(40))
def test_synthetic_agrees_with_cleanlab(seed):
    """Random data sets: 2..20 classes, imbalanced, flat and peaked probabilities, up to 40%
    noise; some with a class nobody is given, or a class given once."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 21))
    n = int(rng.integers(20, 1500))
    truth = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 2.0)))
    probs = rng.dirichlet(np.full(k, rng.uniform(0.1, 2.0)), size=n)
    probs[np.arange(n), truth] += rng.uniform(0.2, 2.5)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = truth.copy()
    flip = rng.random(n) < rng.uniform(0.0, 0.4)
    labels[flip] = rng.integers(0, k, int(flip.sum()))
    if seed % 4 == 1 and k > 2:
        labels[labels == k - 1] = 0  # a class given to no sample
    if seed % 4 == 2 and k > 2:
        labels[labels == k - 1] = 0
        labels[0] = k - 1  # a class given to one sample
    if len(np.unique(labels)) < 2:
        labels[:2] = [0, 1]
    assert_same_as_cleanlab(probs, labels)


def test_round_keeping_total():
    values = np.array([1.4375, 1.4375, 20.125, 0.0])
    rounded = round_keeping_total(values)
    assert rounded.sum() == 23 and np.abs(rounded - values).max() < 1
    assert round_keeping_total(np.array([2.5, 2.5, 0.0])).sum() == 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="K >= 2"):
        find_label_issues(np.ones((3, 1)), [0, 0, 0])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        find_label_issues(np.full((2, 2), 0.5), [0, 2])
    with pytest.raises(ValueError, match="finite"):
        find_label_issues(np.array([[np.nan, 1.0]]), [0])
    empty = find_label_issues(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert empty.num_issues == 0 and empty.health == 1.0
