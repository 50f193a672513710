"""hardscore_client.diversity: the hard-candidate filter, the hardness-weighted k-centre
greedy, TypiClust's typicality and selection, and ActiveLab against cleanlab 2.9."""

from __future__ import annotations

import numpy as np
import pytest

from hardscore_client import diversity as dv


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 8)) * 10
    cluster = np.repeat(np.arange(6), [60, 50, 40, 30, 20, 10])
    return centres[cluster] + rng.normal(size=(210, 8)), cluster


def test_hard_candidates_drop_outliers_and_duplicates() -> None:
    h = np.array([0.9, 0.8, 0.7, 0.6, 0.5, np.nan, 0.1])
    keep = dv.hard_candidates(h, is_outlier=[1, 0, 0, 0, 0, 0, 0],
                              duplicate_of=[-1, -1, 1, -1, -1, -1, -1], top_fraction=0.5)
    np.testing.assert_array_equal(keep, [False, True, False, False, False, False, False])
    np.testing.assert_array_equal(dv.hard_candidates(h, min_hardness=0.55,
                                                     exact_duplicate_of=[-1] * 6 + [0]),
                                  [True, True, True, True, False, False, False])
    with pytest.raises(ValueError):
        dv.hard_candidates(h, top_fraction=0)


def test_k_centre_covers_every_cluster_and_weights_hardness() -> None:
    x, cluster = blobs()
    picked = dv.k_centre_greedy(x, 6)
    assert sorted(set(cluster[picked])) == list(range(6))  # one per blob, small ones too
    assert len(set(picked.tolist())) == 6
    # with labelled rows in blobs 0-4, the first pick is in blob 5
    labelled = np.flatnonzero(cluster < 5)[::7]
    assert cluster[dv.k_centre_greedy(x, 1, labelled=labelled)[0]] == 5
    # hardness steers the pick inside a blob: the hardest row of blob 5 is picked first
    hardness = np.zeros(len(x))
    target = np.flatnonzero(cluster == 5)[3]
    hardness[target] = 1.0
    assert dv.k_centre_greedy(x, 1, labelled=labelled, hardness=hardness)[0] == target
    np.testing.assert_allclose(dv.hardness_weight([0.0, 1.0, 2.0]), [0.5, 0.75, 1.0])
    mask = cluster != 5
    assert 5 not in cluster[dv.k_centre_greedy(x, 6, candidates=mask)]


def test_typicality_is_typiclust_reference() -> None:
    x, _ = blobs(1)
    t = dv.typicality(x, k=5)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    want = 1 / (np.sort(d2, axis=1)[:, :5].mean(axis=1) + 1e-5)
    np.testing.assert_allclose(t, want, rtol=1e-9)


def test_typiclust_select_spreads_over_clusters() -> None:
    pytest.importorskip("sklearn")
    x, cluster = blobs(2)
    picks = dv.typiclust_select(x, 5)
    assert len(set(cluster[picks])) == 5 and len(set(picks.tolist())) == 5
    # the largest blob holding no labelled row comes first
    labelled = np.flatnonzero(cluster == 0)[:3]
    first = dv.typiclust_select(x, 1, labelled=labelled)
    assert cluster[first[0]] != 0


def test_activelab_equals_cleanlab_single_annotator() -> None:
    multiannotator = pytest.importorskip("cleanlab.multiannotator")
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(5), size=80)
    u = rng.dirichlet(np.ones(5), size=30)
    y = rng.integers(5, size=80)
    y[:5] = np.arange(5)  # every class labelled
    ours = dv.activelab_scores(p, y, u)
    theirs = multiannotator.get_active_learning_scores(y[:, None], p, u)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-12)
    assert dv.activelab_scores(probabilities_unlabelled=u)[0].size == 0
