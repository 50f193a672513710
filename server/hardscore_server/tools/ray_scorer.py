"""Ray Data in process: a collection scored by the model inside Ray's actors, no server to run
(the ``server`` extra and Ray: ``pip install 'hardscore[server,ray]'``).

``ScoreInProcess`` is the building block: a callable class for ``Dataset.map_batches`` that
loads a model directory (default: the embedded default model) once per actor with
``ModelRunner`` (``compute=ray.data.ActorPoolStrategy(size=N)``) and scores each batch with the
service's own steps: ``decode_image`` (preprocess), the labels as the service reads them
(``label_indices``), the model, and the score math (``score_rows``). Its rows carry the columns
of the service path (``hardscore_client.ray_scoring.ScoreBatch``, a score-dir table): ``path``,
``label``, ``split``, ``sha256``, ``prediction``, ``model``, ``model_version``, ``error``,
``error_message``, every score, ``p_<class>`` (rounded to float32, as the service sends
probabilities) and, when asked for, ``embedding``; a failed image is a row with its reason
(``read``, ``empty``, ``decode``, ``size``, ``label``...). Rows come back in input order::

    import ray
    from hardscore_server.tools.ray_scorer import ScoreInProcess

    ds = ray.data.read_binary_files("/data/pool", include_paths=True)     # bytes, path
    scored = ds.map_batches(ScoreInProcess, fn_constructor_kwargs={"model_dir": "/models/m"},
                            compute=ray.data.ActorPoolStrategy(size=8), batch_size=32,
                            batch_format="numpy")
    scored.write_parquet("/data/scores/")

A batch holds ``bytes`` (with ``path`` or ``uri`` naming each image) or ``uri`` (a local path,
file:// or an fsspec URI such as s3://, read in the actor through fsspec), and optionally
``label`` (a class name) and ``split``.

``hardscore-ray-score`` (``main``; also ``python -m hardscore_server.tools.ray_scorer``) runs a
manifest (Parquet, CSV or JSON Lines with ``uri``[, ``label``, ``split``]) through it on a Ray
cluster and writes Parquet files to a folder.

The server never imports the client: the column names are stated here, and a test compares
them with the client's. Ray (and fsspec) are imported only inside the functions here; serving
code never imports this module.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.model.runner import ModelRunner
from hardscore_server.pipeline.image_pipeline import (
    expand,
    input_spec,
    label_indices,
    score_rows,
)
from hardscore_server.pipeline.preprocess import SampleError, decode_image
from hardscore_wire.scores import SCORE_NAMES

FIRST_COLUMNS = ("path", "label", "split", "sha256", "prediction", "model", "model_version",
                 "error", "error_message")
"""The text columns of a score table, before the scores (the client's score-dir table);
``model`` and ``model_version`` name the manifest's model on scored rows, as the service's
replies do."""
INT_COLUMNS = frozenset({"predicted_class", "given_label"})
ACTORS = 2
BATCH_SIZE = 32
MAX_BLOCKS = 1000
"""The most blocks a manifest is cut into (a batch's worth of rows each, for fewer rows)."""
EXIT_PARTIAL = 4
"""Exit status when some images failed (each a row with its reason), as ``hardscore``'s."""
RAY_HINT = "pip install 'hardscore[server,ray]'"

Columns = dict[str, npt.NDArray[Any]]


def table_columns(class_names: Sequence[str]) -> list[str]:
    """The columns of a score table, in order (without ``embedding``)."""
    return [*FIRST_COLUMNS, *SCORE_NAMES, *(f"p_{c}" for c in class_names)]


def _texts(batch: dict[str, npt.NDArray[Any]], name: str, n: int) -> list[str]:
    if name not in batch:
        return [""] * n
    return ["" if v is None else str(v) for v in batch[name].tolist()]


def local_file(uri: str, base: str | None = None) -> str | None:
    """The absolute path of a local path or file:// URI (relative paths joined to ``base``),
    None for another scheme. ValueError for a file:// URI of another host."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file URIs on another host are not supported")
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) > 1:  # not a path (a Windows drive letter is one letter)
        return None
    path = Path(uri).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return os.path.abspath(path)


def read_uri(uri: str, base: str | None = None) -> bytes | SampleError:
    """The bytes behind ``uri`` (local, file:// or fsspec), or why not: reason ``read`` (the
    file or object cannot be read), ``empty`` (0 bytes) or ``uri`` (not a URI that can be
    read here)."""
    try:
        path = local_file(uri, base)
        if path is not None:
            data = Path(path).read_bytes()
        else:
            try:
                import fsspec
            except ImportError:
                return SampleError("read", f"{uri}: reading it needs fsspec: "
                                           "pip install 'hardscore[storage]'")
            with fsspec.open(uri, "rb") as f:
                data = f.read()
    except ValueError as e:
        return SampleError("uri", str(e))
    except FileNotFoundError:
        return SampleError("read", f"{uri}: no such file or object")
    except OSError as e:
        return SampleError("read", e.strerror or str(e))
    except Exception as e:  # a remote filesystem's own errors: credentials, endpoint, refusals
        return SampleError("read", f"{uri}: {type(e).__name__}: {e}")
    if not data:
        return SampleError("empty", "the file is empty")
    return bytes(data)


def _ray_cpus() -> int:
    """The CPUs Ray gave this actor (0 outside Ray or without a CPU share)."""
    try:
        import ray

        if not ray.is_initialized():
            return 0
        return int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # not in a Ray worker, or a Ray without these calls
        return 0


class ScoreInProcess:
    """A ``map_batches`` callable class: the model of ``model_dir`` (None: the embedded default
    model) loaded once per actor; each call scores one batch (see the module docstring).

    ``embeddings`` adds an ``embedding`` column ([n, D] float32, NaN rows for failed images).
    ``execution_provider``: auto (CUDA when it runs here), cpu, cuda or tensorrt, as the
    server's. ``threads``: ONNX Runtime's intra-op threads; 0 = the CPUs Ray gave the actor
    (its ``num_cpus``), else every CPU this process may use. ``base``: the folder relative local
    paths in ``uri`` are joined to (e.g. the manifest's)."""

    def __init__(self, model_dir: str | Path | None = None, *, embeddings: bool = False,
                 execution_provider: str = "auto", threads: int = 0,
                 base: str | None = None) -> None:
        self.runner = ModelRunner(Path(model_dir) if model_dir else DEFAULT_MODEL_DIR,
                                  execution_provider=execution_provider,
                                  intra_op_threads=threads or _ray_cpus())
        m = self.runner.manifest
        if embeddings and not m.has_embedding:
            raise ValueError(f"model {m.name} has no embedding output; re-export it with "
                             "hardscore-export")
        self.manifest = m
        self.class_names = list(m.class_names)
        self.spec = input_spec(m)
        self.embeddings = embeddings
        self.base = base
        self.order = table_columns(self.class_names)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        key = "uri" if "uri" in batch else "path"
        n = len(batch[key]) if key in batch else len(batch["bytes"])
        paths = _texts(batch, key, n)
        labels = _texts(batch, "label", n)
        if "bytes" in batch:
            data: list[bytes | SampleError] = [bytes(b) for b in batch["bytes"]]
        else:
            data = [read_uri(p, self.base) for p in paths]
            paths = [_shown(p, self.base) for p in paths]
        shas = ["" if isinstance(d, SampleError) else hashlib.sha256(d).hexdigest()
                for d in data]
        indices, label_errors = label_indices([lb or None for lb in labels], self.class_names, n)
        errors: dict[int, SampleError] = dict(label_errors)
        errors.update((i, d) for i, d in enumerate(data) if isinstance(d, SampleError))
        inputs: list[npt.NDArray[np.float32]] = []
        for i, d in enumerate(data):
            if i in errors or isinstance(d, SampleError):
                continue
            try:
                inputs.append(decode_image(d, self.spec))
            except SampleError as e:
                errors[i] = e
        rows = np.array([i for i in range(n) if i not in errors], dtype=np.intp)
        m = self.manifest
        emb: npt.NDArray[np.float32] | None = None
        if len(rows):
            x = np.stack(inputs)
            if self.embeddings:
                logits, emb = self.runner.run_with_embedding(0, x)
            else:
                logits = self.runner.run(0, x)
        else:
            logits = np.zeros((0, m.num_classes), dtype=np.float32)
        given = None if indices is None else indices[rows]
        scores = expand(score_rows(np.asarray(logits, dtype=np.float32), given,
                                   m.temperature), rows, n)
        return self._columns(paths, labels, _texts(batch, "split", n), shas, scores, errors,
                             rows, emb)

    def _columns(self, paths: list[str], labels: list[str], splits: list[str],
                 shas: list[str], scores: Any, errors: dict[int, SampleError],
                 rows: npt.NDArray[np.intp], emb: npt.NDArray[np.float32] | None) -> Columns:
        n = len(paths)
        names = self.class_names
        predicted = np.asarray(scores.predicted_class, dtype=np.int64)
        scored = [i not in errors for i in range(n)]
        columns: Columns = {
            "path": np.array(paths, dtype=object),
            "label": np.array(labels, dtype=object),
            "split": np.array(splits, dtype=object),
            "sha256": np.array(shas, dtype=object),
            "prediction": np.array([names[p] if 0 <= p < len(names) else "" for p in predicted],
                                   dtype=object),
            "model": np.array([self.manifest.name if ok else "" for ok in scored], dtype=object),
            "model_version": np.array([self.manifest.version if ok else "" for ok in scored],
                                      dtype=object),
            "error": np.array([errors[i].reason if i in errors else "" for i in range(n)],
                              dtype=object),
            "error_message": np.array([errors[i].message if i in errors else ""
                                       for i in range(n)], dtype=object),
        }
        for name in SCORE_NAMES:
            values = getattr(scores, name)
            if values is None:  # label scores without any label
                columns[name] = (np.full(n, -1, dtype=np.int64) if name in INT_COLUMNS
                                 else np.full(n, np.nan))
            else:
                columns[name] = np.asarray(values).astype(
                    np.int64 if name in INT_COLUMNS else np.float64)
        # the service sends probabilities as float32: the same rounding here
        probs = np.asarray(scores.probabilities, dtype=np.float32).astype(np.float64)
        for c, name in enumerate(names):
            columns[f"p_{name}"] = probs[:, c].copy()
        out = {k: columns[k] for k in self.order}
        if self.embeddings:
            values = np.full((n, self.manifest.embedding_dim), np.nan, dtype=np.float32)
            if emb is not None and len(rows):
                values[rows] = emb
            out["embedding"] = values
        return out


def _shown(uri: str, base: str | None) -> str:
    """A row's ``path``: a local path or file:// URI as its absolute path (as a manifest's
    entries are shown by score-dir and score-ray), any other URI as given."""
    try:
        path = local_file(uri, base)
    except ValueError:
        return uri
    return uri if path is None else path


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SystemExit(f"hardscore-ray-score needs Ray Data: {RAY_HINT}") from None
    return ray


def read_manifest(ray: Any, manifest: str) -> Any:
    """A Ray dataset of the manifest's rows (Parquet, CSV or JSON Lines, by its suffix)."""
    suffix = Path(urllib.parse.urlsplit(manifest).path).suffix.lower()
    if suffix == ".parquet":
        return ray.data.read_parquet(manifest)
    if suffix == ".csv":
        return ray.data.read_csv(manifest)
    if suffix in (".jsonl", ".json"):  # JSON Lines (what pyarrow's JSON reader reads)
        return ray.data.read_json(manifest)
    raise SystemExit(f"hardscore-ray-score: {manifest}: a manifest is .parquet, .csv or .jsonl")


def run(manifest: str, out: Path, *, model_dir: str | None = None, address: str | None = None,
        actors: int = ACTORS, batch_size: int = BATCH_SIZE, threads: int = 1,
        gpus_per_actor: float = 0.0, execution_provider: str = "auto",
        embeddings: bool = False, progress: bool = True) -> dict[str, int]:
    """Scores the manifest's images in process on the Ray cluster at ``address`` (default:
    RAY_ADDRESS, else a local one) into new Parquet files in ``out``; returns the rows written,
    by error ("" = scored)."""
    ray = _ray()
    import pyarrow.parquet as pq

    base = None
    local = local_file(manifest)
    if local is not None:
        base = os.path.dirname(local)
        manifest = local
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.parquet"))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = read_manifest(ray, manifest)
    names = set(ds.schema().names)
    if "uri" not in names:
        raise SystemExit(f"hardscore-ray-score: {manifest} has no uri column "
                         f"(it has {', '.join(sorted(names))})")
    # Read (and cut into blocks of about a batch each, up to MAX_BLOCKS) before the actors
    # start: once they hold the cluster's CPUs, read tasks could not be scheduled.
    ds = ds.select_columns([c for c in ("uri", "label", "split") if c in names]).materialize()
    rows = ds.count()
    ds = ds.repartition(max(1, min(MAX_BLOCKS, -(-rows // batch_size)))).materialize()
    kwargs: dict[str, Any] = {}
    if gpus_per_actor:
        kwargs["num_gpus"] = gpus_per_actor
    scored = ds.map_batches(
        ScoreInProcess, fn_constructor_kwargs={
            "model_dir": model_dir, "embeddings": embeddings, "threads": threads,
            "execution_provider": execution_provider, "base": base},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
        batch_format="numpy", num_cpus=threads, **kwargs)
    scored.write_parquet(str(out))
    counts: dict[str, int] = {}
    for f in sorted(set(out.glob("*.parquet")) - before):
        for reason in pq.read_table(f, columns=["error"])["error"].to_pylist():
            counts[reason or ""] = counts.get(reason or "", 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hardscore-ray-score",
        description="Score a manifest's images on a Ray cluster with the model inside Ray's "
                    "actors (no server): Parquet files with the columns of a score-dir table.")
    parser.add_argument("--manifest", required=True,
                        help="Parquet, CSV or JSON Lines with uri[, label, split] (local or a "
                             "URI Ray reads); relative local paths are the manifest's folder's")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder the Parquet files are written to (new files each run)")
    parser.add_argument("--model-dir", default=None,
                        help="model directory (default: the embedded default model); every "
                             "worker node must see it at this path")
    parser.add_argument("--ray-address", default=None,
                        help="the Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--actors", type=int, default=ACTORS,
                        help=f"actors, each holding a model copy (default {ACTORS})")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"images per model run (default {BATCH_SIZE})")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPUs (Ray num_cpus) and ONNX Runtime threads per actor "
                             "(default 1)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0,
                        help="GPUs per actor (Ray num_gpus; e.g. 0.25: four actors a GPU)")
    parser.add_argument("--execution-provider", default="auto",
                        choices=("auto", "cpu", "cuda", "tensorrt"),
                        help="as hardscore-server's (default auto)")
    parser.add_argument("--embeddings", action="store_true",
                        help="add the model's embeddings (an embedding column)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no Ray Data progress bars")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts = run(args.manifest, args.out, model_dir=args.model_dir, address=args.ray_address,
                 actors=args.actors, batch_size=args.batch_size, threads=args.threads,
                 gpus_per_actor=args.gpus_per_actor,
                 execution_provider=args.execution_provider, embeddings=args.embeddings,
                 progress=not args.no_progress)
    seconds = time.perf_counter() - started
    scored = counts.pop("", 0)
    failed = sum(counts.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"scored {scored} images in {seconds:.1f} s ({scored / max(seconds, 1e-9):.1f} img/s) "
          f"into {args.out}; {failed} failed" + (f" ({reasons})" if reasons else ""),
          file=sys.stderr)
    return EXIT_PARTIAL if failed else 0


if __name__ == "__main__":
    sys.exit(main())
