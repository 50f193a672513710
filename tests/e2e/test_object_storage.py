"""A collection in object storage, end to end: a local S3-compatible server (moto, bound to
127.0.0.1) holds a few dozen digit PNGs and a Parquet manifest of them; ``score-dir --manifest
s3://...`` scores them through two real servers, one of which is stopped mid-run. Every image
must be in the table exactly once, with the scores of a single-server run of the same images
read from local files."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardscore_client import cli, dataset
from hardscore_client.dataset import Item, read_manifest_items, scan_folder, score_items
from hardscore_client.sources import filesystem
from hardscore_client.tables import read_table
from hardscore_wire.scores import SCORE_NAMES

from digits_example import write_digits_example
from server_process import ServerProcess, start_server

BUCKET = "hardscore-pool"
IMAGES = 48
SERVER_ARGS = ["--max-batch-size", "16", "--max-queue-delay-ms", "5", "--max-queue-size", "256"]


def _listening(port: int) -> list[str]:
    """The local addresses of the TCP sockets listening on ``port`` (what ``ss -ltn`` shows),
    read from /proc/net/tcp and tcp6."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # /proc prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    family = socket.AF_INET if width == 8 else socket.AF_INET6
                    found.append(socket.inet_ntop(family, words))
    return found


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (its default is every interface), with the usual AWS
    variables pointing at it; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    assert _listening(port) == ["127.0.0.1"], _listening(port)  # loopback only
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "hardscore-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "hardscore-test")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        env.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def pool(s3, tmp_path_factory) -> tuple[Path, list[Path], str]:
    """IMAGES digits written locally and uploaded to the bucket, and a Parquet manifest of
    them in the bucket: (local folder, local files, manifest URI)."""
    root = tmp_path_factory.mktemp("pool") / "digits"
    write_digits_example(root)
    files = [Path(it.path) for it in scan_folder(root)][:: 540 // IMAGES][:IMAGES]
    fs, _ = filesystem(f"s3://{BUCKET}/")
    fs.mkdir(BUCKET)
    keys = [f"digits/{p.parent.name}/{p.name}" for p in files]
    fs.pipe({f"{BUCKET}/{k}": p.read_bytes() for k, p in zip(keys, files, strict=True)})
    manifest = pa.table({
        "uri": [f"s3://{BUCKET}/{k}" for k in keys],
        "label": [p.parent.name for p in files],
        "split": ["test" if i % 4 == 0 else "train" for i in range(len(files))],
        "id": [p.stem for p in files],
    })
    buffer = io.BytesIO()
    pq.write_table(manifest, buffer)
    fs.pipe(f"{BUCKET}/manifests/pool.parquet", buffer.getvalue())
    return root, files, f"s3://{BUCKET}/manifests/pool.parquet"


def _key(path: str) -> str:
    """The image's class folder and name, the same for its local path and its s3:// URI."""
    return "/".join(path.rsplit("/", 2)[-2:])


def _by_key(columns: dict[str, np.ndarray]) -> dict[str, dict[str, object]]:
    return {_key(str(p)): {k: v[i] for k, v in columns.items()}
            for i, p in enumerate(columns["path"])}


@pytest.mark.parametrize("stop", ["kill", "drain"])
def test_s3_manifest_through_two_servers_one_stopped_mid_run(
        pool, tmp_path, monkeypatch, capsys, stop):
    _, files, manifest = pool
    items, failures = read_manifest_items(manifest)
    assert len(items) == IMAGES and not failures
    assert all(it.path.startswith(f"s3://{BUCKET}/digits/") for it in items)

    # Every read after the 9th waits until the first server is stopped: it is stopped while
    # the run holds batches for it (in its hands or in flight).
    reached, go = threading.Event(), threading.Event()
    reads = 0
    lock = threading.Lock()
    real_read = dataset.read_bytes

    def gated_read(uri: str) -> bytes:
        nonlocal reads
        with lock:
            reads += 1
            if reads >= 10:
                reached.set()
        if reads >= 10:
            go.wait(60)
        return real_read(uri)

    monkeypatch.setattr(dataset, "read_bytes", gated_read)
    first: ServerProcess = start_server(SERVER_ARGS)
    second: ServerProcess = start_server(SERVER_ARGS)
    try:
        out = tmp_path / "scores.parquet"
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["summary"] = score_items(
                    items, [first.target, second.target], out, batch_size=4, concurrency=2,
                    checkpoint_s=0.0, progress=False, timeout=120.0, failures=failures)
            except BaseException as e:  # reported by the assertion below
                outcome["error"] = e

        runner = threading.Thread(target=run)
        runner.start()
        assert reached.wait(60), "the run did not start reading"
        if stop == "kill":
            assert first.proc is not None
            first.proc.kill()  # dies: no drain
            first.wait()
        else:
            first.terminate()  # drains: new calls refused UNAVAILABLE, then it exits
        go.set()
        runner.join(120)
        assert not runner.is_alive() and "error" not in outcome, outcome
        summary = outcome["summary"]
        assert isinstance(summary, dataset.ScoreDirSummary)
        assert summary.scored == IMAGES and not summary.failures
        assert summary.per_server[f"1:{second.target}"] > 0
        # Given up at once, UNAVAILABLE (drained, or gone): with several servers a call does
        # not wait for a server that went away, so no batch waits out its 120 s deadline.
        err = capsys.readouterr().err
        assert f"server 0:{first.target} failed (UNAVAILABLE" in err, err

        remote = read_table(out)
        paths = list(remote["path"])
        assert len(paths) == IMAGES and len(set(paths)) == IMAGES  # every row once
        assert set(paths) == {it.path for it in items}  # the URI as given
        assert sorted(remote["split"]) == sorted(it.split for it in items)

        # The same images from local files, through the live server alone.
        local_out = tmp_path / "local.parquet"
        alone = score_items([Item(str(p), p.parent.name) for p in files], [second.target],
                            local_out, progress=False)
        assert alone.scored == IMAGES
        local = _by_key(read_table(local_out))
        assert set(local) == set(_by_key(remote))
        for key, row in _by_key(remote).items():
            expected = local[key]
            for name in ("label", "sha256", "prediction", "predicted_class", "given_label"):
                assert row[name] == expected[name], (key, name)
            for name in [n for n in SCORE_NAMES if n not in ("predicted_class", "given_label")]:
                np.testing.assert_allclose(float(row[name]), float(expected[name]),
                                           rtol=1e-6, atol=1e-7, err_msg=f"{key} {name}")

        # Resuming over the same table reads nothing again: every URI is already there.
        again = score_items(items, [second.target], out, progress=False)
        assert again.scored == 0 and again.already_scored == IMAGES
    finally:
        go.set()
        first.stop()
        second.stop()


def test_cli_score_dir_manifest_from_s3(pool, image_server, tmp_path, capsys):
    """``hardscore score-dir --manifest s3://...``: the endpoint and credentials from the
    environment, nothing on the command line."""
    _, files, manifest = pool
    out = tmp_path / "scores.csv"
    code = cli.main(["score-dir", "--manifest", manifest, "--server", image_server.target,
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"found {IMAGES} images ({IMAGES} with a given label)" in err
    table = read_table(out)
    assert len(table["path"]) == IMAGES
    assert all(str(p).startswith(f"s3://{BUCKET}/") for p in table["path"])
    # A missing object is a row with its reason, never a lost row or a lost run.
    fs, _ = filesystem(manifest)
    listing = pa.table({"uri": [f"s3://{BUCKET}/digits/none.png", "../digits/"
                                + "/".join(str(files[0]).rsplit("/", 2)[-2:])]})
    buffer = io.BytesIO()
    pq.write_table(listing, buffer)
    fs.pipe(f"{BUCKET}/manifests/partial.parquet", buffer.getvalue())
    out2 = tmp_path / "partial.csv"
    code = cli.main(["score-dir", "--manifest", f"s3://{BUCKET}/manifests/partial.parquet",
                     "--server", image_server.target, "--out", str(out2), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert f"failed s3://{BUCKET}/digits/none.png: read: s3://{BUCKET}/digits/none.png: " \
           "no such object" in err
    relative = f"s3://{BUCKET}/digits/{_key(str(files[0]))}"  # ".." resolved
    partial = read_table(out2)
    assert list(zip(partial["path"], partial["error"], strict=True)) == [
        (relative, ""), (f"s3://{BUCKET}/digits/none.png", "read")]
