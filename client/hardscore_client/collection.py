"""A score table's collection verdicts (``hardscore verdicts TABLE``): reads the table and its
embeddings, writes the table with the verdict columns.

The verdicts themselves are verdicts.collection_verdicts; this module finds their inputs in a
score table (score-dir's, score-images'): the embeddings (the table's store, or ``.npy`` /
``.npz`` computed elsewhere), the labels and probabilities (analysis.ScoreTable), the ``split``
column and the ``sha256`` digests (computed from the files when the table has none). Rows
without an embedding get NaN (float columns) or -1 (whole-number columns: row indices, flags)
and are counted; ``exact_duplicate_of`` is still computed for them (it needs only the digest).
Row indices in ``near_duplicate_of`` and ``exact_duplicate_of`` are rows of the table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.analysis import ScoreTable
from hardscore_client.embedding_store import STORE_SUFFIX, aligned, store_of
from hardscore_client.errors import InputError, InputNotFoundError
from hardscore_client.tables import FORMATS, Columns, check_writable, save_table
from hardscore_client.verdicts import (
    COLUMNS,
    NEAR_DUPLICATE_THRESHOLD,
    Verdicts,
    collection_verdicts,
    exact_duplicates,
    file_digests,
)

VERDICTS_INFIX = ".verdicts"
"""``scores.parquet`` -> ``scores.verdicts.parquet``."""
ROW_COLUMNS = ("near_duplicate_of", "exact_duplicate_of")
"""Verdict columns that hold a row index of the table (-1: none)."""
FloatArray32 = npt.NDArray[np.float32]


def default_out(table: Path) -> Path:
    """Where ``hardscore verdicts TABLE`` writes by default: ``.verdicts`` before the suffix."""
    return table.with_name(table.stem + VERDICTS_INFIX + table.suffix)


def original_table(table: Path) -> Path | None:
    """The table a ``.verdicts`` table was made from, when its name says so (else None)."""
    stem = table.stem
    if not stem.endswith(VERDICTS_INFIX):
        return None
    return table.with_name(stem[: -len(VERDICTS_INFIX)] + table.suffix)


def find_store(table: Path) -> Path | None:
    """The embedding store of ``table``: its own (``TABLE.embeddings``), else, for a
    ``.verdicts`` table, the store of the table it came from (any table suffix); None when
    there is none."""
    candidates = [store_of(table)]
    source = original_table(table)
    if source is not None:
        candidates += [store_of(source.with_suffix(s)) for s in (source.suffix, *FORMATS)]
    return next((c for c in candidates if c.is_dir()), None)


def no_embeddings_message(table: Path) -> str:
    return (f"{table}: no embeddings found ({store_of(table).name} does not exist): score the "
            f"images with `hardscore score-dir ... --out {table.name} --embeddings`, or pass "
            "--embeddings FILE (.npy in the table's row order, .npz with 'embedding' and "
            f"'path' or 'id', or a {STORE_SUFFIX} folder)")


def table_embeddings(table: Path, score_table: ScoreTable,
                     source: Path | None = None) -> tuple[FloatArray32, int, Path]:
    """The embeddings of the table's rows ([N, D], NaN rows where none), how many rows have
    none, and where they came from (``source``, else find_store). InputNotFoundError naming
    ``score-dir --embeddings`` when there are none."""
    where = source if source is not None else find_store(table)
    if where is None:
        raise InputNotFoundError(no_embeddings_message(table))
    values, missing = aligned(score_table.paths, where)
    if len(score_table) and (values.size == 0 or missing == len(score_table)):
        raise InputError(f"{where}: none of the {len(score_table)} rows of {table} has an "
                         "embedding there (paths or ids do not match)")
    return values, missing, where


def _texts(columns: Columns, name: str) -> list[str | None] | None:
    if name not in columns:
        return None
    values = ["" if v is None else str(v) for v in columns[name].tolist()]
    values = ["" if v == "nan" else v for v in values]
    if not any(values):
        return None
    return [v or None for v in values]


@dataclass
class TableVerdicts:
    """What ``table_verdicts`` found and computed."""

    columns: Columns
    """The table's columns, then every verdict column (table rows)."""
    verdicts: Verdicts
    """collection_verdicts' result on the rows with an embedding (their indices: ``rows``)."""
    rows: npt.NDArray[np.int64]
    without_embedding: list[str]
    """Paths (or ids) of the rows without an embedding."""
    embeddings_from: Path
    digests: str
    """"table" (its sha256 column), "computed" (from the files), or "none"."""
    splits: str
    """The split column used, or "" when none."""
    seconds: float
    threshold: float = NEAR_DUPLICATE_THRESHOLD
    """The near-duplicate threshold used (cosine distance)."""
    notes: list[str] = field(default_factory=list)


def _table_digests(columns: Columns, paths: Sequence[str],
                   notes: list[str]) -> tuple[list[str | None] | None, str]:
    given = _texts(columns, "sha256")
    if given is not None:
        return given, "table"
    existing = [p for p in paths if os.path.isfile(p)]
    if not existing:
        notes.append("no sha256 column and the paths are not local files: no exact duplicates")
        return None, "none"
    computed = file_digests(list(paths))
    unread = sum(d is None for d in computed)
    notes.append(f"no sha256 column: computed the sha256 of {len(paths) - unread} files"
                 + (f" ({unread} could not be read)" if unread else ""))
    return computed, "computed"


def _spread(values: np.ndarray, rows: npt.NDArray[np.int64], n: int) -> np.ndarray:
    """A verdict column of the embedded rows spread over the table's n rows (NaN or -1)."""
    if np.issubdtype(values.dtype, np.integer):
        out = np.full(n, -1, dtype=np.int64)
    else:
        out = np.full(n, np.nan)
    out[rows] = values
    return out


def table_verdicts(table: Path, *, embeddings: Path | None = None,
                   split_column: str | None = None, variant: str = "corrected",
                   method: str = "auto",
                   near_duplicate_threshold: float = NEAR_DUPLICATE_THRESHOLD,
                   gamma: float = 2.0) -> TableVerdicts:
    """Every collection verdict of the score table ``table`` (see the module docstring)."""
    started = time.perf_counter()
    score_table = ScoreTable.load(table)
    columns = score_table.columns
    n = len(score_table)
    values, missing, where = table_embeddings(table, score_table, embeddings)
    has = np.isfinite(values).all(axis=1) if values.size else np.zeros(n, dtype=bool)
    rows = np.flatnonzero(has).astype(np.int64)
    notes: list[str] = []
    if split_column is not None and split_column not in columns:
        raise InputError(f"{table}: no column {split_column!r} (--split-column); the table "
                         f"has {', '.join(columns)}")
    split_name = split_column or "split"
    splits = _texts(columns, split_name)
    digests, digest_source = _table_digests(columns, score_table.paths, notes)
    probs = score_table.probabilities
    labels = score_table.labels
    if probs is not None and not np.isfinite(probs[rows]).all():
        notes.append("some rows have no probabilities: no loss or focal weight")
        probs = None
    try:
        result = collection_verdicts(
            values[rows],
            probabilities=None if probs is None else probs[rows],
            labels=labels[rows] if score_table.labelled.any() else None,
            splits=None if splits is None else [splits[i] for i in rows.tolist()],
            digests=None if digests is None else [digests[i] for i in rows.tolist()],
            variant=variant, method=method,
            near_duplicate_threshold=near_duplicate_threshold, gamma=gamma)
    except ValueError as exc:  # inputs the math refuses (too few rows, bad variant...)
        raise InputError(f"{table}: {exc}") from None
    out: Columns = {k: v for k, v in columns.items() if k not in COLUMNS}
    for name in COLUMNS:
        if name not in result.columns:
            continue
        column = _spread(np.asarray(result.columns[name]), rows, n)
        if name in ROW_COLUMNS:  # rows of the embedded subset -> rows of the table
            column = np.where(column >= 0, rows[np.maximum(column, 0)], -1)
        out[name] = column
    if digests is not None:  # needs no embedding: every row gets it
        out["exact_duplicate_of"] = exact_duplicates(digests)
        result.skipped.pop("exact_duplicate_of", None)
    if splits is None:
        result.skipped["leak"] = (f"the table has no {split_name!r} column" if split_name
                                  not in columns else f"the {split_name!r} column is empty")
    without = [score_table.paths[i] for i in np.flatnonzero(~has).tolist()]
    del missing  # counted through ``has`` (NaN rows), which also catches NaN in a .npy
    return TableVerdicts(out, result, rows, without, where, digest_source,
                         split_name if splits is not None else "",
                         round(time.perf_counter() - started, 3), near_duplicate_threshold,
                         notes)


LOOSE_SHARE = 0.2
"""Above this share of rows marked near duplicates, the threshold is called too loose."""


def loose_threshold_warning(found: TableVerdicts) -> list[str]:
    """A warning line when FiftyOne's near-duplicate threshold marks more than LOOSE_SHARE of
    the rows: an absolute cosine threshold tuned for one embedding (FiftyOne's default model)
    is too loose for a tighter one (a small model's, a collection of one kind of image). It
    suggests Datalab's relative rule: 0.13 x the median nearest-neighbour distance."""
    cols, graph = found.columns, found.verdicts.neighbours.get("fiftyone")
    if "near_duplicate_of" not in cols or not len(found.rows):
        return []
    marked = int((np.asarray(cols["near_duplicate_of"], dtype=np.int64) >= 0).sum())
    if marked <= LOOSE_SHARE * len(found.rows):
        return []
    line = (f"warning: {marked} of {len(found.rows)} rows ({marked / len(found.rows):.0%}) are "
            f"near duplicates at --near-duplicate-threshold {found.threshold:g}: too loose for "
            "these embeddings")
    if graph is not None and graph.distances.size:
        median = float(np.median(graph.distances[:, 0]))
        line += (f"; their median nearest-neighbour distance is {median:.3g}, and Datalab's "
                 f"relative rule (0.13 x that) gives --near-duplicate-threshold "
                 f"{0.13 * median:.3g}")
    return [line]


def summary_lines(found: TableVerdicts) -> list[str]:
    """The short summary ``hardscore verdicts`` prints."""
    cols = found.columns
    n = len(next(iter(cols.values()))) if cols else 0

    def flagged(name: str) -> str:
        return str(int((cols[name] == 1).sum())) if name in cols else "n/a"

    lines = [f"{n} rows, {len(found.rows)} with an embedding (from {found.embeddings_from})"]
    if "near_duplicate_of" in cols:
        reps = np.asarray(cols["near_duplicate_of"], dtype=np.int64)
        groups = len(np.unique(reps[reps >= 0]))
        near = f"{int((reps >= 0).sum())} near duplicates in {groups} groups"
    else:
        near = "near duplicates n/a"
    copies = np.asarray(cols.get("exact_duplicate_of", np.zeros(0)), dtype=np.int64)
    exact = (f"{int((copies >= 0).sum())} exact duplicates" if "exact_duplicate_of" in cols
             else "exact duplicates n/a")
    lines.append(f"outliers: {flagged('is_outlier')}; {near}; {exact}; leaks: {flagged('leak')};"
                 f" Datalab near duplicates: {flagged('is_near_duplicate')}; kNN label issues: "
                 f"{flagged('is_knn_label_issue')}")
    lines += [f"note: {note}" for note in found.notes]
    lines += loose_threshold_warning(found)
    if found.without_embedding:
        shown = ", ".join(found.without_embedding[:5])
        more = len(found.without_embedding) - 5
        lines.append(f"{len(found.without_embedding)} rows have no embedding (NaN / -1 "
                     f"verdicts): {shown}" + (f" and {more} more" if more > 0 else ""))
    for name, why in found.verdicts.skipped.items():
        lines.append(f"skipped {name}: {why}")
    total = sum(found.verdicts.seconds.values())
    lines.append(f"verdicts in {total:.2f} s ({found.seconds:.2f} s with reading)")
    return lines


def write_verdicts(table: Path, out: Path | None = None, **kwargs: object) -> tuple[Path,
                                                                                    TableVerdicts]:
    """table_verdicts, written to ``out`` (default_out(table)); returns where and what."""
    target = out or default_out(table)
    check_writable(target)
    found = table_verdicts(table, **kwargs)  # type: ignore[arg-type]
    save_table(target, found.columns)
    return target, found
