"""Collection verdicts: scores of each sample *within its data set*, from embeddings (and, where
given, probabilities, labels, splits and file digests). The server scores one image at a time;
these need the whole collection, so they are computed here, in the client, in numpy (scikit-learn
and faiss, the ``collection`` extra, only inside the functions that need them).

Two families are reproduced, each from the formulas of the installed versions, read from their
code (the project never imports them; the tests compare against them):

- **FiftyOne Brain 0.25.0**: uniqueness, representativeness, near duplicates, exact duplicates,
  leaks between splits. Where Brain has a quirk, the function offers ``variant="fiftyone"``
  (the quirk reproduced to 1e-9) and a corrected default (the quirk removed): the corrected
  variant is the default because the quirks invert or blur what the score is documented to
  mean, and a user reading the column gets what its name says.
- **cleanlab 2.9.0 Datalab** (``find_issues(features=...)``): outlier, near-duplicate and the
  kNN label check, reproduced as is (no quirk to correct).

Every score is a float64 column of one value per row; docs/collection-verdicts.md lists them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .label_issues import find_label_issues
from .neighbours import (
    Neighbours,
    nearest_neighbours,
    pairwise_blocks,
    radius_pairs_after,
    unit_rows,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

VARIANTS = ("corrected", "fiftyone")
UNIQUENESS_WEIGHTS = (0.6, 0.3, 0.1)
FIFTYONE_MAX_PRECOMPUTE = 15000
"""Above this many rows Brain's sklearn index searches Euclidean distances of unit rows instead
of its precomputed cosine matrix (sqrt(2 x cosine distance))."""
REPRESENTATIVENESS_CLUSTERS = 20
REPRESENTATIVENESS_SEED = 1234
NEAR_DUPLICATE_THRESHOLD = 0.2
DATALAB_K = 10
DATALAB_OUTLIER_THRESHOLD = 0.37037
"""Datalab's outlier threshold t: flagged above Q3 + (1/t - 1) IQR of the mean kNN distance."""
DATALAB_NEAR_DUPLICATE_THRESHOLD = 0.13
DATALAB_EPSILON = 1e-6
FOCAL_GAMMA = 2.0


def _variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _embeddings(x: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or len(arr) < 1:
        raise ValueError(f"embeddings must be [N, d], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("embeddings must be finite (drop failed samples first)")
    return arr


def centred(x: npt.ArrayLike) -> np.ndarray:
    """Rows minus the column means (float64 unless float32), as Brain's sklearn index does."""
    arr = _embeddings(x)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = arr.astype(dtype, copy=True)
    arr -= arr.mean(axis=0, dtype=np.float64).astype(dtype)
    return arr


# -- FiftyOne Brain -------------------------------------------------------------------------


def uniqueness(embeddings: npt.ArrayLike, *, variant: str = "corrected",
               neighbours: Neighbours | None = None, method: str = "auto") -> FloatArray:
    """FiftyOne Brain's uniqueness. Range [0, 1]; **higher = more unique** (1 = the row farthest
    from its neighbours), relative to this data set (divided by its maximum).

    score_i = (0.6 d_a + 0.3 d_b + 0.1 d_c) / 3, then divided by the largest score, with cosine
    distances between mean-centred embeddings.

    - ``variant="corrected"`` (default): d_a, d_b, d_c are the 1st to 3rd nearest neighbours
      (self excluded): an exact duplicate pair scores low, as a uniqueness should.
    - ``variant="fiftyone"``: as Brain 0.25.0 computes it: its index already excludes self yet
      its code still drops the first column, so d_a..d_c are the **2nd to 4th** neighbours and a
      duplicate pair keeps a high score. Above 15,000 rows Brain's distances are Euclidean
      between unit rows, sqrt(2 x cosine distance): reproduced too. Data sets of 3 rows or
      fewer score 1 (both variants).

    ``neighbours``: a precomputed cosine search of the centred embeddings (k >= 3, or >= 4 for
    the fiftyone variant), else one is made with ``method``.
    """
    _variant(variant)
    x = _embeddings(embeddings)
    n = len(x)
    if n <= 3:
        return np.ones(n)
    first = 1 if variant == "fiftyone" else 0
    if neighbours is None:
        neighbours = nearest_neighbours(centred(x), first + 3, "cosine", method=method)
    dists = neighbours.distances[:, first:first + 3]
    if variant == "fiftyone" and n > FIFTYONE_MAX_PRECOMPUTE:
        dists = np.sqrt(2.0 * dists)
    score = np.mean(dists * np.asarray(UNIQUENESS_WEIGHTS), axis=1)
    top = score.max()
    return score / top if top > 0 else np.zeros(n)


def representativeness(embeddings: npt.ArrayLike, *, variant: str = "corrected",
                       clusters: int = REPRESENTATIVENESS_CLUSTERS,
                       seed: int = REPRESENTATIVENESS_SEED) -> FloatArray:
    """FiftyOne Brain's representativeness ("cluster-center"): KMeans(20, random_state=1234,
    scikit-learn's defaults) on the raw embeddings, then each row's Euclidean distance to its
    cluster centre divided by the largest distance in its cluster ('local' normalisation).
    Range [0, 1].

    - ``variant="corrected"`` (default): 1 - that ratio: **higher = more representative** (1 at
      a cluster's centre, 0 for its farthest member), as Brain documents the score. A cluster of
      one row scores 1.
    - ``variant="fiftyone"``: the ratio itself, as Brain 0.25.0 returns it (its 'local' branch is
      hard-coded and returns the distances, not the centerness): **1 = the farthest** from its
      centre. A cluster of one row is 0/0 = NaN there, and here.

    Fewer rows than clusters: min(clusters, N) clusters (Brain fails instead).
    """
    from sklearn.cluster import KMeans  # the collection extra

    _variant(variant)
    x = _embeddings(embeddings)
    fit = KMeans(n_clusters=min(clusters, len(x)), random_state=seed).fit(x)
    dist = np.linalg.norm(x - fit.cluster_centers_[fit.labels_], axis=1).astype(np.float64)
    top = np.zeros(fit.n_clusters)
    np.maximum.at(top, fit.labels_, dist)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = dist / top[fit.labels_]
    if variant == "fiftyone":
        return ratio
    return np.where(top[fit.labels_] > 0, 1.0 - ratio, 1.0)


@dataclass(frozen=True)
class NearDuplicates:
    """``representative[i]``: the kept row that duplicate i maps to (-1 for a kept row);
    ``distance[i]`` to it (NaN for a kept row); ``truncated``: rows whose radius search was cut
    at k neighbours (0 for the exact radius search)."""

    representative: IntArray
    distance: FloatArray
    threshold: float
    truncated: int

    @property
    def is_duplicate(self) -> BoolArray:
        return self.representative >= 0


def _greedy_keep(n: int, pairs: Iterable[tuple[int, IntArray]]) -> BoolArray:
    """Brain's greedy pass: in index order, a row still kept drops every later row within the
    threshold."""
    keep = np.ones(n, dtype=bool)
    for i, later in pairs:
        if keep[i] and len(later):
            keep[later] = False
    return keep


def near_duplicates(embeddings: npt.ArrayLike, *, threshold: float = NEAR_DUPLICATE_THRESHOLD,
                    variant: str = "corrected", neighbours: Neighbours | None = None,
                    ) -> NearDuplicates:
    """FiftyOne Brain's ``compute_near_duplicates(threshold=0.2)`` on precomputed embeddings.

    Rows are mean-centred; in index order, each row not yet removed removes every later row at
    cosine distance <= ``threshold``; each removed row (a duplicate) is mapped to its nearest
    kept row (its representative). Which rows are kept is the same in both variants.

    - ``variant="corrected"`` (default): the representative is the kept row at the smallest
      cosine distance between the centred embeddings, and ``distance`` is that distance, in
      [0, 2] (the scale of ``threshold``).
    - ``variant="fiftyone"``: as Brain 0.25.0 maps them: its second index holds only the kept
      rows, centred again by *their* mean and scaled to length 1, and is searched with the
      duplicate's centred embedding *unscaled*, by Euclidean distance; ``distance`` is that
      Euclidean distance (it grows with the duplicate's norm, so it is on no fixed scale).

    ``neighbours``: a cosine kNN search of the centred embeddings; when given, the radius search
    is read from it (approximate: a row with more than k rows inside the threshold loses the
    farthest, counted in ``truncated``); otherwise it is exact and blockwise (N x N x d work).
    """
    _variant(variant)
    x = centred(embeddings)
    n = len(x)
    truncated = 0
    if neighbours is None:
        keep = _greedy_keep(n, radius_pairs_after(x, threshold, "cosine"))
    else:
        inside = neighbours.distances <= threshold
        truncated = int(inside[:, -1].sum())
        rows = np.arange(n)[:, None]
        later = inside & (neighbours.indices > rows)
        keep = _greedy_keep(n, ((i, neighbours.indices[i][later[i]]) for i in range(n)))
    representative = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, np.nan)
    dups = np.flatnonzero(~keep)
    kept = np.flatnonzero(keep)
    if len(dups) and len(kept):
        if variant == "fiftyone":
            targets = unit_rows(x[kept] - x[kept].mean(axis=0))
            metric = "euclidean"
        else:
            targets = x[kept]
            metric = "cosine"
        for start, block in pairwise_blocks(x[dups], targets, metric):
            best = block.argmin(axis=1)
            rows = dups[start:start + len(block)]
            representative[rows] = kept[best]
            distance[rows] = block[np.arange(len(block)), best]
    return NearDuplicates(representative, distance, threshold, truncated)


def file_digest(path: str | Path, chunk_size: int = 2**20) -> str:
    """sha256 of a file's bytes, hex (a stable content digest, unlike Python's salted hash())."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def file_digests(paths: Sequence[str | Path]) -> list[str | None]:
    """``file_digest`` of each path; None where the file cannot be read."""
    out: list[str | None] = []
    for path in paths:
        try:
            out.append(file_digest(path))
        except OSError:
            out.append(None)
    return out


def exact_duplicates(digests: Sequence[str | None]) -> IntArray:
    """Brain's ``compute_exact_duplicates`` grouping, from content digests: for each row the
    index of the first row with the same digest when that is an earlier row, else -1 (a first
    occurrence, or no digest: None). Range -1..N-1; >= 0 = an exact copy of that row."""
    first: dict[str, int] = {}
    out = np.full(len(digests), -1, dtype=np.int64)
    for i, digest in enumerate(digests):
        if digest is None:
            continue
        j = first.setdefault(digest, i)
        if j != i:
            out[i] = j
    return out


def leaks(representative: npt.ArrayLike, splits: Sequence[str | None]) -> BoolArray:
    """Brain's ``compute_leaky_splits`` rule on a near-duplicate mapping: a duplicate whose kept
    representative is in another split is a leak, and both rows are flagged. Rows without a split
    (None) are never leaks. Two duplicates of one training image that are both in the test split
    are flagged through the training image only (test-test pairs are not leaks)."""
    rep = np.asarray(representative, dtype=np.int64)
    split = np.asarray([s if s is not None else "" for s in splits], dtype=object)
    if len(split) != len(rep):
        raise ValueError(f"{len(split)} splits for {len(rep)} rows")
    has = np.array([s is not None for s in splits], dtype=bool)
    dup = np.flatnonzero(rep >= 0)
    dup = dup[has[dup] & has[rep[dup]]]
    crossing = dup[split[dup] != split[rep[dup]]]
    flagged = np.zeros(len(rep), dtype=bool)
    flagged[crossing] = True
    flagged[rep[crossing]] = True
    return flagged


# -- cleanlab Datalab -----------------------------------------------------------------------


def datalab_metric(embeddings: npt.ArrayLike) -> str:
    """Datalab's default kNN metric: cosine when the embeddings have more than 3 columns,
    else Euclidean."""
    return "cosine" if np.asarray(embeddings).shape[1] > 3 else "euclidean"


def datalab_k(n: int, k: int | None = None) -> int:
    """Datalab's k: ``k`` or min(10, N - 1)."""
    if k is not None and k >= n:
        raise ValueError(f"k={k} must be below the number of rows N={n}")
    return k or min(DATALAB_K, n - 1)


def exact_duplicate_rows(embeddings: npt.ArrayLike) -> list[IntArray]:
    """Sets (ascending indices) of rows whose embeddings are identical, of 2 rows or more."""
    x = np.ascontiguousarray(np.asarray(embeddings) + 0.0)  # -0.0 and 0.0 alike
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(x):
        groups.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values() if len(g) > 1]


def with_exact_duplicates_first(neighbours: Neighbours, embeddings: npt.ArrayLike) -> Neighbours:
    """Datalab's correction of a kNN graph for identical rows: within a set G of identical rows,
    with m = min(|G| - 1, k), each of the first m + 1 rows lists the others of those m + 1 first
    (ascending) and each later row the first k, all at distance 0; the rest of a row's list is
    its other neighbours in their order."""
    idx = neighbours.indices.copy()
    dist = neighbours.distances.copy()
    k = neighbours.k
    for group in exact_duplicate_rows(embeddings):
        m = min(len(group) - 1, k)
        head = group[:m + 1]
        for pos, row in enumerate(group):
            if pos > m:
                idx[row], dist[row] = group[:k], 0.0
                continue
            others = np.delete(head, pos)
            outside = ~np.isin(idx[row], group)
            rest_i, rest_d = idx[row][outside][:k - m], dist[row][outside][:k - m]
            idx[row] = np.concatenate([others, rest_i])
            dist[row] = np.concatenate([np.zeros(m), rest_d])
    return Neighbours(idx, dist, neighbours.metric, neighbours.method)


def datalab_neighbours(embeddings: npt.ArrayLike, k: int | None = None, *,
                       method: str = "auto") -> Neighbours:
    """Datalab's shared kNN graph: k = min(10, N - 1), its default metric on the raw (not
    centred) embeddings, self excluded, identical rows first."""
    x = _embeddings(embeddings)
    found = nearest_neighbours(x, datalab_k(len(x), k), datalab_metric(x), method=method)
    return with_exact_duplicates_first(found, x)


@dataclass(frozen=True)
class Outliers:
    """``score`` in [0, 1], lower = more of an outlier; ``is_issue``; ``issue_threshold``: the
    mean kNN distance above which a row is flagged."""

    score: FloatArray
    is_issue: BoolArray
    issue_threshold: float


def datalab_outliers(neighbours: Neighbours,
                     threshold: float = DATALAB_OUTLIER_THRESHOLD) -> Outliers:
    """Datalab's outlier issue from its kNN graph: a = mean distance to the k neighbours;
    score = exp(-a / max(median(a), 100 eps)) (1 where a is within rounding of 0: 100 epsneg for
    cosine, sqrt(100 eps) for Euclidean), range (0, 1], **lower = more of an outlier**; flagged
    when a > Q3(a) + (1/0.37037 - 1) IQR(a) (about Q3 + 1.7 IQR)."""
    avg = neighbours.distances.mean(axis=1)
    q1, q3 = np.percentile(avg, [25, 75])
    issue_threshold = float(q3 + (1 / threshold - 1) * (q3 - q1))
    scale = max(float(np.median(avg)), 100 * np.finfo(np.float64).eps)
    score = np.exp(-avg / max(scale, DATALAB_EPSILON))
    tol = (100 * np.finfo(np.float64).epsneg if neighbours.metric == "cosine"
           else np.sqrt(100 * np.finfo(np.float64).eps))
    score[avg < tol] = 1.0
    return Outliers(score, avg > issue_threshold, issue_threshold)


@dataclass(frozen=True)
class DatalabNearDuplicates:
    """``sets[i]``: the rows near-duplicate to row i (symmetric); ``score`` in [0, 1], lower =
    closer to its nearest neighbour (0 = an exact copy); ``is_issue``: in a non-empty set."""

    sets: list[IntArray]
    score: FloatArray
    is_issue: BoolArray
    radius: float


def datalab_near_duplicates(neighbours: Neighbours,
                            threshold: float = DATALAB_NEAR_DUPLICATE_THRESHOLD,
                            ) -> DatalabNearDuplicates:
    """Datalab's near-duplicate issue: with m = max(median 1st-neighbour distance, 1e-6), row
    i's set is its kNN rows at distance < 0.13 m, made symmetric (j added to i's set when i is
    in j's); flagged when the set is not empty; score = 1 - exp(-d_1 / m) (0 where d_1 is within
    1e-8 of 0)."""
    nn = neighbours.distances[:, 0]
    median = max(float(np.median(nn)), DATALAB_EPSILON)
    radius = threshold * median
    inside = neighbours.distances < radius
    sets = [list(neighbours.indices[i][inside[i]]) for i in range(len(nn))]
    members = [set(s) for s in sets]
    for i in range(len(sets)):
        for j in list(sets[i]):
            if i not in members[j]:
                members[j].add(i)
                sets[j].append(i)
    score = 1.0 - np.exp(-nn / median)
    score[np.isclose(nn, 0)] = 0.0
    arrays = [np.asarray(s, dtype=np.int64) for s in sets]
    is_issue = np.array([len(s) > 0 for s in arrays], dtype=bool)
    return DatalabNearDuplicates(arrays, score, is_issue, radius)


def knn_label_probabilities(embeddings: npt.ArrayLike, labels: npt.ArrayLike, k: int = DATALAB_K,
                            *, classes: int | None = None, method: str = "auto") -> FloatArray:
    """Datalab's kNN label check's out-of-sample probabilities: the share of each class among
    the k nearest rows by Euclidean distance, self excluded (Datalab fits a k + 1 neighbour
    classifier with uniform weights and removes the self vote: the same numbers whenever a row
    is among its own k + 1 nearest, i.e. no k + 1 other rows are identical to it)."""
    x = _embeddings(embeddings)
    y = np.asarray(labels, dtype=np.int64)
    n_classes = classes if classes is not None else int(y.max()) + 1
    found = nearest_neighbours(x, k, "euclidean", method=method)
    probs = np.zeros((len(x), n_classes))
    np.add.at(probs, (np.repeat(np.arange(len(x)), k), y[found.indices].ravel()), 1.0 / k)
    return probs


@dataclass(frozen=True)
class KnnLabelCheck:
    """``quality``: p of the given label under the kNN probabilities, [0, 1], lower = more
    likely mislabelled; ``is_issue``: confident learning's flag on them."""

    probabilities: FloatArray
    quality: FloatArray
    is_issue: BoolArray


def knn_label_check(embeddings: npt.ArrayLike, labels: npt.ArrayLike, k: int = DATALAB_K, *,
                    classes: int | None = None, method: str = "auto") -> KnnLabelCheck:
    """Datalab's label issue from features alone: ``knn_label_probabilities``, then
    self-confidence as the quality and confident learning (label_issues.find_label_issues, which
    equals cleanlab's prune_by_noise_rate) for the flag."""
    y = np.asarray(labels, dtype=np.int64)
    probs = knn_label_probabilities(embeddings, y, k, classes=classes, method=method)
    quality = probs[np.arange(len(y)), y]
    return KnnLabelCheck(probs, quality, find_label_issues(probs, y).is_issue)


# -- from probabilities ---------------------------------------------------------------------


def _given(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or y.shape != (len(probs),):
        raise ValueError(f"probabilities [N, K] and labels [N] expected, got {probs.shape}, "
                         f"{y.shape}")
    return probs[np.arange(len(y)), y]


def per_sample_loss(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """Cross-entropy of the given label, -ln p_y (natural log). Range [0, 708.4] (p_y is
    clipped at the smallest normal float64); **higher = harder**."""
    p = _given(probabilities, labels)
    return -np.log(np.maximum(p, np.finfo(np.float64).tiny))


def focal_weight(probabilities: npt.ArrayLike, labels: npt.ArrayLike,
                 gamma: float = FOCAL_GAMMA) -> FloatArray:
    """The focal-loss modulating factor (1 - p_y)^gamma (Lin et al. 2017; gamma = 2). Range
    [0, 1]; **higher = harder** (0 for a sure right answer)."""
    return np.clip(1.0 - _given(probabilities, labels), 0.0, 1.0) ** gamma


# -- every verdict at once ------------------------------------------------------------------

COLUMNS = {
    "uniqueness": "FiftyOne uniqueness, [0, 1], higher = more unique",
    "representativeness": "FiftyOne representativeness, [0, 1], higher = more representative",
    "near_duplicate_of": "FiftyOne near duplicates: kept representative row, -1 = kept",
    "near_duplicate_distance": "distance to that representative, NaN = kept",
    "exact_duplicate_of": "first row with the same file digest, -1 = first or none",
    "leak": "FiftyOne leaky splits: 1 = a duplicate across splits, else 0",
    "outlier_score": "Datalab outlier score, (0, 1], lower = more of an outlier",
    "is_outlier": "Datalab outlier flag, 1/0",
    "near_duplicate_score": "Datalab near-duplicate score, [0, 1], lower = closer copy",
    "near_duplicate_set_size": "Datalab near-duplicate set size, 0 = none",
    "is_near_duplicate": "Datalab near-duplicate flag, 1/0",
    "knn_label_quality": "Datalab kNN label quality, [0, 1], lower = more likely mislabelled",
    "is_knn_label_issue": "Datalab kNN label issue flag, 1/0",
    "per_sample_loss": "cross-entropy -ln p_y, [0, 708.4], higher = harder",
    "focal_weight": "(1 - p_y)^gamma, [0, 1], higher = harder",
}
"""Every column ``collection_verdicts`` can return, with its range and direction."""


@dataclass(frozen=True)
class Verdicts:
    """``columns``: name -> one value per row; ``skipped``: name -> why it is missing;
    ``seconds``: name -> time it took; ``neighbours``: the kNN searches made ("fiftyone":
    cosine of the centred rows, "datalab": Datalab's graph), for reuse."""

    columns: dict[str, np.ndarray]
    skipped: dict[str, str]
    seconds: dict[str, float]
    neighbours: dict[str, Neighbours]


def collection_verdicts(embeddings: npt.ArrayLike, *, probabilities: npt.ArrayLike | None = None,
                        labels: npt.ArrayLike | None = None,
                        splits: Sequence[str | None] | None = None,
                        digests: Sequence[str | None] | None = None,
                        variant: str = "corrected", method: str = "auto",
                        near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
                        gamma: float = FOCAL_GAMMA) -> Verdicts:
    """Every verdict whose inputs are given, as the columns of ``COLUMNS`` (float64 or int64
    arrays of N values; flags as 0/1 int64). ``variant`` applies to the FiftyOne scores,
    ``method`` ("auto", "exact", "approximate") to every neighbour search. Labels are class
    indices; -1 (or ``labels`` None) means unlabelled: the label columns need every row labelled.
    """
    import time

    x = _embeddings(embeddings)
    n = len(x)
    cols: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    graphs: dict[str, Neighbours] = {}

    def timed(name: str, started: float) -> None:
        seconds[name] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    # one cosine search of the centred rows serves uniqueness and (approximate) near duplicates
    fo_graph = (nearest_neighbours(centred(x), min(DATALAB_K, n - 1), "cosine", method=method)
                if n > 4 else None)
    timed("fiftyone_neighbours", started)
    if fo_graph is not None:
        graphs["fiftyone"] = fo_graph
    started = time.perf_counter()
    cols["uniqueness"] = uniqueness(x, variant=variant, neighbours=fo_graph)
    timed("uniqueness", started)
    started = time.perf_counter()
    cols["representativeness"] = representativeness(x, variant=variant)
    timed("representativeness", started)
    started = time.perf_counter()
    exact = fo_graph is None or fo_graph.method == "exact"
    near = near_duplicates(x, threshold=near_duplicate_threshold, variant=variant,
                           neighbours=None if exact else fo_graph)
    cols["near_duplicate_of"] = near.representative
    cols["near_duplicate_distance"] = near.distance
    timed("near_duplicates", started)
    if splits is None:
        skipped["leak"] = "no splits given"
    else:
        started = time.perf_counter()
        cols["leak"] = leaks(near.representative, splits).astype(np.int64)
        timed("leaks", started)
    if digests is None:
        skipped["exact_duplicate_of"] = "no file digests given (file_digests(paths) makes them)"
    else:
        if len(digests) != n:
            raise ValueError(f"{len(digests)} digests for {n} rows")
        started = time.perf_counter()
        cols["exact_duplicate_of"] = exact_duplicates(digests)
        timed("exact_duplicates", started)

    if n < 3:
        for name in ("outlier_score", "is_outlier", "near_duplicate_score",
                     "near_duplicate_set_size", "is_near_duplicate"):
            skipped[name] = "Datalab needs at least 3 rows"
    else:
        started = time.perf_counter()
        graph = datalab_neighbours(x, method=method)
        timed("datalab_neighbours", started)
        graphs["datalab"] = graph
        started = time.perf_counter()
        out = datalab_outliers(graph)
        cols["outlier_score"], cols["is_outlier"] = out.score, out.is_issue.astype(np.int64)
        timed("outliers", started)
        started = time.perf_counter()
        dup = datalab_near_duplicates(graph)
        cols["near_duplicate_score"] = dup.score
        cols["near_duplicate_set_size"] = np.array([len(s) for s in dup.sets], dtype=np.int64)
        cols["is_near_duplicate"] = dup.is_issue.astype(np.int64)
        timed("datalab_near_duplicates", started)

    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    if y is not None and y.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got shape {y.shape}")
    labelled = y is not None and bool((y >= 0).all())
    why = "no labels given" if y is None else "some rows are unlabelled (-1)"
    if not labelled or n <= DATALAB_K + 1:
        skipped["knn_label_quality"] = skipped["is_knn_label_issue"] = (
            why if not labelled else f"the kNN label check needs more than {DATALAB_K + 1} rows")
    else:
        assert y is not None
        started = time.perf_counter()
        classes = np.asarray(probabilities).shape[1] if probabilities is not None else None
        check = knn_label_check(x, y, classes=classes, method=method)
        cols["knn_label_quality"] = check.quality
        cols["is_knn_label_issue"] = check.is_issue.astype(np.int64)
        timed("knn_label_check", started)
    if probabilities is None or not labelled:
        reason = "no probabilities given" if probabilities is None else why
        skipped["per_sample_loss"] = skipped["focal_weight"] = reason
    else:
        started = time.perf_counter()
        cols["per_sample_loss"] = per_sample_loss(probabilities, y)  # type: ignore[arg-type]
        cols["focal_weight"] = focal_weight(probabilities, y, gamma)  # type: ignore[arg-type]
        timed("loss_and_focal", started)
    return Verdicts(cols, skipped, seconds, graphs)

