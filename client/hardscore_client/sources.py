"""Where the images come from: manifests, and the bytes behind a URI.

A manifest lists the images of a collection, one a row, in CSV (with a header line), JSON Lines
(one object a line) or Parquet, chosen by its suffix: ``uri`` (or ``path``) names the image,
``label`` (its given label), ``split`` (train, test...) and ``id`` are optional. A URI is a local
path, a ``file://`` URI, or a URI of any fsspec protocol (``s3://bucket/key``, ``gs://``,
``az://``, ``https://``...); a relative entry is relative to the manifest's own folder (or
prefix), and the manifest itself may be at such a URI.

Local files are read as files. Every other URI is read through fsspec (``s3://`` through
s3fs): the ``storage`` extra, imported only when such a URI is met. Credentials are never
taken from the command line: s3fs finds them where the AWS tools do (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/credentials`` and
``~/.aws/config``, an instance or container role). The endpoint of an S3-compatible store
(MinIO, Ceph, a local test server) comes from ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``, and is handed to s3fs as its ``endpoint_url``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardscore_client.errors import InputError, InputNotFoundError, MissingExtraError

MANIFEST_FORMATS = (".csv", ".jsonl", ".parquet")
URI_COLUMNS = ("uri", "path")
"""The column naming each image, in order of preference."""
OPTIONAL_COLUMNS = ("label", "split", "id")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Where the endpoint of an S3-compatible store is read from, first found wins."""
S3_PROTOCOLS = frozenset({"s3", "s3a"})
STORAGE_HINT = "pip install 'hardscore[storage]'"


@dataclass(frozen=True)
class Entry:
    """One image of a manifest: ``uri`` (an absolute local path, or the URI as given, a
    relative entry joined to the manifest's folder), its given label, split and id ("" = none)."""

    uri: str
    label: str = ""
    split: str = ""
    id: str = ""


@dataclass(frozen=True)
class BadEntry:
    """A manifest row that names no readable image: its row (1 = the first) and why."""

    row: int
    entry: str
    message: str


class SourceError(OSError):
    """A URI could not be read (not found, refused, no credentials, network)."""


def scheme(uri: str) -> str:
    """The URI's scheme in lower case; "" for a local path (a one-letter scheme is a Windows
    drive)."""
    found = urllib.parse.urlsplit(uri).scheme.lower()
    return "" if len(found) <= 1 else found


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a local path or a file:// URI."""
    return scheme(uri) in ("", "file")


def local_path(uri: str, base: str | None = None) -> str:
    """The absolute path of a local path or file:// URI (a relative path joined to ``base``,
    default the current folder). ValueError for a file:// URI of another host."""
    if scheme(uri) == "file":
        parsed = urllib.parse.urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file URIs on another host are not supported")
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    path = Path(uri).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return os.path.abspath(path)


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for ``protocol``; for s3://, the endpoint from the environment
    (ENDPOINT_VARIABLES) and one request per object (s3fs otherwise asks each object's size
    first, to read large objects in parallel parts: a second round trip for every image).
    Credentials are found by the filesystem itself."""
    if protocol not in S3_PROTOCOLS:
        return {}
    options: dict[str, Any] = {"max_concurrency": 1}
    for name in ENDPOINT_VARIABLES:
        if os.environ.get(name):
            options["endpoint_url"] = os.environ[name]
            break
    return options


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise MissingExtraError(f"reading URIs other than local files needs fsspec: "
                                f"{STORAGE_HINT}") from None
    return fsspec


def check_protocols(uris: Iterable[str]) -> None:
    """Raises before any work when a non-local URI of ``uris`` cannot be read here:
    MissingExtraError when fsspec or the protocol's package (s3fs for s3://) is missing,
    InputError for a protocol fsspec does not know."""
    protocols = {scheme(u) for u in uris} - {"", "file"}
    if not protocols:
        return
    fsspec = _fsspec()
    for protocol in sorted(protocols):
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as e:
            raise MissingExtraError(f"{protocol}:// URIs need a package that is not installed "
                                    f"({e}); for s3://: {STORAGE_HINT}") from None
        except ValueError:
            raise InputError(f"{protocol}:// is not a protocol fsspec knows; use local paths, "
                             "file:// or an fsspec protocol (s3://, gs://, ...)") from None


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem of a non-local ``uri`` and the path within it (fsspec keeps one
    instance per set of options, so its connections are reused)."""
    fs, path = _fsspec().core.url_to_fs(uri, **storage_options(scheme(uri)))
    return fs, path


def read_bytes(uri: str) -> bytes:
    """The bytes behind ``uri``: a local path, a file:// URI or an fsspec URI. Raises OSError
    (FileNotFoundError for a missing object; SourceError for any other failure of a remote
    read, the cause in its message) and MissingExtraError when fsspec is not installed."""
    if is_local(uri):
        return Path(local_path(uri)).read_bytes()
    fs, path = filesystem(uri)
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such object") from None
    except OSError:
        raise
    except Exception as e:  # botocore and friends: credentials, endpoint, refusals
        raise SourceError(f"{uri}: {type(e).__name__}: {e}") from e
    return data


def _join(base: str, entry: str) -> str:
    """``entry`` of a manifest at ``base``: absolute URIs and paths as given (local ones made
    absolute), relative ones joined to the manifest's folder (``..`` resolved)."""
    if not is_local(entry):
        return entry
    if is_local(base):
        return local_path(entry, os.path.dirname(local_path(base)))
    if scheme(entry) == "file" or Path(entry).expanduser().is_absolute():
        return local_path(entry)
    parsed = urllib.parse.urlsplit(base)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(parsed.path), entry))
    return urllib.parse.urlunsplit(parsed._replace(path=joined, query="", fragment=""))


def _text(value: object) -> str:
    """A manifest cell as text: None and NaN empty, whole floats without ".0"."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


def _format(manifest: str) -> str:
    name = urllib.parse.urlsplit(manifest).path if not is_local(manifest) else manifest
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in MANIFEST_FORMATS:
        raise InputError(f"{manifest}: unknown manifest format {suffix!r}; use one of "
                         f"{', '.join(MANIFEST_FORMATS)}")
    return suffix


def _records(manifest: str, kind: str) -> tuple[list[str], Iterator[dict[str, object]]]:
    """The manifest's column names and its rows."""
    if kind == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingExtraError("reading a .parquet manifest needs pyarrow: "
                                    "pip install pyarrow") from None
        if is_local(manifest):
            source: Any = local_path(manifest)
            names = pq.read_schema(source).names
            table = pq.read_table(source, columns=_wanted(names))
        else:
            fs, path = filesystem(manifest)
            with fs.open(path, "rb") as f:
                names = pq.read_schema(f).names
                f.seek(0)
                table = pq.read_table(f, columns=_wanted(names))
        return names, iter(table.to_pylist())
    text = read_bytes(manifest).decode("utf-8-sig")
    if kind == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return list(reader.fieldnames or []), iter(reader)
    rows: list[dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{manifest}: line {number} is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise InputError(f"{manifest}: line {number} is not a JSON object")
        rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return names, iter(rows)


def _wanted(names: list[str]) -> list[str]:
    return [n for n in (*URI_COLUMNS, *OPTIONAL_COLUMNS) if n in names]


def read_manifest(manifest: str) -> tuple[list[Entry], list[BadEntry]]:
    """The images of ``manifest`` (a local path or a URI; CSV, JSON Lines or Parquet by
    suffix), in its order, and the rows that name none (an empty ``uri``, a file:// URI of
    another host). Raises InputNotFoundError for a manifest that does not exist, InputError
    for an unknown format or one without a ``uri`` or ``path`` column, MissingExtraError when
    a package its URIs or format need is missing (before any image is read)."""
    kind = _format(manifest)
    check_protocols([manifest])
    try:
        names, rows = _records(manifest, kind)
    except FileNotFoundError:
        raise InputNotFoundError(f"{manifest}: no such file") from None
    except SourceError as e:
        raise InputError(f"cannot read the manifest: {e}") from None
    column = next((c for c in URI_COLUMNS if c in names), None)
    if column is None:
        raise InputError(f"{manifest}: no 'uri' (or 'path') column; its columns are "
                         f"{', '.join(names) or 'none'}")
    entries: list[Entry] = []
    bad: list[BadEntry] = []
    for number, row in enumerate(rows, start=1):
        given = _text(row.get(column))
        if not given:
            bad.append(BadEntry(number, f"{manifest} row {number}", f"empty {column!r}"))
            continue
        try:
            uri = _join(manifest, given)
        except ValueError as e:
            bad.append(BadEntry(number, given, str(e)))
            continue
        entries.append(Entry(uri, *(_text(row.get(c)) for c in OPTIONAL_COLUMNS)))
    check_protocols(e.uri for e in entries)
    return entries, bad
