"""Embeddings beside a score table, and embeddings computed elsewhere.

``score-dir --embeddings`` writes each checkpoint's new rows to the folder
``<table>.embeddings/`` as one more part, ``part-00001.npz``, ``part-00002.npz``...: arrays
``path`` (text, [n]) and ``embedding`` (float32, [n, D]). Parts are only ever added (a long run
rewrites nothing it wrote before), each written to a temporary name and then renamed, and a
part is written before the table that lists its rows, so an interrupted run leaves at most
rows with an embedding and no table row, which readers ignore.

Embeddings a user computed elsewhere come as ``.npy`` ([N, D], rows in the table's order) or
``.npz`` with ``embedding`` and ``path`` (or ``id``) arrays, matched to the table by path or id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hardscore_client.errors import InputError, InputNotFoundError

FloatArray32 = npt.NDArray[np.float32]
STORE_SUFFIX = ".embeddings"
PART = re.compile(r"part-(\d{5,})\.npz")


def store_of(table: Path) -> Path:
    """The folder holding the embeddings of the score table ``table``."""
    return table.with_name(table.name + STORE_SUFFIX)


def _parts(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        match = PART.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_part(table: Path, paths: Sequence[str],
               embeddings: npt.NDArray[np.floating[Any]]) -> Path | None:
    """Adds the rows ``paths`` with their ``embeddings`` [n, D] to the table's store as a new
    part; returns its file (None when there were no rows)."""
    if not len(paths):
        return None
    values = np.ascontiguousarray(embeddings, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(paths):
        raise ValueError(f"{len(paths)} paths but embeddings of shape {values.shape}")
    folder = store_of(table)
    folder.mkdir(exist_ok=True)
    parts = _parts(folder)
    number = parts[-1][0] + 1 if parts else 1
    target = folder / f"part-{number:05d}.npz"
    tmp = folder / f".part-{number:05d}.partial-{os.getpid()}.npz"
    try:
        np.savez(tmp, path=np.asarray(list(paths), dtype=str), embedding=values)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def read_store(folder: Path) -> tuple[list[str], FloatArray32]:
    """Every row of a store folder: paths and embeddings [n, D] (a path written twice keeps
    its last embedding). InputError when parts disagree on D."""
    paths: list[str] = []
    arrays: list[FloatArray32] = []
    for _, part in _parts(folder):
        with np.load(part, allow_pickle=False) as data:
            paths.extend(str(p) for p in data["path"])
            arrays.append(np.asarray(data["embedding"], dtype=np.float32))
    dims = {a.shape[1] for a in arrays}
    if len(dims) > 1:
        raise InputError(f"{folder}: parts of different widths {sorted(dims)}; was the table "
                         "scored with two models? Delete the folder and score again")
    if not arrays:
        return [], np.zeros((0, 0), dtype=np.float32)
    return paths, np.concatenate(arrays)


def read_embeddings(source: Path) -> tuple[list[str] | None, FloatArray32]:
    """Embeddings from ``source``: a store folder or an ``.npz`` (keys ``embedding`` and
    ``path`` or ``id``) give (keys, [n, D]); an ``.npy`` gives (None, [n, D]) in table order."""
    if not source.exists():
        raise InputNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        return read_store(source)
    suffix = source.suffix.lower()
    if suffix == ".npy":
        return None, _matrix(source, np.load(source, allow_pickle=False))
    if suffix == ".npz":
        with np.load(source, allow_pickle=False) as data:
            if "embedding" not in data.files:
                raise InputError(f"{source}: no 'embedding' array (has {', '.join(data.files)})")
            keys = next((k for k in ("path", "id") if k in data.files), None)
            values = _matrix(source, data["embedding"])
            if keys is None:
                return None, values
            return [str(k) for k in data[keys]], values
    raise InputError(f"{source}: embeddings must be a .npy, a .npz or a {STORE_SUFFIX} folder")


def _matrix(source: Path, values: npt.NDArray[np.generic]) -> FloatArray32:
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{source}: embeddings must be a 2-D array of numbers [rows, "
                         f"dimensions], got {values.dtype} {values.shape}")
    return np.asarray(values, dtype=np.float32)


def aligned(keys: Sequence[str], source: Path) -> tuple[FloatArray32, int]:
    """The embeddings of ``source`` in the order of ``keys`` (a table's paths or ids): [N, D]
    with NaN rows where ``source`` has none, and how many rows have none. InputError when an
    ``.npy`` has another row count than the table."""
    stored_keys, values = read_embeddings(source)
    if stored_keys is None:
        if len(values) != len(keys):
            raise InputError(f"{source}: {len(values)} rows of embeddings for a table of "
                             f"{len(keys)} rows (an .npy must follow the table's row order)")
        return values, 0
    where = {key: i for i, key in enumerate(stored_keys)}
    rows = np.array([where.get(str(key), -1) for key in keys], dtype=np.int64)
    width = values.shape[1] if values.size else 0
    out = np.full((len(keys), width), np.nan, dtype=np.float32)
    found = rows >= 0
    out[found] = values[rows[found]]
    return out, int((~found).sum())
