"""hardscore_client.neighbours: the exact blockwise search against a full distance matrix, the
faiss HNSW search's recall against it, the auto rule, and the radius pairs."""

from __future__ import annotations

import numpy as np
import pytest

from hardscore_client.neighbours import (
    approximate_neighbours,
    exact_fits,
    exact_neighbours,
    measured_recall,
    nearest_neighbours,
    radius_pairs_after,
    recall_at_k,
)


def clustered(n: int, d: int, seed: int = 0, dtype: type = np.float64) -> np.ndarray:
    """Rows on a low-dimensional, clustered manifold (as CNN embeddings are)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(20, 16))[rng.integers(20, size=n)] * 2 + rng.normal(size=(n, 16))
    x = np.maximum(z @ rng.normal(size=(16, d)) / 4, 0) + 0.05 * rng.normal(size=(n, d))
    return x.astype(dtype)


def full_matrix(x: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = 1 - u @ u.T
    else:
        d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    return d


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_equals_the_full_matrix_whatever_the_block(metric: str) -> None:
    x = clustered(300, 24)
    d = full_matrix(x, metric)
    want = np.sort(d, axis=1)[:, :7]
    for block_bytes in (8 * 300, 8 * 300 * 17, 2**27):  # one row, 17 rows, all at once
        found = exact_neighbours(x, 7, metric, block_bytes=block_bytes)
        assert found.method == "exact" and found.k == 7
        np.testing.assert_allclose(found.distances, want, rtol=0, atol=1e-12)
        assert not (found.indices == np.arange(300)[:, None]).any()  # self excluded
        np.testing.assert_allclose(np.take_along_axis(d, found.indices, 1), found.distances,
                                   rtol=0, atol=1e-12)
        assert (np.diff(found.distances, axis=1) >= 0).all()


def test_exact_ties_keep_index_order_and_queries_subset() -> None:
    x = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    found = exact_neighbours(x, 2, "euclidean")
    assert found.indices[0].tolist() == [1, 2] and found.distances[0].tolist() == [0.0, 0.0]
    sub = exact_neighbours(x, 2, "euclidean", queries=[3, 0])
    np.testing.assert_array_equal(sub.indices, found.indices[[3, 0]])
    with pytest.raises(ValueError, match="k must be"):
        exact_neighbours(x, 5)
    with pytest.raises(ValueError, match="metric"):
        exact_neighbours(x, 1, "manhattan")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_hnsw_recall_on_clustered_embeddings(metric: str) -> None:
    pytest.importorskip("faiss")
    x = clustered(3000, 256, dtype=np.float32)
    approx = approximate_neighbours(x, 10, metric)
    exact = exact_neighbours(x, 10, metric)
    assert approx.method == "approximate"
    assert not (approx.indices == np.arange(3000)[:, None]).any()
    assert (np.diff(approx.distances, axis=1) >= -1e-6).all()
    recall = recall_at_k(approx.indices, exact.indices)
    assert recall >= 0.98, recall
    assert measured_recall(x, 10, metric, sample=300, approximate=approx) >= 0.97
    same = approx.indices == exact.indices  # where they agree, distances agree to float32
    np.testing.assert_allclose(approx.distances[same], exact.distances[same], rtol=1e-4,
                               atol=1e-4)


def test_auto_rule_and_recall_helper() -> None:
    assert exact_fits(20000, 2048) and not exact_fits(30000, 2048)
    assert nearest_neighbours(clustered(50, 8), 3, method="auto").method == "exact"
    truth = np.array([[1, 2], [0, 2]])
    assert recall_at_k(np.array([[2, 1], [0, 3]]), truth) == 0.75
    with pytest.raises(ValueError, match="method"):
        nearest_neighbours(clustered(50, 8), 3, method="fast")


def test_radius_pairs_after_are_the_later_rows_within_the_radius() -> None:
    x = clustered(200, 16, seed=3)
    d = full_matrix(x, "cosine")
    radius = float(np.quantile(d[np.isfinite(d)], 0.02))
    got = dict(radius_pairs_after(x, radius, "cosine", block_bytes=8 * 200 * 13))
    assert sorted(got) == list(range(200))
    for i, js in got.items():
        want = np.flatnonzero(d[i] <= radius)
        np.testing.assert_array_equal(js, want[want > i])
