"""Manifests (CSV, JSON Lines, Parquet) and URIs read by hardscore_client.sources, on local
files only (object storage: tests/e2e/test_object_storage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardscore_client import sources
from hardscore_client.dataset import Failure, Item, read_item, read_manifest_items
from hardscore_client.errors import InputError, InputNotFoundError
from hardscore_client.sources import Entry, is_local, read_bytes, read_manifest, storage_options

ROWS = [
    {"uri": "images/a.png", "label": "3", "split": "train", "id": "a"},
    {"uri": "s3://bucket/b.png", "label": "", "split": "test", "id": "b"},
    {"uri": "file:///data/c.png", "label": "7", "split": "", "id": "c"},
    {"uri": "", "label": "1", "split": "", "id": "d"},
]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    if path.suffix == ".csv":
        keys = list(rows[0])
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats(tmp_path, suffix):
    manifest = _write(tmp_path / f"m{suffix}", ROWS)
    entries, bad = read_manifest(str(manifest))
    assert entries == [
        Entry(str(tmp_path / "images" / "a.png"), "3", "train", "a"),  # relative to the manifest
        Entry("s3://bucket/b.png", "", "test", "b"),                   # kept as given
        Entry("/data/c.png", "7", "", "c"),                            # file:// made a path
    ]
    assert [(b.row, b.message) for b in bad] == [(4, "empty 'uri'")]
    items, failures = read_manifest_items(str(manifest))
    assert items[1] == Item("s3://bucket/b.png", "", "test")
    assert failures == [Failure(f"{manifest} row 4", "uri", "empty 'uri'")]


def test_path_column_numbers_and_missing_values(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["/x/1.png", "/x/2.png"], "label": [3.0, None],
                             "extra": [1, 2]}), manifest)
    entries, bad = read_manifest(str(manifest))
    assert entries == [Entry("/x/1.png", "3"), Entry("/x/2.png")] and not bad
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "/x/1.png", "label": 4}\n\n{"path": "/x/2.png", "split": null}\n')
    assert read_manifest(str(jsonl))[0] == [Entry("/x/1.png", "4"), Entry("/x/2.png")]


def test_manifest_errors(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_manifest(str(tmp_path / "missing.csv"))
    with pytest.raises(InputNotFoundError):
        read_manifest(str(tmp_path / "missing.parquet"))
    with pytest.raises(InputError, match=r"unknown manifest format '\.txt'"):
        read_manifest(str(tmp_path / "m.txt"))
    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(InputError, match="no 'uri' \\(or 'path'\\) column; its columns are "
                                         "file, label"):
        read_manifest(str(tmp_path / "m.csv"))
    (tmp_path / "m.jsonl").write_text('{"uri": "a.png"}\n[1]\n')
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        read_manifest(str(tmp_path / "m.jsonl"))
    (tmp_path / "n.csv").write_text("uri\nnope://bucket/a.png\n")
    with pytest.raises(InputError, match="nope:// is not a protocol fsspec knows"):
        read_manifest(str(tmp_path / "n.csv"))
    (tmp_path / "h.csv").write_text("uri\nfile://elsewhere/a.png\n")
    entries, bad = read_manifest(str(tmp_path / "h.csv"))
    assert not entries and "another host" in bad[0].message


def test_local_reads_and_uri_kinds(tmp_path):
    image = tmp_path / "a b.png"
    image.write_bytes(b"png")
    assert read_bytes(str(image)) == b"png"
    assert read_bytes(image.as_uri()) == b"png"
    assert is_local(str(image)) and is_local(image.as_uri()) and is_local("C:\\x.png")
    assert not is_local("s3://bucket/a.png") and not is_local("gs://b/a.png")
    assert read_item(Item(str(tmp_path / "gone.png"))) == Failure(
        str(tmp_path / "gone.png"), "read", "No such file or directory")
    # A missing object at an fsspec URI (fsspec's in-memory filesystem) is a read failure.
    failure = read_item(Item("memory://nowhere/a.png"))
    assert isinstance(failure, Failure) and failure.reason == "read"
    assert "memory://nowhere/a.png: no such object" in failure.message


def test_remote_manifest_and_image_through_fsspec():
    """A manifest and its images at fsspec URIs (the in-memory filesystem: no network);
    relative entries are joined to the manifest's prefix."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/pool/images/a.png", b"first")
    fs.pipe("/pool/m.csv", b"uri,label\nimages/a.png,3\nmemory://other/b.png,\n")
    entries, bad = read_manifest("memory://pool/m.csv")
    assert entries == [Entry("memory://pool/images/a.png", "3"), Entry("memory://other/b.png")]
    assert read_bytes(entries[0].uri) == b"first" and not bad
    fs.rm("/pool", recursive=True)


def test_s3_endpoint_from_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert storage_options("s3") == {"max_concurrency": 1}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage_options("s3")["endpoint_url"] == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert storage_options("s3")["endpoint_url"] == "http://127.0.0.1:10"
    assert storage_options("gs") == {}
    assert sources.ENDPOINT_VARIABLES == ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
