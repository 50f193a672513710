"""The report's collection-verdict sections (``hardscore report`` on a table with the columns of
``hardscore verdicts``, hardscore_client.verdicts.COLUMNS): duplicate pairs side by side, the
outliers, hard-but-clean counts and a 2-D map of the collection coloured by verdict.

Everything is read from the table's columns; the map also needs the embeddings (an array in the
table's row order, NaN rows for samples without one), projected to 2-D by PCA (numpy SVD of the
centred rows). matplotlib is imported only inside the function that draws the map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.analysis import Analysis
from hardscore_client.diversity import hard_candidates
from hardscore_client.verdicts import COLUMNS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

HARD_FRACTION = 0.1
"""The share of rows, hardest first, that the report calls *hard*."""
MAP_POINTS = 50_000
"""At most this many rows are drawn on the map (an even sample of the rest)."""

CATEGORIES: tuple[tuple[str, str], ...] = (
    ("clean", "#9aa3b2"),
    ("hard", "#e69f00"),
    ("likely mislabelled", "#0072b2"),
    ("outlier", "#d55e00"),
    ("duplicate", "#8e44ad"),
)
"""The map's colours, in drawing order; a row takes the last category it is in (a duplicate
that is also hard is drawn as a duplicate)."""

CSS = """
.pairs { display: flex; flex-wrap: wrap; gap: 14px; }
.pair { display: flex; gap: 4px; align-items: stretch; background: #fff; padding: 6px;
        border: 1px solid var(--line); border-radius: 8px; }
.pair.leak { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
.pair .link { display: flex; flex-direction: column; justify-content: center; width: 74px;
        text-align: center; font-size: 11px; color: var(--muted); }
.pair .link b { font-size: 12px; color: var(--fg); }
.leakmark { display: inline-block; background: var(--bad); color: #fff; border-radius: 4px;
        padding: 0 5px; font-weight: 700; font-size: 11px; margin-top: 3px; }
.card.outlier { border-color: #d55e00; box-shadow: inset 0 0 0 1px #d55e00; }
.card .tag { font-weight: 600; }
"""


def has_verdicts(analysis: Analysis) -> bool:
    """Whether the table carries any collection-verdict column."""
    return any(name in analysis.table.columns for name in COLUMNS)


def _rows_of(values: FloatArray) -> IntArray:
    """A row-index column (-1 = none) as int64, NaN read as -1."""
    return np.where(np.isfinite(values), values, -1).astype(np.int64)


@dataclass(frozen=True)
class VerdictRows:
    """The table's verdicts as the report reads them (absent columns: nothing flagged)."""

    near_of: IntArray
    near_distance: FloatArray
    exact_of: IntArray
    leak: BoolArray
    outlier_score: FloatArray
    is_outlier: BoolArray
    mislabelled: BoolArray
    hard: BoolArray
    hard_clean: BoolArray

    @property
    def duplicate(self) -> BoolArray:
        return np.asarray((self.near_of >= 0) | (self.exact_of >= 0))


def verdict_rows(analysis: Analysis, hard_fraction: float = HARD_FRACTION) -> VerdictRows:
    t = analysis.table
    n = len(t)
    near_of = _rows_of(t.score("near_duplicate_of"))
    exact_of = _rows_of(t.score("exact_duplicate_of"))
    near_of[(near_of >= n) | (near_of == np.arange(n))] = -1
    exact_of[(exact_of >= n) | (exact_of == np.arange(n))] = -1
    leak = np.nan_to_num(t.score("leak")) > 0
    is_outlier = np.nan_to_num(t.score("is_outlier")) > 0
    knn_issue = np.nan_to_num(t.score("is_knn_label_issue")) > 0
    hardness = t.score("hardness")
    if not np.isfinite(hardness).any():
        hardness = t.score("per_sample_loss")
    everything = hard_candidates(hardness, top_fraction=hard_fraction) if n else np.zeros(0, bool)
    clean = (hard_candidates(hardness, top_fraction=hard_fraction, is_outlier=is_outlier,
                             duplicate_of=near_of, exact_duplicate_of=exact_of)
             if n else np.zeros(0, bool))
    return VerdictRows(near_of, t.score("near_duplicate_distance"), exact_of, leak,
                       t.score("outlier_score"), is_outlier, knn_issue | analysis.flagged,
                       everything, clean)


def duplicate_pairs(v: VerdictRows) -> list[tuple[int, int, str]]:
    """(duplicate row, kept row, "exact" or "near"): leaks first, then exact pairs, then near
    ones by distance (closest first); a row that is both shows once, as exact."""
    exact = np.flatnonzero(v.exact_of >= 0)
    near = np.flatnonzero((v.near_of >= 0) & (v.exact_of < 0))
    dist = np.where(np.isfinite(v.near_distance), v.near_distance, np.inf)
    near = near[np.argsort(dist[near], kind="stable")]
    pairs = ([(int(i), int(v.exact_of[i]), "exact") for i in exact]
             + [(int(i), int(v.near_of[i]), "near") for i in near])
    return sorted(pairs, key=lambda p: not v.leak[p[0]])  # stable: leaks first


def outlier_rows(v: VerdictRows) -> IntArray:
    """Rows with an outlier score, lowest (most of an outlier) first."""
    rows = np.flatnonzero(np.isfinite(v.outlier_score))
    return rows[np.argsort(v.outlier_score[rows], kind="stable")]


def categories(v: VerdictRows) -> IntArray:
    """Each row's map category: an index into CATEGORIES."""
    cat = np.zeros(len(v.hard), dtype=np.int64)
    for k, mask in enumerate((v.hard, v.mislabelled, v.is_outlier, v.duplicate), start=1):
        cat[mask] = k
    return cat


def pca_2d(embeddings: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The rows projected on their first two principal axes (numpy SVD of the centred rows):
    ([N, 2] with NaN rows where the input has a non-finite value, explained variance share of
    each axis)."""
    x = np.asarray(embeddings, dtype=np.float64)
    out = np.full((len(x), 2), np.nan)
    ok = np.isfinite(x).all(axis=1) if x.ndim == 2 else np.zeros(len(x), bool)
    if ok.sum() < 2:
        return out, np.zeros(2)
    centred = x[ok] - x[ok].mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    if len(axes) < 2:
        axes = np.vstack([axes, np.zeros((2 - len(axes), x.shape[1]))])
    out[ok] = centred @ axes.T
    var = s ** 2
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return out, np.pad(share, (0, 2 - len(share)))


def draw_map(v: VerdictRows, points: FloatArray, share: FloatArray, target: Path) -> dict[str, int]:
    """Draws the map PNG; returns the rows per category drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cat = categories(v)
    ok = np.flatnonzero(np.isfinite(points).all(axis=1))
    if len(ok) > MAP_POINTS:
        ok = ok[np.linspace(0, len(ok) - 1, MAP_POINTS).astype(np.int64)]
    fig, ax = plt.subplots(figsize=(7.0, 5.6), dpi=110)
    counts: dict[str, int] = {}
    size = 6 if len(ok) > 5000 else 14
    for k, (name, colour) in enumerate(CATEGORIES):
        rows = ok[cat[ok] == k]
        counts[name] = len(rows)
        ax.scatter(points[rows, 0], points[rows, 1], s=size if k else size * 0.7, c=colour,
                   alpha=0.55 if k == 0 else 0.9, linewidths=0,
                   label=f"{name} ({len(rows):,})")
    ax.legend(frameon=False, fontsize=8, loc="best", markerscale=1.6)
    ax.set_xlabel(f"PC 1 ({100 * share[0]:.1f}% of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * share[1]:.1f}% of the variance)")
    ax.set_title("The collection: embeddings, PCA to 2-D, coloured by verdict", fontsize=11)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return counts


Card = Callable[[int, str, str], str]
"""card(row, extra caption html, extra css classes) -> the html of one figure."""


def _split(analysis: Analysis, row: int) -> str:
    col = analysis.table.columns.get("split")
    return "" if col is None else str(col[row] or "")


def sections(analysis: Analysis, card: Card, *, esc: Callable[[object], str],
             plots: Path, embeddings: npt.ArrayLike | None, pairs_shown: int,
             outliers_shown: int) -> list[str]:
    """The html of the verdict sections (empty when the table has no verdict column)."""
    if not has_verdicts(analysis):
        return []
    v = verdict_rows(analysis)
    n = len(analysis.table)
    parts = ['<h2 id="verdicts">Collection verdicts</h2><p class="note">Scores of each sample '
             "within this collection, from its embeddings (<code>hardscore verdicts</code>; "
             "columns and formulas in docs/collection-verdicts.md).</p>"]

    # hard but clean vs hard and odd
    hard = int(v.hard.sum())
    odd = int((v.hard & (v.is_outlier | v.duplicate)).sum())
    wrong = int((v.hard & v.mislabelled).sum())
    stats = [("hard", hard), ("hard but clean", int(v.hard_clean.sum())),
             ("hard and outlier or duplicate", odd), ("hard and likely mislabelled", wrong),
             ("outliers", int(v.is_outlier.sum())), ("duplicates", int(v.duplicate.sum())),
             ("rows in a leak across splits", int(v.leak.sum()))]
    cards = "".join(f'<div class="stat" data-count="{esc(k)}"><b>{c:,}</b><span>{esc(k)}'
                    "</span></div>" for k, c in stats)
    parts.append(f'<div class="cards" id="verdict-counts">{cards}</div>')
    parts.append(f'<p class="note"><b>Hard</b>: the {100 * HARD_FRACTION:g}% hardest rows '
                 "(hardness, else per-sample loss). <b>Hard but clean</b>: of those, the ones "
                 "that are neither an outlier nor a duplicate of a kept row (what "
                 "<code>hard_candidates</code> keeps): hard for the model, not odd in the "
                 "collection. <b>Likely mislabelled</b>: flagged by the kNN label check or by "
                 "confident learning.</p>")

    # the map
    parts.append("<h3>The collection in 2-D</h3>")
    if embeddings is None:
        parts.append('<p class="note" id="verdict-map-missing">No embeddings: the map needs '
                     "the table's embeddings (<code>score-dir --embeddings</code>, or "
                     "<code>report --embeddings SRC</code>).</p>")
    else:
        points, share = pca_2d(embeddings)
        if len(points) != n:
            raise ValueError(f"{len(points)} embedding rows for a table of {n} rows")
        drawn = int(np.isfinite(points).all(axis=1).sum())
        if drawn < 2:
            parts.append('<p class="note" id="verdict-map-missing">Too few rows with an '
                         "embedding to draw the map.</p>")
        else:
            draw_map(v, points, share, plots / "verdict_map.png")
            parts.append(f'<p class="note">{drawn:,} rows with an embedding, projected on '
                         "their first two principal axes; each point coloured by its verdict "
                         "(a row in several categories takes the last in the legend).</p>")
            parts.append('<div class="plots"><img id="verdict-map" src="plots/verdict_map.png" '
                         'alt="2-D map of the collection coloured by verdict"></div>')

    # duplicate pairs
    pairs = duplicate_pairs(v)
    parts.append(f"<h3>Duplicate pairs</h3><p class=\"note\">{len(pairs):,} duplicates, each "
                 "beside the row kept for it: exact (the same file content) and near (cosine "
                 "distance of the centred embeddings under the threshold), leaks across splits "
                 f"first, then exact, then near ones closest first; at most {pairs_shown} "
                 "shown.</p>")
    items = []
    for dup, kept, kind in pairs[:pairs_shown]:
        leak = bool(v.leak[dup])
        split_a, split_b = _split(analysis, dup), _split(analysis, kept)
        distance = "0" if kind == "exact" else f"{v.near_distance[dup]:.4f}"
        mark = (f'<span class="leakmark" title="{esc(split_a)} / {esc(split_b)}">leak</span>'
                if leak else "")
        where = (f"<br>{esc(split_a)} ↔ {esc(split_b)}" if split_a or split_b else "")
        link = (f'<div class="link"><b>{esc(kind)}</b>distance {esc(distance)}{where}'
                f"{mark}</div>")
        cls = "pair leak" if leak else "pair"
        items.append(f'<div class="{cls}" data-row="{dup}" data-kept="{kept}" '
                     f'data-kind="{esc(kind)}">'
                     f'{card(dup, "<span class=tag>duplicate</span>", "")}{link}'
                     f'{card(kept, "<span class=tag>kept</span>", "")}</div>')
    parts.append(f'<div class="pairs" id="duplicate-pairs">{"".join(items)}</div>'
                 if items else '<p class="note">No duplicate.</p>')

    # outliers
    rows = outlier_rows(v)
    if len(rows):
        parts.append(f"<h3>Outliers</h3><p class=\"note\">The {min(outliers_shown, len(rows))} "
                     "rows farthest from their neighbours, lowest outlier score first; "
                     f"flagged as outliers: {int(v.is_outlier.sum()):,} (orange border)."
                     "</p>")
        figs = []
        for i in rows[:outliers_shown].tolist():
            flag = bool(v.is_outlier[i])
            extra = (f'outlier {v.outlier_score[i]:.3f}'
                     + (" <span class=tag>flagged</span>" if flag else ""))
            figs.append(card(i, extra, "outlier" if flag else ""))
        parts.append(f'<div class="gallery" id="outliers">{"".join(figs)}</div>')
    return parts


def default_embeddings(table: Path) -> Path | None:
    """The embedding store for the report of ``table``: the table's own
    (``TABLE.embeddings/``), else, for a verdicts table (``scores.verdicts.parquet``), that of
    the table it came from (collection.find_store); None when there is none."""
    from hardscore_client.collection import find_store

    return find_store(table)


def report_embeddings(analysis: Analysis, table: Path,
                      source: Path | None) -> npt.NDArray[np.float32] | None:
    """The embeddings the report's map draws, in the table's row order: from ``source`` (a
    store folder, .npy or .npz: embedding_store.aligned), else ``default_embeddings(table)``;
    None when the table has no verdict column or no embeddings are found."""
    from hardscore_client.embedding_store import aligned

    if not has_verdicts(analysis):
        return None
    where = source if source is not None else default_embeddings(table)
    if where is None:
        return None
    values, _missing = aligned(analysis.table.paths, where)
    return values
