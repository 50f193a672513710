"""The k nearest neighbours of every row of an embedding matrix, self excluded, nearest first.

Two ways to find them, one result (``Neighbours``):

- **exact**: blockwise numpy. A block of query rows is compared with every row by one matrix
  product, so memory stays at ``block_bytes`` (128 MiB by default) whatever N is, and the work
  is N x N x d multiply-adds. Distances are computed in float32 when the embeddings are float32
  (about 1e-7 absolute) and in float64 otherwise (about 1e-15: what the anchor-parity tests use).
- **approximate**: an HNSW graph (Malkov and Yashunin) built by faiss (``faiss-cpu``, the
  ``collection`` extra). faiss was chosen because it is maintained by a large team with
  regular releases, ships manylinux wheels for CPython 3.11 with its own BLAS (nothing to
  compile), runs on the CPU alone, and offers both HNSW and exact flat indexes behind one API;
  HNSW needs no training step and keeps a good recall on clustered 2,048-d embeddings
  (``recall_at_k`` measures it; bench/README.md has the figure for 100,000 x 2,048).

``method="auto"`` picks **exact when N x N x d <= 1e12** multiply-adds (for 2,048-d embeddings
that is N <= about 22,000; a minute or so of BLAS on two cores) and approximate above.

Metrics: ``"cosine"`` (1 - cosine similarity, in [0, 2]; a zero row is at distance 1 from every
row, as scikit-learn has it) and ``"euclidean"``. Ties at the k-th distance are broken
arbitrarily (as scikit-learn's brute force does); within the k, equal distances are in index
order.

faiss is imported only inside the functions that use it (``pip install 'hardscore[collection]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

METRICS = ("cosine", "euclidean")
METHODS = ("auto", "exact", "approximate")
EXACT_WORK_LIMIT = 1e12
"""``method="auto"`` searches exactly when N * N * d is at most this many multiply-adds."""
BLOCK_BYTES = 128 * 2**20
"""Memory of one block of the exact search's distance matrix."""
HNSW_M = 32
"""Links per node of the HNSW graph."""
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Neighbours:
    """``indices[i]`` are the k nearest rows to row i (never i), ``distances[i]`` theirs,
    ascending."""

    indices: IntArray
    distances: FloatArray
    metric: str
    method: str

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])


def _checked(x: npt.ArrayLike, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    arr = np.asarray(x)
    if arr.ndim != 2 or len(arr) < 2:
        raise ValueError(f"embeddings must be [N, d] with N >= 2, got shape {arr.shape}")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("embeddings must be finite")
    return arr


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a new array); zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return x / norms


def _prepared(x: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows as compared, their squared norms for euclidean)."""
    if metric == "cosine":
        return unit_rows(x), None
    return x, np.einsum("ij,ij->i", x, x)


def _distance_block(q: np.ndarray, x: np.ndarray, qsq: np.ndarray | None,
                    xsq: np.ndarray | None) -> np.ndarray:
    """Distances from the prepared rows ``q`` to the prepared rows ``x`` (float64)."""
    sim = (q @ x.T).astype(np.float64, copy=False)
    if qsq is None or xsq is None:
        np.subtract(1.0, sim, out=sim)
        return np.clip(sim, 0.0, 2.0, out=sim)
    sim *= -2.0
    sim += qsq[:, None]
    sim += xsq[None, :]
    np.maximum(sim, 0.0, out=sim)
    return np.sqrt(sim, out=sim)


def block_rows(n_columns: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Query rows per block so that one float64 block of distances fits ``block_bytes``."""
    return max(1, min(n_columns, block_bytes // (8 * max(1, n_columns))))


def pairwise_blocks(queries: np.ndarray, rows: np.ndarray, metric: str,
                    block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, FloatArray]]:
    """Yields (start, distances[block, len(rows)]) over the query rows, blockwise."""
    q, qsq = _prepared(queries, metric)
    x, xsq = _prepared(rows, metric)
    step = block_rows(len(x), block_bytes)
    for start in range(0, len(q), step):
        stop = min(start + step, len(q))
        yield start, _distance_block(q[start:stop], x,
                                     None if qsq is None else qsq[start:stop], xsq)


def _take_k(dist: np.ndarray, k: int) -> tuple[IntArray, FloatArray]:
    """The k smallest of each row: (columns, distances), ascending, ties in column order."""
    if k < dist.shape[1]:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(dist.shape[1]), dist.shape).copy()
    part.sort(axis=1)
    vals = np.take_along_axis(dist, part, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    return (np.take_along_axis(part, order, axis=1).astype(np.int64),
            np.take_along_axis(vals, order, axis=1))


def exact_neighbours(x: npt.ArrayLike, k: int, metric: str = "cosine", *,
                     queries: npt.ArrayLike | None = None,
                     block_bytes: int = BLOCK_BYTES) -> Neighbours:
    """Exact k nearest neighbours of every row (or of the rows ``queries``, indices into x),
    self excluded, by blockwise matrix products."""
    arr = _checked(x, metric)
    n = len(arr)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = 1..{n - 1}, got {k}")
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    prepared, sq = _prepared(arr, metric)
    step = block_rows(n, block_bytes)
    indices = np.empty((len(rows), k), dtype=np.int64)
    distances = np.empty((len(rows), k), dtype=np.float64)
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        dist = _distance_block(prepared[block], prepared,
                               None if sq is None else sq[block], sq)
        dist[np.arange(len(block)), block] = np.inf  # self excluded
        indices[start:start + len(block)], distances[start:start + len(block)] = _take_k(dist, k)
    return Neighbours(indices, distances, metric, "exact")


def approximate_neighbours(x: npt.ArrayLike, k: int, metric: str = "cosine", *,
                           m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
                           ef_search: int | None = None, queries: npt.ArrayLike | None = None,
                           ) -> Neighbours:
    """Approximate k nearest neighbours of every row (or of ``queries``, indices into x), self
    excluded, from a faiss HNSW graph (``m`` links per node; ``ef_search`` defaults to
    max(HNSW_EF_SEARCH, 2k)). Cosine searches inner products of unit rows (distance = 1 - ip);
    euclidean searches squared L2 (square-rooted here). Distances are float32-precise."""
    import faiss  # the collection extra

    arr = _checked(x, metric)
    n = len(arr)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = 1..{n - 1}, got {k}")
    data = np.ascontiguousarray(unit_rows(arr) if metric == "cosine" else arr, dtype=np.float32)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss_metric)
    index.hnsw.efConstruction = ef_construction
    index.add(data)
    index.hnsw.efSearch = max(ef_search or HNSW_EF_SEARCH, 2 * (k + 1))
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    raw, found = index.search(data[rows], k + 1)
    found = found.astype(np.int64)
    raw = raw.astype(np.float64)
    dist = 1.0 - raw if metric == "cosine" else np.sqrt(np.maximum(raw, 0.0))
    if metric == "cosine":
        np.clip(dist, 0.0, 2.0, out=dist)
    dist[found < 0] = np.inf  # fewer than k + 1 found
    dist[found == rows[:, None]] = np.inf  # self excluded (or the last one dropped)
    found[~np.isfinite(dist)] = n  # sorts last
    order = np.lexsort((found, dist), axis=1)[:, :k]
    indices = np.take_along_axis(found, order, axis=1)
    distances = np.take_along_axis(dist, order, axis=1)
    if (indices >= n).any():
        raise RuntimeError("the HNSW search found fewer than k neighbours for some rows: "
                           "raise ef_search")
    return Neighbours(indices, distances, metric, "approximate")


def exact_fits(n: int, d: int) -> bool:
    """The ``method="auto"`` rule: exact when N * N * d <= EXACT_WORK_LIMIT."""
    return float(n) * n * d <= EXACT_WORK_LIMIT


def nearest_neighbours(x: npt.ArrayLike, k: int, metric: str = "cosine", *,
                       method: str = "auto") -> Neighbours:
    """k nearest neighbours of every row, self excluded: ``method`` "exact", "approximate" or
    "auto" (exact when N * N * d <= 1e12, see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    arr = np.asarray(x)
    if method == "auto":
        method = "exact" if exact_fits(arr.shape[0], arr.shape[1] if arr.ndim == 2 else 1) \
            else "approximate"
    if method == "exact":
        return exact_neighbours(arr, k, metric)
    return approximate_neighbours(arr, k, metric)


def recall_at_k(found: IntArray, truth: IntArray) -> float:
    """Mean over rows of |found_i & truth_i| / k: the share of the true k nearest neighbours
    an approximate search returned (1 = all)."""
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape != truth.shape or found.ndim != 2:
        raise ValueError(f"shapes differ: {found.shape} vs {truth.shape}")
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size if truth.size else 1.0


def measured_recall(x: npt.ArrayLike, k: int = 10, metric: str = "cosine", *,
                    sample: int | None = 1000, seed: int = 0,
                    approximate: Neighbours | None = None) -> float:
    """recall@k of the HNSW search against the exact one, on ``sample`` random query rows
    (every row when None): the exact search costs sample x N x d only."""
    arr = np.asarray(x)
    n = len(arr)
    rows = np.arange(n) if sample is None or sample >= n else np.sort(
        np.random.default_rng(seed).choice(n, size=sample, replace=False))
    truth = exact_neighbours(arr, k, metric, queries=rows).indices
    found = (approximate.indices[rows, :k] if approximate is not None
             else approximate_neighbours(arr, k, metric, queries=rows).indices)
    return recall_at_k(found, truth)


def radius_pairs_after(x: npt.ArrayLike, radius: float, metric: str = "cosine", *,
                       block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, IntArray]]:
    """Yields (i, js) for every row i in order: the rows j > i within ``radius`` (d <= radius),
    exactly, blockwise (memory bounded by ``block_bytes`` and the pairs of one block)."""
    arr = _checked(x, metric)
    n = len(arr)
    prepared, sq = _prepared(arr, metric)
    step = block_rows(n, block_bytes)
    for start in range(0, n, step):
        stop = min(start + step, n)
        dist = _distance_block(prepared[start:stop], prepared,
                               None if sq is None else sq[start:stop], sq)
        rows, cols = np.nonzero(dist <= radius)
        keep = cols > rows + start
        rows, cols = rows[keep], cols[keep]
        bounds = np.searchsorted(rows, np.arange(stop - start + 1))
        for r in range(stop - start):
            yield start + r, cols[bounds[r]:bounds[r + 1]].astype(np.int64)
