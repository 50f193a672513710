"""Ray Data: a collection scored on a Ray cluster through the service (the ``ray`` extra).

``ScoreBatch`` is the building block: a callable class for ``Dataset.map_batches`` that opens
its ScoringClient once per actor (``compute=ray.data.ActorPoolStrategy(size=N)``) and scores
a batch of images through the servers, returning the columns of a score-dir table::

    import ray
    from hardscore_client.ray_scoring import ScoreBatch

    ds = ray.data.read_parquet("s3://pool/manifest.parquet")        # uri[, label, split]
    scored = ds.map_batches(ScoreBatch, fn_constructor_kwargs={"servers": ["dns:///scorer:8001"]},
                            compute=ray.data.ActorPoolStrategy(size=8), batch_size=32,
                            batch_format="numpy")
    scored.write_parquet("s3://pool/scores/")

A batch holds ``uri`` (a local path, file:// or an fsspec URI, read in the actor: sources) or
``bytes`` (the image's bytes, e.g. from ``ray.data.read_binary_files``, with ``path`` or ``uri``
naming it), and optionally ``label`` and ``split``. Each row comes back with ``path``, ``label``,
``split``, ``sha256``, ``prediction``, ``model``, ``model_version``, ``error``,
``error_message``, every score and the ``p_<class>`` columns (``embedding`` too when asked
for); an image that fails is a row with its reason, as in score-dir. ``model_name`` and
``model_version`` pick a model of a server with several; each actor names the version it
resolved in every call (score_ray resolves it once, in the driver, for every actor).

``score_ray`` (``hardscore score-ray``) runs the whole job: the manifest's images not yet in the
output folder's Parquet files (the same rule as score-dir: rows that failed for a reason that can
change are tried again) through ``ScoreBatch`` on the cluster at ``address`` (else
``RAY_ADDRESS``, else a local one), written to the folder as new Parquet files.

Ray is imported only inside the functions here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from hardscore_client.client import DEFAULT_CONNECT_TIMEOUT, ScoringClient, TLSConfig
from hardscore_client.dataset import (
    BACKOFF_S,
    Failure,
    Item,
    concat_columns,
    error_rows,
    last_rows,
    models_named,
    read_item,
    result_rows,
    retried,
    table_columns,
)
from hardscore_client.errors import InputError, MissingExtraError
from hardscore_client.tables import Columns, save_table

RAY_HINT = "pip install 'hardscore[ray]'"
ACTORS = 2
BATCH_SIZE = 32
ATTEMPTS = 8
"""Tries of a batch over the servers (UNAVAILABLE, RESOURCE_EXHAUSTED) before the actor fails."""
SENT_AGAIN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.CANCELLED)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError(f"score-ray and ScoreBatch need Ray Data: {RAY_HINT}") from None
    return ray


def _texts(batch: dict[str, npt.NDArray[Any]], name: str, n: int) -> list[str]:
    if name not in batch:
        return [""] * n
    return ["" if v is None else str(v) for v in batch[name].tolist()]


class ScoreBatch:
    """A ``map_batches`` callable class: one ScoringClient per server and actor, opened when
    the actor starts; each call scores one batch (see the module docstring).

    ``servers``: one or more targets (``host:port``, ``dns:///name:port`` for a fleet);
    batches rotate over them, and a batch refused UNAVAILABLE or RESOURCE_EXHAUSTED is sent to
    the next (backing off) up to ATTEMPTS times. ``embeddings`` adds an ``embedding`` column
    ([n, D] float32, NaN rows for failed images). ``timeout`` is each call's deadline."""

    def __init__(self, servers: Sequence[str] | str, *, timeout: float | None = 300.0,
                 embeddings: bool = False, token: str | None = None,
                 tls: TLSConfig | None = None,
                 connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
                 model_name: str = "", model_version: str = "") -> None:
        targets = [servers] if isinstance(servers, str) else list(servers)
        if not targets:
            raise ValueError("at least one server is needed")
        self.clients = [ScoringClient(t, timeout=timeout, token=token, tls=tls,
                                      connect_timeout=connect_timeout,
                                      wait_for_ready=len(targets) == 1) for t in targets]
        info = self.clients[0].get_model_info(model_name, model_version)
        self.model_name, self.model_version = info.name, info.version  # named in every call
        self.class_names = list(info.class_names)
        self.embedding_dim = int(info.embedding_dim)
        self.embeddings = embeddings
        self.order = table_columns(self.class_names)
        self._turn = 0

    def _score(self, blobs: list[bytes], items: list[Item]) -> Any:
        wait = BACKOFF_S[0]
        for attempt in range(ATTEMPTS):
            client = self.clients[(self._turn + attempt) % len(self.clients)]
            try:
                return client.score_images(
                    blobs, [it.label or None for it in items], ids=[it.path for it in items],
                    include_probabilities=True, include_embeddings=self.embeddings,
                    chunk_size=len(blobs), model_name=self.model_name,
                    model_version=self.model_version)
            except grpc.RpcError as e:
                if e.code() not in SENT_AGAIN or attempt == ATTEMPTS - 1:  # type: ignore[attr-defined]
                    raise
                time.sleep(wait)
                wait = min(BACKOFF_S[1], wait * 2)
        raise AssertionError("unreachable")

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        key = "uri" if "uri" in batch else "path"
        n = len(batch[key]) if key in batch else len(batch["bytes"])
        items = [Item(*row) for row in zip(_texts(batch, key, n), _texts(batch, "label", n),
                                           _texts(batch, "split", n), strict=True)]
        data: list[bytes | Failure] = (
            [bytes(b) for b in batch["bytes"]] if "bytes" in batch
            else [read_item(it) for it in items])
        good = [(it, d) for it, d in zip(items, data, strict=True) if isinstance(d, bytes)]
        failed = [(it, d) for it, d in zip(items, data, strict=True) if isinstance(d, Failure)]
        digests = [""] * len(failed)
        parts: list[Columns] = []
        kept: npt.NDArray[np.float32] | None = None
        if good:
            import hashlib

            scored_items = [it for it, _ in good]
            shas = [hashlib.sha256(d).hexdigest() for _, d in good]
            result = self._score([d for _, d in good], scored_items)
            self._turn += 1
            bad = {e.index for e in result.errors}
            for e in result.errors:
                failed.append((scored_items[e.index],
                               Failure(scored_items[e.index].path, e.reason, e.message)))
                digests.append(shas[e.index])
            parts.append(result_rows(scored_items, result, self.class_names, shas))
            if self.embeddings and result.embeddings is not None:
                kept = np.asarray(result.embeddings, dtype=np.float32)[
                    [i for i in range(len(good)) if i not in bad]]
        parts.append(error_rows(failed, self.class_names, digests))
        columns = concat_columns(parts, self.order)
        if self.embeddings:
            width = self.embedding_dim or (kept.shape[1] if kept is not None else 0)
            values = np.full((len(columns["path"]), width), np.nan, dtype=np.float32)
            if kept is not None and len(kept):
                values[:len(kept)] = kept  # the scored rows come first
            columns["embedding"] = values
        return dict(columns)


@dataclass
class RaySummary:
    """What a score-ray run did."""

    out: Path
    found: int = 0
    already: int = 0
    """Rows in the output folder kept (scored, or failed for a reason that is kept)."""
    already_failed: int = 0
    """Of those, rows that failed for a reason that is kept."""
    scored: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Rows of this run that failed, by reason."""
    seconds: float = 0.0


def _saved(files: Sequence[Path]) -> dict[str, str]:
    """Path -> error ("" = scored) of the rows of Parquet ``files`` (the last row wins)."""
    import pyarrow.parquet as pq

    done: dict[str, str] = {}
    for f in files:
        t = pq.read_table(f, columns=["path", "error"])
        done.update(zip(t["path"].to_pylist(), t["error"].to_pylist(), strict=True))
    return done


def _saved_models(files: Sequence[Path]) -> set[tuple[str, str]]:
    """The (model, model_version) pairs of the scored rows of Parquet ``files`` (files written
    before those columns existed name none)."""
    import pyarrow.parquet as pq

    named: set[tuple[str, str]] = set()
    for f in files:
        if not {"model", "model_version"} <= set(pq.read_schema(f).names):
            continue
        t = pq.read_table(f, columns=["model", "model_version", "error"])
        named |= models_named({name: np.array([v or "" for v in t[name].to_pylist()],
                                              dtype=object) for name in t.column_names})
    return named


def _resolve_model(servers: Sequence[str], out: Path, files: Sequence[Path],
                   model_name: str, model_version: str, token: str | None,
                   tls: TLSConfig | None, timeout: float | None) -> tuple[str, str]:
    """The model version the run scores with, asked of the first server; InputError when the
    folder's scored rows name another (one folder holds one model version, as score-dir)."""
    with ScoringClient(servers[0], timeout=timeout, token=token, tls=tls) as client:
        info = client.get_model_info(model_name, model_version)
    others = _saved_models(files) - {(info.name, info.version)}
    if others:
        theirs = ", ".join(f"{m} version {v}" for m, v in sorted(others))
        raise InputError(
            f"{out} holds scores of {theirs}; this run scores with {info.name} version "
            f"{info.version}. One folder holds one model version: pass --model/--model-version "
            "of the folder's to resume it, or write to a new folder")
    return info.name, info.version


def score_ray(items: Sequence[Item], servers: Sequence[str], out: Path, *,
              address: str | None = None, actors: int = ACTORS, batch_size: int = BATCH_SIZE,
              embeddings: bool = False, timeout: float | None = 300.0,
              token: str | None = None, tls: TLSConfig | None = None,
              table: Path | None = None,
              progress: bool = True, model_name: str = "",
              model_version: str = "") -> RaySummary:
    """Scores ``items`` through ``servers`` on a Ray cluster into Parquet files in the folder
    ``out`` (see the module docstring); ``table`` also merges the folder into one score-dir
    table. ``address``: the cluster (default: RAY_ADDRESS, else a local one). ``model_name``
    and ``model_version`` (empty: the only model, its highest loaded version) are resolved
    once by the first server, and every actor names that version in every call."""
    ray = _ray()
    started = time.perf_counter()
    summary = RaySummary(out=out, found=len(items))
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.parquet"))
    done = _saved(sorted(before))
    todo, seen = [], set()
    for item in items:
        reason = done.get(item.path)
        if reason is not None and not retried(reason):
            summary.already += 1
            summary.already_failed += reason != ""
        elif item.path not in seen:
            seen.add(item.path)
            todo.append(item)
    if todo:
        model_name, model_version = _resolve_model(servers, out, sorted(before), model_name,
                                                   model_version, token, tls, timeout)
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        ds = ray.data.from_items([{"uri": it.path, "label": it.label, "split": it.split}
                                  for it in todo])
        scored = ds.map_batches(
            ScoreBatch, fn_constructor_kwargs={"servers": list(servers),
                                               "embeddings": embeddings, "timeout": timeout,
                                               "token": token, "tls": tls,
                                               "model_name": model_name,
                                               "model_version": model_version},
            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
            batch_format="numpy")
        scored.write_parquet(str(out))
    for reason in _saved(sorted(set(out.glob("*.parquet")) - before)).values():
        if reason:
            summary.failed[reason] = summary.failed.get(reason, 0) + 1
        else:
            summary.scored += 1
    if table is not None:
        merge_folder(out, table)
    summary.seconds = time.perf_counter() - started
    return summary


def merge_folder(folder: Path, table: Path) -> int:
    """The Parquet files of a score-ray folder as one score-dir table (one row per path, the
    last written wins; without the embedding column); returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    parts: list[Columns] = []
    order: list[str] = []
    for f in files:
        names = [n for n in pq.read_schema(f).names if n != "embedding"]
        t = pq.read_table(f, columns=names)
        order = order or names
        parts.append({n: (np.array(t[n].to_pylist(), dtype=object)
                          if pa.types.is_string(t[n].type) or pa.types.is_large_string(t[n].type)
                          else t[n].to_numpy(zero_copy_only=False))
                      for n in names})
    if not parts:
        return 0
    merged = last_rows(concat_columns(parts, order))
    save_table(table, merged)
    return len(merged["path"])
