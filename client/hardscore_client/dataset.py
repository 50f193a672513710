"""Score a whole data set of image files: ``hardscore score-dir``.

A folder in the usual image-classification layout (one subfolder per class, named like the
model's class, holding that class's images at any depth) gives each image its folder name as
the given label; images directly in the folder (or a folder without class subfolders) are
unlabelled. ``--from-list`` reads the paths (or file:// URIs) from a file instead, one a line,
optionally followed by a tab and the given label, and another tab and the split (train, test...).

Images are read in a thread and streamed to one or more servers by a bounded number of
concurrent calls per server (each call a batch of images); batches go to whichever server is
free, so faster servers take more. The output table has one row per scored image: ``path``,
``label`` (given, "" when none), ``split`` ("" when none), ``sha256`` (the file's content
digest, which finds exact duplicates), ``prediction`` (class name), ``model`` and
``model_version`` (the model version that computed the row, as the server's reply names it),
every score, and ``p_<class>`` probabilities, and ``error`` / ``error_message`` (empty for a
scored image). With ``embeddings`` the model's embedding of each image is kept beside the table
(embedding_store).

One table holds one model version's scores. A run asks the first server that answers which
version it scores with (``model_name``/``model_version`` as given; empty: the only model
loaded, its highest loaded version) and names that version in every call, so a swap on the
server during the run cannot mix versions: a server that stops serving it is given up like a
failed one. A run over a table whose scored rows name another model version is refused before
anything is scored (resume with that version, or write to a new table); rows of tables written
before these columns existed have them empty and are kept.

A failed image is a row too, never a lost one: its scores empty, ``error`` its reason token
(``read``, ``decode``, ``size``...) and ``error_message`` why. A new run over the same output
skips every path already in it, except rows whose reason can change (RETRY_REASONS: the store,
the network or the servers were at fault), which it tries again; a reason that lies in the
file's bytes or the manifest (``decode``, ``size``, ``empty``, ``uri``...) is kept as it is.

Output is written in parts as it goes: every ``checkpoint_s`` seconds the rows scored since the
last checkpoint are one more part, ``OUT.parts/part-NNNNN<suffix>`` (OUT's own format), written
to a temporary name and then renamed; nothing written before is rewritten, so a checkpoint costs
what it adds, not the whole table. At the end of the run (finished, interrupted, failed) the
table and its parts are merged into ``OUT`` (sorted by path; a path's last row wins) and the
parts removed. A run that was killed before it could merge leaves its parts: the next run reads
them with the table and skips what any part holds.

A server's refusal that cannot change is never retried: a batch refused as too large (over the
message size limit, the queue size, the images per message or the decode budget) is split in
halves until the image(s) at fault are found; those are reported and skipped (reason ``size``)
and the others scored. A busy server (full queue, busy decode budget) is retried with backoff
for at most ``busy_give_up_s`` seconds without a success, then given up like a failed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from hardscore_client.client import (
    DEFAULT_CONNECT_TIMEOUT,
    TOKEN_HINT,
    AsyncScoringClient,
    TLSConfig,
    load_balanced,
)
from hardscore_client.connection import PROBE_BOUND_S
from hardscore_client.embedding_store import write_part
from hardscore_client.errors import (
    ConnectionFailed,
    InputError,
    InputNotFoundError,
    ServerUnavailableError,
)
from hardscore_client.messages import ScoreResult
from hardscore_client.sources import is_local, read_bytes, read_manifest
from hardscore_client.tables import (
    INT_COLUMNS,
    TEXT_COLUMNS,
    Columns,
    check_writable,
    read_table,
    save_table,
)
from hardscore_wire.scores import SCORE_NAMES

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
FIRST_COLUMNS = ("path", "label", "split", "sha256", "prediction", "model", "model_version",
                 "error", "error_message")
"""The score-dir table's text columns, before the scores."""
ADDED_COLUMNS = ("split", "sha256", "model", "model_version", "error", "error_message")
"""Columns tables of earlier versions lack: such a table is resumed with them empty."""
RETRY_REASONS = frozenset({
    "read", "busy", "unavailable", "resource_exhausted", "deadline_exceeded", "cancelled",
    "aborted", "unknown", "internal",
})
"""Failure reasons a new run tries again: they depend on the moment (the file or object could
not be read, the servers were busy or away), not on the image. Every other reason (``decode``,
``size``, ``empty``, ``shape``, ``uri``, ``invalid_argument``...) lies in the file's bytes or in
the manifest: the row is kept as it is (delete it, or write to a new table, to try again)."""
PARTS_SUFFIX = ".parts"
BATCH_SIZE = 32
CONCURRENCY = 4
CHECKPOINT_S = 60.0
BUSY_GIVE_UP_S = 120.0
"""Seconds a server may answer only busy refusals (RESOURCE_EXHAUSTED) before it is given up."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Item:
    """One image to score: its absolute path (or a URI: sources), its given label and its split
    ("" = none)."""

    path: str
    label: str = ""
    split: str = ""


@dataclass(frozen=True)
class Failure:
    """An image that was not scored: why (a reason token) and the message."""

    path: str
    reason: str
    message: str


@dataclass
class ScoreDirSummary:
    """What a score-dir run did."""

    out: Path
    found: int = 0
    already_scored: int = 0
    """Scored rows already in the table (skipped)."""
    already_failed: int = 0
    """Failed rows already in the table whose reason is kept (not in RETRY_REASONS)."""
    retried: int = 0
    """Failed rows already in the table tried again (their reason in RETRY_REASONS)."""
    scored: int = 0
    failures: list[Failure] = field(default_factory=list)
    """Images that failed in this run: each is a row of the table with its reason."""
    retries: int = 0
    """Batches sent again (a busy server, an address of a fleet that went away)."""
    per_server: dict[str, int] = field(default_factory=dict)
    """Images scored by each --server (by its position and address)."""
    seconds: float = 0.0
    model_name: str = ""
    model_version: str = ""
    """The model version every call of the run named (resolved from the first server)."""


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def scan_folder(root: Path) -> list[Item]:
    """The images under ``root``: those in a subfolder get its name as label, others none
    (InputNotFoundError when ``root`` is not a folder)."""
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: not a folder")
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        relative = folder.relative_to(root)
        label = relative.parts[0] if relative.parts else ""
        for name in sorted(filenames):
            path = folder / name
            if _is_image(path):
                items.append(Item(os.path.abspath(path), label))
    return items


def path_from_entry(entry: str, base: Path | None = None) -> str:
    """An absolute local path from a list entry: a path (relative to ``base``, default the
    current folder) or a file:// URI. Other URI schemes raise ValueError."""
    parsed = urllib.parse.urlparse(entry)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{entry}: file URIs on another host are not supported")
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise ValueError(f"{entry}: only local paths and file:// URIs are supported")
    path = Path(entry).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return os.path.abspath(path)


def read_list(list_file: Path) -> tuple[list[Item], list[Failure]]:
    """Items from a list file: ``PATH_OR_FILE_URI[<TAB>LABEL[<TAB>SPLIT]]`` a line; blank lines
    and lines starting with # are skipped. Relative paths are relative to the current folder."""
    if not list_file.exists():
        raise InputNotFoundError(f"{list_file}: no such file")
    items, failures = [], []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry, _, rest = line.partition("\t")
        label, _, split = rest.partition("\t")
        try:
            items.append(Item(path_from_entry(entry.strip()), label.strip(), split.strip()))
        except ValueError as e:
            failures.append(Failure(entry.strip(), "uri", str(e)))
    return items, failures


def read_manifest_items(manifest: str) -> tuple[list[Item], list[Failure]]:
    """Items from a manifest (CSV, JSON Lines or Parquet; a local path or a URI such as
    s3://): see sources.read_manifest. Each item's path is its URI as given (local paths
    made absolute); rows naming no image are failures (reason ``uri``)."""
    entries, bad = read_manifest(manifest)
    return ([Item(e.uri, e.label, e.split) for e in entries],
            [Failure(b.entry, "uri", b.message) for b in bad])


def table_columns(class_names: Sequence[str]) -> list[str]:
    """The columns of a score-dir table, in order."""
    return [*FIRST_COLUMNS, *SCORE_NAMES, *(f"p_{c}" for c in class_names)]


def _empty(name: str, n: int) -> npt.NDArray[np.generic]:
    """``n`` empty cells of column ``name``, typed as tables.read_table types it."""
    if name in TEXT_COLUMNS:
        return np.full(n, "", dtype=object)
    if name in INT_COLUMNS:
        return np.full(n, -1, dtype=np.int64)
    return np.full(n, math.nan)


def result_rows(items: Sequence[Item], result: ScoreResult, class_names: Sequence[str],
                digests: Sequence[str] | None = None) -> Columns:
    """Table columns for the successfully scored ``items`` of ``result`` (failed rows left out);
    ``digests`` are the items' sha256 (hex), empty when not given."""
    failed = {e.index for e in result.errors}
    keep = np.array([i not in failed for i in range(len(items))], dtype=bool)
    n = int(keep.sum())
    names = list(class_names)
    predicted = np.asarray(result.predicted_class, dtype=np.int64)[keep]
    columns: Columns = {
        "path": np.array([it.path for it, k in zip(items, keep, strict=True) if k], dtype=object),
        "label": np.array([it.label for it, k in zip(items, keep, strict=True) if k],
                          dtype=object),
        "split": np.array([it.split for it, k in zip(items, keep, strict=True) if k],
                          dtype=object),
        "sha256": np.array([d for d, k in zip(digests or [""] * len(items), keep, strict=True)
                            if k], dtype=object),
        "prediction": np.array([names[p] if 0 <= p < len(names) else "" for p in predicted],
                               dtype=object),
        "error": np.full(n, "", dtype=object),
        "error_message": np.full(n, "", dtype=object),
    }
    models, versions = result.row_models()  # the replies' tags: the version that computed it
    columns["model"], columns["model_version"] = models[keep], versions[keep]
    present = result.columns()
    for name in SCORE_NAMES:
        if name in present:
            values = np.asarray(present[name])[keep]
            columns[name] = values.astype(np.int64 if name in INT_COLUMNS else np.float64)
        else:
            columns[name] = _empty(name, n)
    probs = result.probabilities
    for c, name in enumerate(names):
        columns[f"p_{name}"] = (np.asarray(probs[keep, c], dtype=np.float64) if probs is not None
                                else _empty(f"p_{name}", n))
    return columns


def error_rows(failed: Sequence[tuple[Item, Failure]], class_names: Sequence[str],
               digests: Sequence[str] | None = None) -> Columns:
    """Table rows for images that were not scored: path, label, split (and sha256 when the
    bytes were read), ``error`` (the reason token) and ``error_message``; every score empty."""
    n = len(failed)
    columns: Columns = {name: _empty(name, n) for name in table_columns(class_names)}
    columns["path"] = np.array([f.path for _, f in failed], dtype=object)
    columns["label"] = np.array([it.label for it, _ in failed], dtype=object)
    columns["split"] = np.array([it.split for it, _ in failed], dtype=object)
    columns["sha256"] = np.array(list(digests) if digests is not None else [""] * n,
                                 dtype=object)
    columns["error"] = np.array([f.reason for _, f in failed], dtype=object)
    columns["error_message"] = np.array([f.message for _, f in failed], dtype=object)
    return columns


def retried(reason: str) -> bool:
    """Whether a row that failed for ``reason`` is tried again by a new run (RETRY_REASONS)."""
    return reason in RETRY_REASONS


def parts_of(out: Path) -> Path:
    """The folder of the parts a run writes before it merges them into ``out``."""
    return out.with_name(out.name + PARTS_SUFFIX)


def _part_files(out: Path) -> list[Path]:
    folder = parts_of(out)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith("part-") and p.suffix == out.suffix)


def last_rows(columns: Columns) -> Columns:
    """The rows of ``columns`` with one row per path, the last of each path's rows, sorted by
    path."""
    paths = columns["path"].astype(str)
    where = {p: i for i, p in enumerate(paths.tolist())}  # the last row of each path wins
    keep = np.fromiter(where.values(), dtype=np.int64, count=len(where))
    keep = keep[np.argsort(paths[keep], kind="stable")]
    return {k: v[keep] for k, v in columns.items()}


def read_saved(out: Path) -> Columns:
    """What a run over ``out`` starts from: the table and the parts an earlier run left (killed
    before it merged them), one row per path (the last written wins); {} when there is none."""
    tables = [read_table(out)] if out.exists() else []
    tables += [read_table(p) for p in _part_files(out)]
    tables = [t for t in tables if t and _rows(t)]
    if not tables:
        return read_table(out) if out.exists() else {}
    order = list(dict.fromkeys(name for t in tables for name in t))
    if len(tables) == 1:
        return tables[0]
    return last_rows(concat_columns(tables, order))


def concat_columns(parts: Sequence[Columns], order: Sequence[str]) -> Columns:
    """Joins tables with the same columns (missing ones filled empty) in ``order``."""
    out: Columns = {}
    for name in order:
        arrays = [p[name] if name in p else _empty(name, _rows(p)) for p in parts]
        out[name] = np.concatenate(arrays) if arrays else _empty(name, 0)
    return out


def _rows(columns: Columns) -> int:
    return len(next(iter(columns.values()))) if columns else 0


def read_item(item: Item) -> bytes | Failure:
    """The bytes of an image, or its Failure (reason ``read`` or ``empty``)."""
    try:  # a URI other than a local file through fsspec (sources)
        data = Path(item.path).read_bytes() if is_local(item.path) else read_bytes(item.path)
    except OSError as e:
        return Failure(item.path, "read", e.strerror or str(e))
    if not data:
        return Failure(item.path, "empty", "the file is empty")
    return data


def _read_batch(batch: Sequence[Item]) -> list[bytes | Failure]:
    return [read_item(item) for item in batch]


def _digests(blobs: Sequence[bytes]) -> list[str]:
    """The sha256 (hex) of each file's bytes."""
    return [hashlib.sha256(blob).hexdigest() for blob in blobs]


class _Run:
    """State shared by the workers of one score-dir run: the rows added, the parts written."""

    def __init__(self, out: Path, existing: Columns, class_names: list[str],
                 checkpoint_s: float, bar: tqdm) -> None:  # type: ignore[type-arg]
        self.out = out
        self.existing = existing
        self.class_names = class_names
        self.order = table_columns(class_names)
        self.parts: list[Columns] = []
        """Every row this run added, in batches."""
        self.saved = 0
        """How many of ``parts`` are in a part file already."""
        self.embedded_paths: list[str] = []
        self.embeddings: list[npt.NDArray[np.float32]] = []
        """Rows scored since the last save whose embeddings are not in the store yet."""
        self.checkpoint_s = checkpoint_s
        self.last_save = time.monotonic()
        self.unsaved = 0
        self.bar = bar

    def add(self, columns: Columns, embeddings: npt.NDArray[np.float32] | None = None) -> None:
        """Rows scored or failed (``embeddings``: those of the scored ones, in row order, when
        asked for)."""
        if not _rows(columns):
            return
        self.parts.append(columns)
        if embeddings is not None and len(embeddings):
            scored = columns["error"] == ""
            self.embedded_paths.extend(str(p) for p in columns["path"][scored])
            self.embeddings.append(embeddings)
        self.unsaved += _rows(columns)
        if self.unsaved and time.monotonic() - self.last_save >= self.checkpoint_s:
            self.checkpoint()

    def _save_embeddings(self) -> None:
        if self.embeddings:
            write_part(self.out, self.embedded_paths, np.concatenate(self.embeddings))
            self.embedded_paths, self.embeddings = [], []

    def checkpoint(self) -> Path | None:
        """Writes the new embeddings (a part of the store), then the rows added since the last
        checkpoint as one more part of the table (temporary name, then renamed): the cost of
        what was added, whatever the table's size."""
        self._save_embeddings()
        new = self.parts[self.saved:]
        self.last_save = time.monotonic()
        self.unsaved = 0
        if not new:
            return None
        folder = parts_of(self.out)
        folder.mkdir(exist_ok=True)
        files = _part_files(self.out)
        number = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        target = folder / f"part-{number:05d}{self.out.suffix}"
        save_table(target, concat_columns(new, self.order))
        self.saved = len(self.parts)
        return target

    def save(self) -> None:
        """The end of the run: the new embeddings, then the table and every part merged into
        ``out`` (atomically), then the parts removed."""
        self._save_embeddings()
        merged = concat_columns([self.existing, *self.parts], self.order)
        save_table(self.out, last_rows(merged) if _rows(merged) else merged)
        for part in _part_files(self.out):
            part.unlink()
        with contextlib.suppress(OSError):
            parts_of(self.out).rmdir()
        self.last_save = time.monotonic()
        self.unsaved = 0


def _refused_line(name: str, exc: BaseException, wait_s: float) -> str:
    """Why server ``name`` cannot be used, one line."""
    if isinstance(exc, ConnectionFailed):
        return str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        hint = f" ({TOKEN_HINT})" if exc.code() == grpc.StatusCode.UNAUTHENTICATED else ""
        return f"server {name} refused: {exc.code().name}: {exc.details()}{hint}"
    return f"server {name}: no answer within {wait_s:g} s"


@dataclass(frozen=True)
class ServedModel:
    """The model version a run scores with: its name, version and class names."""

    name: str
    version: str
    class_names: list[str]


async def _model_classes(
    clients: list[tuple[str, AsyncScoringClient]], wait_s: float, need_embeddings: bool = False,
    model_name: str = "", model_version: str = "",
) -> ServedModel:
    """The model version to score with and its class names: the first server that answers
    resolves ``model_name``/``model_version`` (empty: the only model, its highest loaded
    version), every other server is asked for that same version. InputError when
    ``need_embeddings`` and the model has none; servers that cannot be reached, refuse within
    ``wait_s`` or do not serve that version (NOT_FOUND) are dropped from ``clients`` (with a
    warning), servers serving other classes refused.

    Raises ConnectionFailed when no server could be reached, ServerUnavailableError when none
    answered (e.g. UNAUTHENTICATED), with the reason of each in one line."""
    names: list[str] | None = None
    left_out: list[tuple[str, BaseException]] = []
    for name, client in list(clients):
        try:
            info = await asyncio.wait_for(client.get_model_info(model_name, model_version),
                                          wait_s)
        except (grpc.aio.AioRpcError, TimeoutError, ConnectionFailed) as e:
            left_out.append((name, e))
            clients.remove((name, client))
            await client.close()
            continue
        theirs = list(info.class_names)
        if need_embeddings and not info.embedding_dim:
            raise InputError(f"server {name} serves model {info.name!r}, which has no "
                             "embedding output; re-export it with hardscore-export (which "
                             "writes one), or score without --embeddings")
        if names is None:  # every other server is asked for this very version
            names, model_name, model_version = theirs, info.name, info.version
        elif theirs != names:
            raise InputError(f"server {name} serves other classes ({', '.join(theirs[:5])}"
                             f"...) than the first server ({', '.join(names[:5])}...)")
    lines = [_refused_line(name, e, wait_s) for name, e in left_out]
    if names is None:
        unreachable = [e for _, e in left_out if isinstance(e, ConnectionFailed)]
        if len(left_out) == 1:
            if unreachable:
                raise unreachable[0]
            raise ServerUnavailableError(lines[0])
        message = "no server answered: " + "; ".join(lines)
        if len(unreachable) == len(left_out):
            causes = {e.cause for e in unreachable}
            raise ConnectionFailed(message, ", ".join(e.target for e in unreachable),
                                   causes.pop() if len(causes) == 1 else "unknown")
        raise ServerUnavailableError(message)
    for (name, _), line in zip(left_out, lines, strict=True):
        print(f"server {name} left out: {line}", file=sys.stderr)
    return ServedModel(model_name, model_version, names)


def models_named(columns: Columns) -> set[tuple[str, str]]:
    """The (model, model_version) pairs the scored rows of ``columns`` name (none for a table
    written before those columns; rows that name neither are left out)."""
    if "model" not in columns or "model_version" not in columns:
        return set()
    scored = columns["error"] == "" if "error" in columns else slice(None)
    return {(str(m), str(v)) for m, v in zip(columns["model"][scored],
                                             columns["model_version"][scored], strict=True)
            if m or v}


def check_same_model(existing: Columns, out: Path, model: ServedModel) -> None:
    """Refuses to add rows of ``model`` to a table whose scored rows name another model
    version (rows without a model, from tables written before the column, are accepted)."""
    named = models_named(existing)
    others = named - {(model.name, model.version)}
    if others:
        theirs = ", ".join(f"{m} version {v}" for m, v in sorted(named))
        raise InputError(
            f"{out} holds scores of {theirs}; this run scores with {model.name} version "
            f"{model.version}. One table holds one model version: pass --model/--model-version "
            "of the table's to resume it, or write to a new table")


def check_labels(items: Sequence[Item], class_names: Sequence[str]) -> None:
    """Refuses labels that are not class names (naming them and how many images carry them)."""
    known = set(class_names)
    unknown: dict[str, int] = {}
    for item in items:
        if item.label and item.label not in known:
            unknown[item.label] = unknown.get(item.label, 0) + 1
    if unknown:
        listed = ", ".join(f"{k!r} ({v} images)" for k, v in sorted(unknown.items())[:10])
        raise InputError(
            f"given labels that are not classes of the served model: {listed}; the model's "
            f"classes are {', '.join(class_names[:20])}. Rename the folders, or pass "
            "--unlabelled to score without labels.")


async def score_items_async(
    items: Sequence[Item],
    servers: Sequence[str],
    out: Path,
    *,
    batch_size: int = BATCH_SIZE,
    concurrency: int = CONCURRENCY,
    checkpoint_s: float = CHECKPOINT_S,
    timeout: float | None = 300.0,
    progress: bool = True,
    failures: Sequence[Failure] = (),
    tls: TLSConfig | None = None,
    token: str | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    busy_give_up_s: float = BUSY_GIVE_UP_S,
    embeddings: bool = False,
    model_name: str = "",
    model_version: str = "",
) -> ScoreDirSummary:
    """Scores ``items`` on ``servers`` into the table ``out`` (see the module docstring) with
    model ``model_name`` at ``model_version`` (empty: the only model loaded, its highest loaded
    version, resolved once by the first server that answers and named in every call).

    ``timeout`` is the deadline of each call (seconds), ``tls``, ``token`` and
    ``connect_timeout`` are the clients' options (AsyncScoringClient), ``busy_give_up_s`` how
    long a server may stay busy (seconds); ``embeddings`` keeps each image's embedding in the
    table's store (embedding_store.store_of). Raises ConnectionFailed when no server can be
    reached, ServerUnavailableError when none answers (or all fail), InputError for labels
    that are not the model's classes, an ``out`` table of other columns or one that cannot be
    written (unknown suffix, no such folder; checked before anything is scored).

    Cancelled (Ctrl-C: asyncio.run cancels it), it saves the rows scored so far to ``out``
    before the cancellation goes on, so a new run resumes after them."""
    if not servers:
        raise ValueError("at least one server is needed")
    check_writable(out)  # before any work: a table that cannot be written loses it all
    started = time.perf_counter()
    summary = ScoreDirSummary(out=out, found=len(items))
    existing = read_saved(out)
    done: dict[str, str] = {}  # path -> its row's error ("" = scored)
    if "path" in existing:
        reasons = (existing["error"].tolist() if "error" in existing
                   else [""] * _rows(existing))
        done = dict(zip(existing["path"].tolist(), reasons, strict=True))
    todo: list[Item] = []
    seen: set[str] = set()
    for item in items:
        reason = done.get(item.path)
        if reason == "":
            summary.already_scored += 1
        elif reason is not None and not retried(reason):
            summary.already_failed += 1
        elif item.path not in seen:
            summary.retried += reason is not None
            seen.add(item.path)
            todo.append(item)
    given_up: list[Failure] = []  # rows naming no image (a manifest's empty uri...)
    for failure in failures:
        reason = done.get(failure.path)
        if reason is not None and not retried(reason):
            summary.already_failed += 1
        elif failure.path not in seen:
            seen.add(failure.path)
            given_up.append(failure)
    summary.failures = list(given_up)

    # One server: a call waits for it through a restart. Several: a call to one that went
    # away fails at once, and its batch goes to the others instead of waiting out its deadline.
    clients = [(f"{i}:{t}", AsyncScoringClient(t, timeout=timeout, tls=tls, token=token,
                                                connect_timeout=connect_timeout,
                                                wait_for_ready=len(servers) == 1))
               for i, t in enumerate(servers)]
    try:
        wait_s = min(timeout or 60.0, 60.0) + (connect_timeout or 0.0) + PROBE_BOUND_S
        model = await _model_classes(clients, wait_s, embeddings, model_name, model_version)
        class_names = model.class_names
        summary.model_name, summary.model_version = model.name, model.version
        check_labels(todo, class_names)
        expected = table_columns(class_names)
        if existing and [c for c in existing if c not in ADDED_COLUMNS] != [
                c for c in expected if c not in ADDED_COLUMNS]:
            raise InputError(f"{out} has other columns than this model's table; write to a new "
                             "file (or delete it) to score with this model")
        check_same_model(existing, out, model)
        queue: asyncio.Queue[list[Item] | None] = asyncio.Queue()
        for start in range(0, len(todo), batch_size):
            queue.put_nowait(todo[start:start + batch_size])
        summary.per_server = {name: 0 for name, _ in clients}
        state = _Dispatch(queue, queue.qsize(), len(clients) * max(1, concurrency),
                          busy_give_up_s,
                          [name for name, _ in clients if load_balanced(name.split(":", 1)[1])])
        with tqdm(total=len(todo), unit="img", desc="scoring", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:
            run = _Run(out, existing, class_names, checkpoint_s, bar)
            run.add(error_rows([(Item(f.path), f) for f in given_up], class_names))
            try:
                await asyncio.gather(*(
                    _worker(name, client, state, run, summary, embeddings, model)
                    for name, client in clients for _ in range(max(1, concurrency))
                ))
                if state.pending:
                    reasons = "; ".join(f"{k}: {v}" for k, v in state.dead.items())
                    left = _unscored(queue)
                    why = f"every server failed ({reasons})"
                    run.add(error_rows([(it, Failure(it.path, "unavailable", why))
                                        for it in left], class_names))
                    raise ServerUnavailableError(
                        f"{why}; {len(left)} images left unscored, written as rows with error "
                        "'unavailable' (run again to score them)")
            finally:
                summary.retries = state.retries
                run.save()
    finally:
        for _, client in clients:
            await client.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _unscored(queue: asyncio.Queue[list[Item] | None]) -> list[Item]:
    """The images of the batches still queued (none of them scored)."""
    left: list[Item] = []
    while not queue.empty():
        batch = queue.get_nowait()
        left.extend(batch or ())
    return left


RETRY_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED,)
GIVE_UP_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                 grpc.StatusCode.NOT_FOUND)
"""Codes that give a server up: its batch goes to the others. NOT_FOUND: it no longer serves
the run's model version (unloaded or swapped out during the run)."""
FLEET_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
"""Codes a fleet (several addresses behind one target) is retried on, as a busy server is: the
address that failed is left by the channel's round_robin, the next call goes to another."""
SPLIT_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
"""Codes whose message may refuse a request for its size (see too_large)."""
TOO_LARGE_MARKS = ("larger than max", "never fit", "send smaller", "separate requests",
                   "too large", "takes in one message")
"""Phrases of a message refusing the request for its size: gRPC's message size limit
(RESOURCE_EXHAUSTED "Received/Sent message larger than max"), the server's queue ("can never
fit the queue ... send smaller requests"), decode budget ("send the large images in separate
requests"), images per message and reply size (INVALID_ARGUMENT "more than this server takes in
one message", "send smaller requests"). Other RESOURCE_EXHAUSTED messages (queue full, decode
budget busy, shutting down: "retry later") mean a busy server."""
BACKOFF_S = (0.05, 2.0)
"""First and longest wait between a worker's busy retries, seconds (doubling)."""


def too_large(details: str) -> bool:
    """Whether a RESOURCE_EXHAUSTED or INVALID_ARGUMENT with message ``details`` refuses the
    request for its size (sending it again cannot help; a smaller one can), rather than for a
    busy server or a bad sample."""
    text = details.lower()
    return any(mark in text for mark in TOO_LARGE_MARKS)


class _Dispatch:
    """The batches still to score, the servers given up on (with why) and busy streaks."""

    def __init__(self, queue: asyncio.Queue[list[Item] | None], pending: int,
                 workers: int, busy_give_up_s: float = BUSY_GIVE_UP_S,
                 fleets: Collection[str] = ()) -> None:
        self.queue = queue
        self.pending = pending
        self.workers = workers
        self.fleets = frozenset(fleets)
        """Servers that are a fleet behind one name (client.load_balanced): the channel spreads
        calls over their addresses, so one address going away is retried, not given up."""
        self.retries = 0
        """Batches sent again after a busy refusal or a fleet's address went away."""
        self.dead: dict[str, str] = {}
        self.busy_give_up_s = busy_give_up_s
        self.busy_since: dict[str, tuple[float, int]] = {}
        """Per server: (time.monotonic() of the first busy refusal since its last success,
        refusals since)."""
        if not pending:
            self._release()

    def done(self) -> None:
        self.pending -= 1
        if not self.pending:
            self._release()

    def split(self, batch: list[Item]) -> None:
        """Queues ``batch`` (2 items or more) again as two halves."""
        half = len(batch) // 2
        self.pending += 2
        self.queue.put_nowait(batch[:half])
        self.queue.put_nowait(batch[half:])

    def give_up(self, name: str, why: str) -> None:
        if name not in self.dead:
            self.dead[name] = why
            tqdm.write(f"server {name} failed ({why}); its work goes to the other servers",
                       file=sys.stderr)

    def busy(self, name: str, details: str) -> bool:
        """Counts a busy refusal of ``name``; gives the server up (False) once it has been
        busy for busy_give_up_s seconds without a success."""
        now = time.monotonic()
        since, count = self.busy_since.get(name, (now, 0))
        self.busy_since[name] = (since, count + 1)
        if now - since < self.busy_give_up_s:
            return True
        self.give_up(name, f"busy for {now - since:.0f} s, {count + 1} RESOURCE_EXHAUSTED "
                           f"refusals without a success, the last: {details}")
        return False

    def fleet(self, name: str) -> bool:
        return name in self.fleets

    def served(self, name: str) -> None:
        self.busy_since.pop(name, None)

    def _release(self) -> None:
        for _ in range(self.workers):
            self.queue.put_nowait(None)


async def _worker(name: str, client: AsyncScoringClient, state: _Dispatch, run: _Run,
                  summary: ScoreDirSummary, embeddings: bool, model: ServedModel) -> None:
    """Scores batches until all are done; on a server failure hands its batch back and stops
    (the other servers' workers take it). A batch refused for its size is split in halves; a
    lone image refused so is a failure (reason ``size``)."""
    backoff = BACKOFF_S[0]
    while True:
        batch = await state.queue.get()
        if batch is None:
            return
        if name in state.dead:
            state.queue.put_nowait(batch)
            return
        read = await asyncio.to_thread(_read_batch, batch)
        readable = [(item, data) for item, data in zip(batch, read, strict=True)
                    if isinstance(data, bytes)]
        good = [item for item, _ in readable]
        failed: list[tuple[Item, Failure]] = [
            (item, data) for item, data in zip(batch, read, strict=True)
            if isinstance(data, Failure)]
        failed_digests = [""] * len(failed)
        result = None
        digests: list[str] = []
        if good:
            digests = await asyncio.to_thread(_digests, [data for _, data in readable])
            try:
                result = await client.score_images(
                    [data for _, data in readable], [item.label or None for item in good],
                    ids=[item.path for item in good], include_probabilities=True,
                    include_embeddings=embeddings, chunk_size=len(good),
                    model_name=model.name, model_version=model.version)
            except ConnectionFailed as e:  # not connected yet (it was, in _model_classes)
                state.queue.put_nowait(batch)
                state.give_up(name, str(e))
                return
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details() or ""
                if code in SPLIT_CODES and too_large(details):  # never retried as it is
                    if len(good) > 1:  # the halves count on the progress bar themselves
                        state.split(good)
                        batch = [item for item in batch if item not in good]
                    else:
                        failed.append((good[0], Failure(
                            good[0].path, "size", f"refused alone: {code.name}: {details}")))
                        failed_digests.append(digests[0])
                elif code in RETRY_CODES or (state.fleet(name) and code in FLEET_RETRY_CODES):
                    # busy (queue full), or one address of a fleet went away: wait, then again
                    state.queue.put_nowait(batch)
                    state.retries += 1
                    if not state.busy(name, f"{code.name}: {details}"):
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(BACKOFF_S[1], backoff * 2)
                    continue
                elif code in GIVE_UP_CODES:
                    state.queue.put_nowait(batch)
                    state.give_up(name, f"{code.name}: {details}")
                    return
                else:
                    for item, digest in zip(good, digests, strict=True):
                        # refused as a whole (e.g. INVALID_ARGUMENT)
                        failed.append((item, Failure(item.path, code.name.lower(), details)))
                        failed_digests.append(digest)
            else:
                state.served(name)
        backoff = BACKOFF_S[0]
        kept = None
        if result is not None:
            for error in result.errors:
                failed.append((good[error.index], Failure(good[error.index].path,
                                                          error.reason, error.message)))
                failed_digests.append(digests[error.index])
            rows = result_rows(good, result, run.class_names, digests)
            summary.scored += _rows(rows)
            summary.per_server[name] += _rows(rows)
            if embeddings and result.embeddings is not None:
                bad = {e.index for e in result.errors}
                kept = result.embeddings[[i for i in range(len(good)) if i not in bad]]
        else:
            rows = {}
        for _, failure in failed:
            _fail(summary, failure)
        lost = error_rows(failed, run.class_names, failed_digests)
        run.add(concat_columns([rows, lost], run.order) if rows else lost, kept)
        run.bar.update(len(batch))
        state.done()


def _fail(summary: ScoreDirSummary, failure: Failure) -> None:
    summary.failures.append(failure)
    tqdm.write(f"failed {failure.path}: {failure.reason}: {failure.message}", file=sys.stderr)


def score_items(items: Sequence[Item], servers: Sequence[str], out: Path,
                **kwargs: object) -> ScoreDirSummary:
    """Blocking form of score_items_async."""
    return asyncio.run(score_items_async(items, servers, out, **kwargs))  # type: ignore[arg-type]


def score_dir(root: Path, servers: Sequence[str], out: Path, *, unlabelled: bool = False,
              **kwargs: object) -> ScoreDirSummary:
    """Scores every image under the folder ``root`` (see scan_folder) into ``out``."""
    items = scan_folder(root)
    if unlabelled:
        items = [Item(it.path) for it in items]
    return score_items(items, servers, out, **kwargs)
