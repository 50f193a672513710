"""Score tables on disk: CSV, JSON Lines, or Parquet (when pyarrow is installed).

One row per sample, one column per score, plus ``row`` (input index), ``id`` when ids were
sent, ``label`` and ``prediction`` (the given and predicted class names, "" for none, as in
score-dir tables) when the class names are known, and ``p_<class>`` probability columns when
probabilities were asked for.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.errors import InputError, InputNotFoundError, MissingExtraError
from hardscore_client.messages import ScoreResult

Columns = dict[str, npt.NDArray[np.generic]]
FORMATS = (".csv", ".jsonl", ".parquet")


def class_name_column(indices: npt.ArrayLike, names: list[str]) -> npt.NDArray[np.object_]:
    """The class name of each index, "" for -1 (no class, no label) or out of range."""
    index = np.asarray(indices, dtype=np.int64)
    valid = (index >= 0) & (index < len(names))
    lookup = np.asarray([*names, ""], dtype=object)
    return np.asarray(lookup[np.where(valid, index, len(names))], dtype=object)


def result_columns(result: ScoreResult) -> Columns:
    """The columns written for ``result``, in output order: row, id, label, prediction (when
    the names are known), the scores (with the class indices), p_<class>."""
    columns: Columns = {"row": np.arange(len(result))}
    if result.ids:
        columns["id"] = np.asarray(result.ids, dtype=object)
    if result.class_names:
        if result.given_label is not None:
            columns["label"] = class_name_column(result.given_label, result.class_names)
        columns["prediction"] = class_name_column(result.predicted_class, result.class_names)
    columns.update(result.columns())
    if result.probabilities is not None:
        names = result.class_names or [str(i) for i in range(result.probabilities.shape[1])]
        for i, name in enumerate(names):
            columns[f"p_{name}"] = result.probabilities[:, i]
    return columns


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"{path}: unknown table format {suffix!r}; use one of {', '.join(FORMATS)}"
        )
    return suffix


def check_writable(path: Path) -> None:
    """Raises before any work when ``path`` cannot take a table: InputError for an unknown
    suffix, InputNotFoundError for a folder that does not exist, MissingExtraError for .parquet
    without pyarrow."""
    kind = _format(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputNotFoundError(f"{path}: no such folder {str(folder)!r} to write the table in")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; name a table file (.csv, .jsonl or .parquet)")
    if kind == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise MissingExtraError(
                "writing .parquet needs pyarrow: pip install pyarrow") from None


def _cell(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _rows(columns: Columns) -> Iterator[list[object]]:
    lists = [col.tolist() for col in columns.values()]
    return (list(row) for row in zip(*lists, strict=True))


def write_table(path: Path, columns: Columns) -> None:
    """Writes ``columns`` to ``path``; the format follows the suffix (.csv, .jsonl, .parquet)."""
    kind = _format(path)
    if kind == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError(
                "writing .parquet needs pyarrow: pip install pyarrow") from None
        pq.write_table(pa.table({k: list(v) if v.dtype == object else v
                                 for k, v in columns.items()}), path)
        return
    with path.open("w", newline="") as f:
        if kind == ".csv":
            writer = csv.writer(f)
            writer.writerow(columns.keys())
            writer.writerows(["" if c is None else c for c in map(_cell, row)]
                             for row in _rows(columns))
        else:
            keys = list(columns)
            for row in _rows(columns):
                f.write(json.dumps(dict(zip(keys, map(_cell, row), strict=True))) + "\n")



def save_table(path: Path, columns: Columns) -> None:
    """write_table, atomically: to a temporary file beside ``path``, then renamed over it (a
    reader never sees half a table, an interrupted write leaves the old one)."""
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write_table(tmp, columns)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

TEXT_COLUMNS = ("id", "path", "label", "split", "sha256", "prediction", "model",
                "model_version", "error", "error_message")
"""Columns read back as text even when every value looks like a number (class names "0".."9")."""

INT_COLUMNS = ("row", "predicted_class", "given_label")
"""Columns read back as int64; an empty cell becomes -1 (no class, no label)."""


def read_table(path: Path, keep: Callable[[str], bool] | None = None) -> Columns:
    """Reads a table written by write_table (or any CSV/JSONL/Parquet of the same columns).

    Known columns are typed by name (TEXT_COLUMNS, INT_COLUMNS, the rest float64); columns of
    other names become int64 or float64 when every value is a number, text otherwise. ``keep``
    picks the columns by name (default: all). Raises InputNotFoundError for a missing file,
    InputError for an unknown suffix.
    """
    kind = _format(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file")
    wanted = keep or (lambda _: True)
    if kind == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError(
                "reading .parquet needs pyarrow: pip install pyarrow") from None
        names = [n for n in pq.read_schema(path).names if wanted(n)]
        table = pq.read_table(path, columns=names)
        out: Columns = {}
        for name in table.column_names:
            values = table[name].to_numpy(zero_copy_only=False)  # typed already: no parsing
            known = name in TEXT_COLUMNS or name in INT_COLUMNS
            out[name] = _column(name, values.tolist()) if known else values
        return out
    if kind == ".csv":
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            raw = list(zip(*reader, strict=True)) or [() for _ in header]
        return {name: _column(name, list(values))
                for name, values in zip(header, raw, strict=True) if wanted(name)}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = [k for k in records[0] if wanted(k)] if records else []
    return {k: _column(k, [r.get(k) for r in records]) for k in keys}


def _missing(value: object) -> bool:
    return value in ("", None) or (isinstance(value, float) and math.isnan(value))


def _column(name: str, values: list[object]) -> npt.NDArray[np.generic]:
    if name in TEXT_COLUMNS:
        if all(type(v) is str for v in values):  # the usual case, without a check per value
            return np.array(values, dtype=object)
        return np.array(["" if _missing(v) else str(v) for v in values], dtype=object)
    if name in INT_COLUMNS:
        whole = _whole_numbers(values)
        if whole is not None:
            return whole
        return np.array([-1 if _missing(v) else int(float(v)) for v in values],  # type: ignore[arg-type]
                        dtype=np.int64)
    return _typed(values)


def _whole_numbers(values: list[object]) -> npt.NDArray[np.int64] | None:
    """``values`` as int64 when every one is an int or the text of one (no empty cell)."""
    if all(type(v) is int for v in values):
        return np.array(values, dtype=np.int64)
    if not all(type(v) is str and v.strip().lstrip("+-").isdigit() for v in values):
        return None
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        return None


def _typed(values: list[object]) -> npt.NDArray[np.generic]:
    """Numbers become int64/float64 arrays (empty cells NaN); anything else stays text."""
    nan = math.nan
    try:
        floats = np.array([nan if v is None or v == "" else float(v)  # type: ignore[arg-type]
                           for v in values])
    except (TypeError, ValueError):
        return np.asarray(["" if v is None else str(v) for v in values], dtype=object)
    if len(floats) and np.isfinite(floats).all() and (floats == np.round(floats)).all() and all(
        isinstance(v, int) or (isinstance(v, str) and "." not in v and "e" not in v.lower())
        for v in values
    ):
        return floats.astype(np.int64)
    return floats
