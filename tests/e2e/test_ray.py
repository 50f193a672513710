"""The same collection through Ray Data on a local two-process cluster (a head and a worker
node, both bound to 127.0.0.1): ``hardscore score-ray`` writes Parquet whose scores equal a
score-dir run of the same images, a rerun skips them, and no Ray process listens beyond
loopback (read from /proc/net/tcp and tcp6)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardscore_client.dataset import Item, scan_folder, score_items
from hardscore_client.tables import read_table
from hardscore_wire.scores import SCORE_NAMES

from digits_example import write_digits_example

pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent
RAY = Path(sys.executable).with_name("ray")
IMAGES = 48
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
ENV = {"RAY_USAGE_STATS_ENABLED": "0",
       # Ray's token authentication on every process, with a token of the test's own
       # (RAY_AUTH_TOKEN_PATH, set by the fixture), whatever ~/.ray holds
       "RAY_AUTH_MODE": "token",
       # keeps 127.0.0.1 as the node address: without it Ray swaps it for the outward IP
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _socket_owners() -> dict[str, int]:
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owners[link[8:-1]] = int(pid)
        except OSError:
            continue
    return owners


def listeners() -> list[tuple[str, int, int | None]]:
    """Every listening TCP socket: (address, port, owning pid or None)."""
    owners = _socket_owners()
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":
                    continue
                address, _, port = fields[1].partition(":")
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, words), int(port, 16),
                              owners.get(fields[9])))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _descendants(roots: set[int]) -> set[int]:
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1]
                                    .split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _cluster_pids(temp_dir: str) -> set[int]:
    """The processes of our cluster: those naming its temp folder, and their children."""
    roots = {int(p) for p in filter(str.isdigit, os.listdir("/proc"))
             if temp_dir in _cmdline(int(p))}
    return _descendants(roots)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, str]]:
    """A head (``ray start --head``) and a worker node on 127.0.0.1; yields the address and
    the cluster's temp folder (which names its processes)."""
    temp_dir = tempfile.mkdtemp(prefix="hs-ray-", dir="/tmp")  # short: Unix socket paths
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    ENV["RAY_AUTH_TOKEN_PATH"] = str(token)
    env = {**os.environ, **ENV}
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--include-dashboard", "false",
                        "--disable-usage-stats", "--num-cpus", "1", "--temp-dir", temp_dir],
                       env=env, check=True, capture_output=True, timeout=120)
        worker = subprocess.run([sys.executable, str(HERE / "ray_worker_node.py"), address,
                                 temp_dir], env=env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr[-3000:]
        yield address, temp_dir
    finally:
        pids = _cluster_pids(temp_dir)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Item]:
    root = tmp_path_factory.mktemp("ray") / "digits"
    write_digits_example(root)
    return scan_folder(root)[:: 540 // IMAGES][:IMAGES]


def test_score_ray_equals_score_dir_on_a_loopback_cluster(cluster, images, image_server,
                                                          tmp_path):
    address, temp_dir = cluster
    pids = _cluster_pids(temp_dir)
    wide = [(a, p, pid) for a, p, pid in listeners() if pid in pids and a not in LOOPBACK]
    assert not wide, [(a, p, _cmdline(pid)[:80]) for a, p, pid in wide]
    assert len({pid for _, _, pid in listeners() if pid in pids}) >= 4  # gcs, 2 raylets...

    manifest = tmp_path / "m.parquet"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    pq.write_table(pa.table({"uri": [it.path for it in images] + [str(broken)],
                             "label": [it.label for it in images] + ["3"]}), manifest)
    out = tmp_path / "ray-out"
    command = [sys.executable, "-m", "hardscore_client.cli", "score-ray", "--manifest",
               str(manifest), "--server", image_server.target, "--out", str(out), "--table",
               str(tmp_path / "ray.parquet"), "--actors", "2", "--batch-size", "8"]
    env = {**os.environ, **ENV, "RAY_ADDRESS": address}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 4, run.stderr[-3000:]  # broken.png failed: a row with its reason
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"scored {IMAGES} images in ") and last.endswith(
        f"; 0 already in {out}; 1 failed (decode 1)"), last
    # the job ran on our cluster's nodes, and still nothing listens beyond loopback
    wide = [(a, p, _cmdline(pid)[:80]) for a, p, pid in listeners()
            if pid in _cluster_pids(temp_dir) and a not in LOOPBACK]
    assert not wide, wide

    ray_rows = read_table(tmp_path / "ray.parquet")
    assert len(ray_rows["path"]) == IMAGES + 1
    failed = ray_rows["error"] != ""
    assert ray_rows["path"][failed].tolist() == [str(broken)]
    assert ray_rows["error"][failed].tolist() == ["decode"]

    local = tmp_path / "local.parquet"
    alone = score_items(images, [image_server.target], local, progress=False)
    assert alone.scored == IMAGES
    ref = read_table(local)
    by_path = {p: i for i, p in enumerate(ray_rows["path"].tolist())}
    rows = [by_path[p] for p in ref["path"].tolist()]
    for name in ("label", "sha256", "prediction", "predicted_class", "given_label"):
        assert ray_rows[name][rows].tolist() == ref[name].tolist(), name
    for name in [n for n in SCORE_NAMES if n not in ("predicted_class", "given_label")] + [
            c for c in ref if c.startswith("p_")]:
        np.testing.assert_allclose(ray_rows[name][rows].astype(float), ref[name].astype(float),
                                   rtol=1e-6, atol=1e-7, err_msg=name)

    # Again: every row is in the folder (the decode failure is kept): nothing is sent.
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 4, again.stderr[-2000:]  # the kept decode failure
    assert again.stderr.strip().splitlines()[-1].endswith(
        f"; {IMAGES + 1} already in {out}; 1 failed")


def test_in_process_scores_equal_the_services_on_a_loopback_cluster(cluster, images,
                                                                   image_server, tmp_path):
    """``hardscore-ray-score`` (the model inside Ray's actors, no server) on the same cluster:
    the scores of a score-dir run through a server of the same model directory; the broken
    file a ``decode`` row."""
    address, temp_dir = cluster
    manifest = tmp_path / "m.parquet"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    pq.write_table(pa.table({"uri": [it.path for it in images] + ["broken.png"],
                             "label": [it.label for it in images] + ["3"]}), manifest)
    out = tmp_path / "in-process"
    command = [sys.executable, "-m", "hardscore_server.tools.ray_scorer", "--manifest",
               str(manifest), "--out", str(out), "--actors", "2", "--batch-size", "8",
               "--execution-provider", "cpu", "--no-progress"]
    env = {**os.environ, **ENV, "RAY_ADDRESS": address}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200)
    assert run.returncode == 4, run.stderr[-3000:]  # broken.png: a row with its reason
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"scored {IMAGES} images in ") and last.endswith(
        f"into {out}; 1 failed (decode 1)"), last
    wide = [(a, p, _cmdline(pid)[:80]) for a, p, pid in listeners()
            if pid in _cluster_pids(temp_dir) and a not in LOOPBACK]
    assert not wide, wide

    got = pq.read_table(sorted(out.glob("*.parquet"))).to_pydict()
    assert len(got["path"]) == IMAGES + 1
    by_path = {p: i for i, p in enumerate(got["path"])}
    bad = by_path[str(broken)]  # a relative entry: the manifest's folder's, shown absolute
    assert (got["error"][bad], got["predicted_class"][bad]) == ("decode", -1)

    local = tmp_path / "local.parquet"
    assert score_items(images, [image_server.target], local, progress=False).scored == IMAGES
    ref = read_table(local)
    rows = [by_path[p] for p in ref["path"].tolist()]
    for name in [n for n in ("label", "sha256", "prediction", "model", "model_version",
                             "predicted_class", "given_label", "error") if n in ref]:
        assert [got[name][r] for r in rows] == ref[name].tolist(), name
    for name in [n for n in SCORE_NAMES if n not in ("predicted_class", "given_label")] + [
            c for c in ref if c.startswith("p_")]:
        np.testing.assert_allclose([got[name][r] for r in rows], ref[name].astype(float),
                                   rtol=1e-6, atol=1e-7, err_msg=name)
