"""Selection building blocks over embeddings: which hard samples to trust, how to spread a
labelling budget, how typical a sample is, and cleanlab's ActiveLab order. Pure numpy
(scikit-learn's KMeans only inside ``typiclust_select``).

- ``hard_candidates``: hard samples that are neither outliers nor duplicates of a kept sample.
- ``k_centre_greedy``: the core-set greedy (Sener and Savarese), weighted by hardness.
- ``typicality`` / ``typiclust_select``: TypiClust (Hacohen, Dekel and Weinshall 2022).
- ``activelab_scores``: ActiveLab with one annotator per sample (cleanlab 2.9's formulas).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .neighbours import exact_neighbours, nearest_neighbours

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TYPICALITY_K = 20
TYPICALITY_EPS = 1e-5


def hard_candidates(hardness: npt.ArrayLike, *, is_outlier: npt.ArrayLike | None = None,
                    duplicate_of: npt.ArrayLike | None = None,
                    exact_duplicate_of: npt.ArrayLike | None = None,
                    top_fraction: float | None = None,
                    min_hardness: float | None = None) -> BoolArray:
    """Rows worth a look for being hard, not for being odd: hardness at least ``min_hardness``
    and in the top ``top_fraction`` (either or both; neither = every row), minus the outliers
    (``is_outlier`` true) and minus rows that duplicate a kept row (``duplicate_of`` /
    ``exact_duplicate_of`` >= 0: the kept row stands for them). NaN hardness is never a
    candidate."""
    h = np.asarray(hardness, dtype=np.float64)
    keep = np.isfinite(h)
    if min_hardness is not None:
        keep &= h >= min_hardness
    if top_fraction is not None:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        count = int(np.ceil(top_fraction * np.isfinite(h).sum()))
        order = np.argsort(np.where(np.isfinite(h), -h, np.inf), kind="stable")
        top = np.zeros(len(h), dtype=bool)
        top[order[:count]] = True
        keep &= top
    if is_outlier is not None:
        keep &= ~np.asarray(is_outlier, dtype=bool)
    for mapping in (duplicate_of, exact_duplicate_of):
        if mapping is not None:
            keep &= np.asarray(mapping) < 0
    return keep


def hardness_weight(hardness: npt.ArrayLike) -> FloatArray:
    """0.5 + 0.5 h / max(h): in [0.5, 1], 1 for the hardest row. The easiest row's reach is
    halved, never zeroed, so coverage still wins over hardness far from the selected set."""
    h = np.nan_to_num(np.asarray(hardness, dtype=np.float64), nan=0.0)
    h = np.maximum(h, 0.0)
    top = h.max() if len(h) else 0.0
    return 0.5 + 0.5 * (h / top if top > 0 else h)


def k_centre_greedy(embeddings: npt.ArrayLike, budget: int, *,
                    hardness: npt.ArrayLike | None = None,
                    labelled: npt.ArrayLike | None = None,
                    candidates: npt.ArrayLike | None = None) -> IntArray:
    """The k-centre greedy (core-set): ``budget`` rows, each the candidate maximising
    w_i x min Euclidean distance to the rows already chosen or ``labelled``, with
    w = ``hardness_weight(hardness)`` (w = 1 without hardness: the plain core-set). With no
    labelled row the first pick is the candidate maximising w x distance to the mean embedding.
    ``candidates``: a boolean mask of rows that may be picked (e.g. ``hard_candidates``).
    Cost: budget x N x d. Returns the picked rows in order."""
    x = np.asarray(embeddings)
    x = x.astype(np.float32 if x.dtype == np.float32 else np.float64, copy=False)
    n = len(x)
    w = np.ones(n) if hardness is None else hardness_weight(hardness)
    allowed = np.ones(n, dtype=bool) if candidates is None else np.asarray(candidates, bool).copy()
    seeds = np.asarray([] if labelled is None else labelled, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x).astype(np.float64)

    def dist_to(row: np.ndarray) -> FloatArray:
        d2 = sq + float(row @ row) - 2.0 * (x @ row).astype(np.float64)
        return np.sqrt(np.maximum(d2, 0.0))

    if len(seeds):
        nearest = np.full(n, np.inf)
        for s in seeds:
            np.minimum(nearest, dist_to(x[s]), out=nearest)
        allowed[seeds] = False
    else:
        nearest = dist_to(x.mean(axis=0))
    picked: list[int] = []
    for _ in range(min(budget, int(allowed.sum()))):
        gain = np.where(allowed, w * nearest, -np.inf)
        pick = int(np.argmax(gain))
        picked.append(pick)
        allowed[pick] = False
        if len(picked) == 1 and not len(seeds):
            nearest = dist_to(x[pick])
        else:
            np.minimum(nearest, dist_to(x[pick]), out=nearest)
    return np.asarray(picked, dtype=np.int64)


def typicality(embeddings: npt.ArrayLike, k: int = TYPICALITY_K, *,
               method: str = "auto") -> FloatArray:
    """TypiClust's typicality, as its reference code has it: 1 / (mean **squared** Euclidean
    distance to the k nearest rows, self excluded, + 1e-5), k = min(20, N - 1). Range
    (0, 1e5]; **higher = more typical** (a dense region)."""
    x = np.asarray(embeddings)
    k = min(k, len(x) - 1)
    found = nearest_neighbours(x, k, "euclidean", method=method)
    return 1.0 / (np.mean(found.distances ** 2, axis=1) + TYPICALITY_EPS)


def typiclust_select(embeddings: npt.ArrayLike, budget: int, *,
                     labelled: npt.ArrayLike | None = None, max_clusters: int = 500,
                     min_cluster: int = 5, seed: int = 0) -> IntArray:
    """TypiClust's selection: KMeans with min(|labelled| + budget, max_clusters) clusters;
    clusters of ``min_cluster`` rows or fewer are skipped; each pick is the most typical row
    (k = min(20, size // 2) within its cluster) of the largest cluster holding the fewest
    labelled or picked rows."""
    from sklearn.cluster import KMeans  # the collection extra

    x = np.asarray(embeddings)
    taken = np.zeros(len(x), dtype=bool)
    if labelled is not None:
        taken[np.asarray(labelled, dtype=np.int64)] = True
    n_clusters = min(int(taken.sum()) + budget, max_clusters, len(x))
    assign = KMeans(n_clusters=n_clusters, random_state=seed).fit(x).labels_
    sizes = np.bincount(assign, minlength=n_clusters)
    picks: list[int] = []
    for _ in range(budget):
        held = np.bincount(assign[taken], minlength=n_clusters)
        free = np.bincount(assign[~taken], minlength=n_clusters)
        usable = (sizes > min_cluster) & (free > 0)
        if not usable.any():
            break
        order = np.lexsort((-sizes, held))
        cluster = int(order[usable[order]][0])
        members = np.flatnonzero(assign == cluster)
        k = max(1, min(TYPICALITY_K, len(members) // 2))
        score = 1.0 / (np.mean(exact_neighbours(x[members], min(k, len(members) - 1),
                                                "euclidean").distances ** 2, axis=1)
                       + TYPICALITY_EPS)
        score[taken[members]] = -np.inf
        pick = int(members[int(np.argmax(score))])
        picks.append(pick)
        taken[pick] = True
    return np.asarray(picks, dtype=np.int64)


def activelab_scores(probabilities: npt.ArrayLike | None = None,
                     labels: npt.ArrayLike | None = None,
                     probabilities_unlabelled: npt.ArrayLike | None = None,
                     ) -> tuple[FloatArray, FloatArray]:
    """ActiveLab with one annotation per labelled sample (cleanlab 2.9's
    ``get_active_learning_scores`` in that case: model weight 1, annotator weight 1, no
    temperature scaling): labelled rows (2 q + 1/K) / 3 with q = p of the given label
    (self-confidence); unlabelled rows (max p + 1/K) / 2. Range [1/K, 1]-ish; **lower = label
    (or relabel) next**. Returns (labelled scores, unlabelled scores); an empty array for a part
    not given."""
    labelled_scores = np.zeros(0)
    unlabelled_scores = np.zeros(0)
    if probabilities is not None:
        if labels is None:
            raise ValueError("labels are needed with the labelled probabilities")
        p = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        q = p[np.arange(len(y)), y]
        labelled_scores = (2.0 * q + 1.0 / p.shape[1]) / 3.0
    if probabilities_unlabelled is not None:
        u = np.asarray(probabilities_unlabelled, dtype=np.float64)
        unlabelled_scores = (u.max(axis=1) + 1.0 / u.shape[1]) / 2.0
    return labelled_scores, unlabelled_scores
