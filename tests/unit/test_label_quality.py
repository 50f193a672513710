"""The label-quality rankings (hardscore_client.label_quality) against cleanlab 2.9's
``rank.get_label_quality_scores`` on the same probabilities: every method, with and without
``adjust_pred_probs``, within 1e-12."""

from __future__ import annotations

import csv
import re
import warnings

import numpy as np
import pytest

from hardscore_client.label_quality import DEFAULT_METHOD, METHODS, label_quality_scores

rank = pytest.importorskip("cleanlab.rank")
quality_utils = pytest.importorskip("cleanlab.internal.label_quality_utils")


def cleanlab_quality(probs: np.ndarray, labels: np.ndarray, method: str, adjust: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if adjust and method == "confidence_weighted_entropy":
            # cleanlab's public function refuses this pair; its own two steps, composed:
            adjusted = quality_utils._subtract_confident_thresholds(labels, probs)
            return rank.get_confidence_weighted_entropy_for_each_label(labels, adjusted)
        return rank.get_label_quality_scores(labels, probs, method=method,
                                             adjust_pred_probs=adjust)


def synthetic(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced classes, noisy labels, a model's probabilities with zeros and near-ties."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(k, 400))
    prior = rng.dirichlet(np.full(k, 0.7))
    truth = rng.choice(k, size=n, p=prior)
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, k, size=n), truth)
    logits = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[truth] * rng.random((n, 1))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs[rng.random((n, k)) < 0.1] = 0.0
    probs[np.arange(n), truth] += 1e-9
    probs /= probs.sum(axis=1, keepdims=True)
    if seed % 3 == 0:
        probs = probs.astype(np.float32).astype(np.float64)  # as float32 tables hold them
    if seed % 4 == 0:
        probs[: n // 10] = np.eye(k)[labels[: n // 10]]  # one-hot rows
    return probs, labels


@pytest.mark.parametrize("adjust", [False, True], ids=["as-is", "adjusted"])
@pytest.mark.parametrize("method", METHODS)
def test_equals_cleanlab_on_synthetic_sets(method, adjust):
    worst = 0.0
    for seed in range(30):
        probs, labels = synthetic(seed)
        ours = label_quality_scores(probs, labels, method, adjust_pred_probs=adjust)
        theirs = cleanlab_quality(probs, labels, method, adjust)
        assert ours.shape == theirs.shape and ours.dtype == np.float64
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst <= 1e-12, worst


@pytest.mark.parametrize("adjust", [False, True], ids=["as-is", "adjusted"])
@pytest.mark.parametrize("method", METHODS)
def test_equals_cleanlab_with_a_class_nobody_is_given(method, adjust):
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 3, size=50)  # class 3 has no sample: threshold 2.0
    ours = label_quality_scores(probs, labels, method, adjust_pred_probs=adjust)
    np.testing.assert_allclose(ours, cleanlab_quality(probs, labels, method, adjust),
                               rtol=0, atol=1e-12)


def test_direction_and_bad_input():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    for method in METHODS:
        q = label_quality_scores(probs, labels, method)
        assert q[0] > q[1], method  # the confident agreeing label ranks as better
        assert ((q >= 0) & (q <= 1)).all()
    with pytest.raises(ValueError, match="unknown method 'entropy'"):
        label_quality_scores(probs, labels, "entropy")
    with pytest.raises(ValueError, match=r"labels must be class indices 0\.\.1"):
        label_quality_scores(probs, np.array([0, 2, 1]))
    assert label_quality_scores(np.zeros((0, 3)), np.zeros(0, dtype=int)).shape == (0,)


# -- in the data-set workflow: analyse(), select, label-issues ---------------------------------


def noisy_table(tmp_path):
    """A score-dir-like CSV table: 600 labelled rows of 4 imbalanced classes with 15% of the
    labels flipped, out-of-sample-like probabilities, and 20 unlabelled rows."""
    from hardscore_client.tables import write_table

    rng = np.random.default_rng(11)
    n, k = 620, 4
    truth = rng.choice(k, size=n, p=[0.5, 0.3, 0.15, 0.05])
    labels = np.where(rng.random(n) < 0.15, rng.integers(0, k, size=n), truth)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["ant", "bee", "cat", "dog"]
    given = np.array([names[y] for y in labels], dtype=object)
    given[600:] = ""
    columns = {
        "path": np.array([f"/data/{i:04d}.png" for i in range(n)], dtype=object),
        "label": given,
        "prediction": np.array([names[c] for c in probs.argmax(axis=1)], dtype=object),
        "hardness": -(probs * np.log(probs)).sum(axis=1),
        "label_issue_score": np.where(given != "", 1.0 - probs[np.arange(n), labels], np.nan),
        **{f"p_{c}": probs[:, j] for j, c in enumerate(names)},
    }
    path = tmp_path / "scores.csv"
    write_table(path, columns)
    return path, probs[:600], labels[:600]


@pytest.mark.parametrize("adjust", [False, True], ids=["as-is", "adjusted"])
@pytest.mark.parametrize("method", METHODS)
def test_workflow_orders_label_issues_like_cleanlab(tmp_path, method, adjust, capsys):
    import json

    from hardscore_client import cli
    from hardscore_client.analysis import ScoreTable, analyse
    from hardscore_client.selection import select

    path, probs, labels = noisy_table(tmp_path)
    analysis = analyse(ScoreTable.load(path), method, adjust)
    quality = analysis.label_quality()
    assert np.isnan(quality[600:]).all()
    np.testing.assert_allclose(quality[:600], cleanlab_quality(probs, labels, method, adjust),
                               rtol=0, atol=1e-12)
    flagged = analysis.flagged[:600]
    assert flagged.sum() > 20
    rows = analysis.issue_rows
    in_order = np.argsort(quality[:600][flagged], kind="stable")
    np.testing.assert_array_equal(rows, np.flatnonzero(flagged)[in_order])
    if not (adjust and method == "confidence_weighted_entropy"):  # cleanlab refuses that one
        expected = rank.order_label_issues(flagged, labels, probs, rank_by=method,
                                           rank_by_kwargs={"adjust_pred_probs": adjust})
        np.testing.assert_array_equal(rows, expected)
    queue = select(analysis, 200, "mistakes")
    n_flagged = int(flagged.sum())
    np.testing.assert_array_equal(queue[:n_flagged], rows)
    assert (np.diff(quality[queue[n_flagged:]]) >= 0).all()  # then the others, lowest first

    flags = ["--method", method] + (["--adjust-pred-probs"] if adjust else [])
    assert cli.main(["label-issues", str(path), "--json", *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ranking"] == analysis.ranking
    assert summary["flagged_paths"] == [f"/data/{i:04d}.png" for i in rows]
    out = tmp_path / "queue"
    assert cli.main(["select", str(path), "--budget", "30", "--strategy", "mistakes",
                     "--out", str(out), "--label-studio-json", *flags]) == 0
    records = json.loads(out.with_suffix(".json").read_text())
    assert [r["data"]["path"] for r in records] == [f"/data/{i:04d}.png" for i in queue[:30]]
    assert records[0]["data"]["ranking"] == analysis.ranking
    assert [r["data"]["label_quality"] for r in records] == quality[queue[:30]].tolist()
    with out.with_suffix(".csv").open() as f:  # the CSV too, at full precision
        written = [float(r["label_quality"]) for r in csv.DictReader(f)]
    assert written == quality[queue[:30]].tolist()

    # the report's "most likely label mistakes" galleries follow the same ranking
    report = tmp_path / "report"
    assert cli.main(["report", str(path), "--out", str(report), "--mistakes-per-class", "3",
                     *flags]) == 0
    page = (report / "index.html").read_text()
    mistakes = page[page.index("Most likely label mistakes"):page.index("Hardest samples")]
    assert analysis.ranking in mistakes if (method, adjust) != (DEFAULT_METHOD, False) else (
        "label_issue_score (self-confidence)" in mistakes)
    titles = re.findall(r'<figure class="card[^"]*" title="([^"]+)"', mistakes)
    given = np.asarray(analysis.table.labels)
    expected = [f"/data/{i:04d}.png" for k in range(4)
                for i in [int(r) for r in rows if given[r] == k][:3]]
    assert titles == expected


def test_a_ranking_without_probabilities_is_refused(tmp_path):
    from hardscore_client import cli
    from hardscore_client.tables import write_table

    path = tmp_path / "s.csv"
    write_table(path, {"id": np.array(["a", "b"], dtype=object),
                       "given_label": np.array([0, 1]), "label_issue_score": np.array([0.1, 0.9])})
    with pytest.raises(SystemExit, match="--method normalized_margin needs p_<class>"):
        cli.main(["select", str(path), "--budget", "1", "--strategy", "mistakes",
                  "--method", "normalized_margin"])
    assert cli.main(["select", str(path), "--budget", "1", "--strategy", "mistakes",
                     "--out", str(tmp_path / "q")]) == 0  # the default needs none
