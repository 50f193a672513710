"""The first hour without a dead end, against real servers on 127.0.0.1:

1. a client pointed at the wrong place (closed port, unknown host, the REST or metrics port,
   plaintext against TLS and back, an untrusted CA, the wrong certificate name) says so in one
   line and exits 3 within a bounded time, instead of waiting forever;
2. ``score-dir`` takes the same connection flags as every client command (token from the
   environment or a file, TLS), and a missing token is named as such;
3. an image the server refuses for its size does not stall ``score-dir``: it is found, reported
   and skipped, and the others are scored.

Elapsed times are printed (``pytest -s``); only generous upper bounds are asserted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from hardscore_client import AsyncScoringClient, ConnectionFailed, ScoringClient
from hardscore_client.dataset import Item, score_items, too_large
from hardscore_client.errors import ServerUnavailableError
from hardscore_client.tables import read_table
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

from pki import Pki, make_pki
from server_process import ServerProcess, start_server

TOKEN = "first-hour-token-0123456789"
BOUND_S = 60.0
"""The answer must come well before this (seconds); the defaults give it in about 10 s."""


def hardscore(*args: str, env: dict[str, str] | None = None
              ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Runs the ``hardscore`` command line; (the process, seconds it took)."""
    environment = {k: v for k, v in os.environ.items() if k != "HARDSCORE_TOKEN"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hardscore_client.cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**environment, **(env or {})})
    elapsed = time.monotonic() - started
    print(f"hardscore {' '.join(args[:3])} ...: exit {proc.returncode} after {elapsed:.1f} s")
    return proc, elapsed


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's answer: the last line on stderr (newer grpcio versions may log their own
    lines about a failed TLS handshake before it)."""
    lines = proc.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[ServerProcess]:
    """The embedded model over TLS, with a bearer token."""
    tokens = pki.dir / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    server = start_server(["--tls-cert-file", str(pki.server_cert), "--tls-key-file",
                           str(pki.server_key), "--auth-tokens-file", str(tokens)])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    """The embedded model with a 256 KiB message limit and a queue of 8 samples."""
    server = start_server(["--max-message-bytes", str(256 * 1024), "--max-queue-size", "8",
                           "--max-batch-size", "8"])
    yield server
    server.stop()


def digit_folder(root: Path, count: int) -> list[Path]:
    """``count`` held-out digits as PNG files in class folders; their paths."""
    from hardscore_server.tools.digits import heldout_split

    _, _, images, labels = heldout_split()
    paths = []
    for i in range(count):
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit-{i:03d}.png"
        path.write_bytes(encode_png(images[i]))
        paths.append(path)
    return paths


# -- 1. silent waits -------------------------------------------------------------------------

def test_info_on_a_closed_port_answers_with_the_default_bound() -> None:
    port = closed_port()
    proc, elapsed = hardscore("info", "--server", f"127.0.0.1:{port}")  # default: 10 s
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""
    assert last_line(proc) == (f"cannot connect to 127.0.0.1:{port}: nothing listens on "
                               f"127.0.0.1:{port} (is the server running? the default gRPC "
                               "port is 8001)")
    assert elapsed < BOUND_S


def test_a_short_timeout_gives_the_diagnosis_not_a_bare_deadline(tmp_path: Path) -> None:
    port = closed_port()
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    proc, elapsed = hardscore("score-logits", "--server", f"127.0.0.1:{port}", "--timeout", "1",
                              "--logits", str(tmp_path / "x.npy"), "--out",
                              str(tmp_path / "x.csv"))
    assert proc.returncode == 3, proc.stderr
    assert "DEADLINE_EXCEEDED" not in proc.stderr
    assert last_line(proc).endswith(f"nothing listens on 127.0.0.1:{port} (is the server "
                                    "running? the default gRPC port is 8001)")
    assert elapsed < BOUND_S


def test_an_unknown_host() -> None:
    proc, elapsed = hardscore("info", "--server", "no-such-host.invalid:8001",
                              "--connect-timeout", "2")
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc).startswith("cannot connect to no-such-host.invalid:8001: cannot "
                                      "resolve host no-such-host.invalid (")
    assert elapsed < BOUND_S


@pytest.mark.parametrize("port", ["http_port", "metrics_port"])
def test_the_rest_and_metrics_ports(image_server: ServerProcess, port: str) -> None:
    where = f"127.0.0.1:{getattr(image_server, port)}"
    proc, elapsed = hardscore("info", "--server", where, "--connect-timeout", "2")
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc) == (
        f"cannot connect to {where}: {where} answers HTTP/1.x, not gRPC: this looks like the "
        "server's REST (8000) or metrics (8002) port; the gRPC port is 8001 by default")
    assert elapsed < BOUND_S


def test_plaintext_against_a_tls_server(tls_server: ServerProcess) -> None:
    proc, elapsed = hardscore("info", "--server", tls_server.target, "--connect-timeout", "2")
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc) == (
        f"cannot connect to {tls_server.target}: the server at {tls_server.target} uses TLS: "
        "pass --tls (and --tls-ca CA.pem when a private CA signed its certificate)")
    assert elapsed < BOUND_S


def test_tls_against_a_plaintext_server(image_server: ServerProcess, pki: Pki) -> None:
    proc, elapsed = hardscore("info", "--server", image_server.target, "--tls", "--tls-ca",
                              str(pki.ca), "--connect-timeout", "2")
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc).startswith(
        f"cannot connect to {image_server.target}: the server at {image_server.target} does "
        "not use TLS: drop --tls (TLS handshake: ")
    assert elapsed < BOUND_S


def test_an_untrusted_ca_and_a_wrong_name(tls_server: ServerProcess, pki: Pki) -> None:
    proc, elapsed = hardscore("info", "--server", tls_server.target, "--tls-ca",
                              str(pki.rogue_ca), "--connect-timeout", "2", "--token", TOKEN)
    assert proc.returncode == 3, proc.stderr
    line = last_line(proc)
    assert line.startswith(f"cannot connect to {tls_server.target}: the server's certificate "
                           "is not trusted by this CA (")
    assert line.endswith("): pass --tls-ca with the CA that signed it")
    assert elapsed < BOUND_S

    proc, elapsed = hardscore("info", "--server", tls_server.target, "--tls-ca", str(pki.ca),
                              "--tls-server-name", "elsewhere.example", "--connect-timeout",
                              "2", "--token", TOKEN)
    assert proc.returncode == 3, proc.stderr
    line = last_line(proc)
    assert "the server's certificate is not valid for the name 'elsewhere.example'" in line
    assert line.endswith("pass --tls-server-name with a name the certificate holds")
    assert elapsed < BOUND_S

    proc, _ = hardscore("info", "--server", tls_server.target, "--tls-ca", str(pki.ca),
                        "--token", TOKEN)
    assert proc.returncode == 0, proc.stderr
    assert 'name: "digits-resnet"' in proc.stdout


def test_the_sdk_raises_connection_failed_within_its_bound() -> None:
    target = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"nothing listens on") as caught, \
            ScoringClient(target, connect_timeout=2) as client:
        client.score_logits(np.zeros((2, 3), dtype=np.float32))
    elapsed = time.monotonic() - started
    print(f"ScoringClient: ConnectionFailed after {elapsed:.1f} s")
    assert (caught.value.target, caught.value.cause, caught.value.exit_code) == (
        target, "refused", 3)
    assert isinstance(caught.value, ServerUnavailableError)
    assert elapsed < BOUND_S

    async def first_call() -> None:
        async with AsyncScoringClient(target, connect_timeout=2) as client:
            await client.get_model_info()

    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"nothing listens on"):
        asyncio.run(first_call())
    elapsed = time.monotonic() - started
    print(f"AsyncScoringClient: ConnectionFailed after {elapsed:.1f} s")
    assert elapsed < BOUND_S


def test_once_connected_the_client_is_as_before(image_server: ServerProcess) -> None:
    with ScoringClient(image_server.target, connect_timeout=2) as client:
        first = client.score_logits(np.array([[2.0, 0.5, -1.0]], dtype=np.float32), [1])
        again = client.score_logits(np.array([[2.0, 0.5, -1.0]], dtype=np.float32), [1])
    assert first.predicted_class.tolist() == again.predicted_class.tolist() == [0]
    with pytest.raises(ValueError, match="connect_timeout must be > 0"):
        ScoringClient(image_server.target, connect_timeout=0)


# -- 2. score-dir on a secured server -------------------------------------------------------

def test_score_dir_with_token_and_tls(tls_server: ServerProcess, pki: Pki,
                                      tmp_path: Path) -> None:
    paths = digit_folder(tmp_path / "data", 12)
    out = tmp_path / "scores.csv"
    flags = ["score-dir", str(tmp_path / "data"), "--server", tls_server.target, "--tls-ca",
             str(pki.ca), "--no-progress", "--out", str(out)]

    proc, elapsed = hardscore(*flags)
    assert proc.returncode == 1, proc.stderr
    line = last_line(proc)
    assert line == (f"server 0:{tls_server.target} refused: UNAUTHENTICATED: missing bearer "
                    "token: send the metadata 'authorization: Bearer <token>' (pass --token, "
                    "--token-file or set HARDSCORE_TOKEN)")
    assert "start one" not in proc.stderr
    assert elapsed < BOUND_S

    proc, _ = hardscore(*flags, env={"HARDSCORE_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    table = read_table(out)
    assert sorted(table["path"].tolist()) == sorted(str(p) for p in paths)

    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    out.unlink()
    proc, _ = hardscore(*flags, "--token-file", str(token_file))
    assert proc.returncode == 0, proc.stderr
    assert len(read_table(out)["path"]) == len(paths)


def test_score_dir_says_why_a_server_cannot_be_reached(tmp_path: Path) -> None:
    digit_folder(tmp_path / "data", 2)
    port = closed_port()
    proc, elapsed = hardscore("score-dir", str(tmp_path / "data"), "--server",
                              f"127.0.0.1:{port}", "--connect-timeout", "2", "--no-progress",
                              "--out", str(tmp_path / "s.csv"))
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc) == (f"cannot connect to 127.0.0.1:{port}: nothing listens on "
                               f"127.0.0.1:{port} (is the server running? the default gRPC "
                               "port is 8001)")
    assert elapsed < BOUND_S


# -- 3. an image too large for the server ---------------------------------------------------

def test_an_image_too_large_is_reported_and_the_run_goes_on(small_server: ServerProcess,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = digit_folder(root, 20)
    noise = np.random.default_rng(3).integers(0, 256, size=(400, 400, 3), dtype=np.uint8)
    for label in ("3", "7"):
        (root / label).mkdir(exist_ok=True)
    big_file = root / "7" / "big-file.png"  # about 480 KB: over the 256 KiB message limit
    big_file.write_bytes(encode_png(noise))
    assert big_file.stat().st_size > 256 * 1024
    many_pixels = root / "3" / "many-pixels.png"  # 56 M pixels: over max_image_pixels (50 M)
    Image.new("L", (8000, 7000)).save(many_pixels)
    assert many_pixels.stat().st_size < 256 * 1024
    out = tmp_path / "scores.csv"

    proc, elapsed = hardscore("score-dir", str(root), "--server", small_server.target,
                              "--no-progress", "--out", str(out))
    assert proc.returncode == 4, proc.stderr  # some failed, the others scored
    assert elapsed < BOUND_S
    assert (f"failed {big_file}: size: refused alone: RESOURCE_EXHAUSTED: "
            in proc.stderr), proc.stderr
    assert "larger than max" in next(x for x in proc.stderr.splitlines() if str(big_file) in x)
    assert f"failed {many_pixels}: size: " in proc.stderr
    assert "exceeds the limit of 50000000" in proc.stderr
    assert last_line(proc).startswith("scored 20 images in ")
    assert last_line(proc).endswith("; 2 failed (rows with their reason in 'error')")

    table = read_table(out)  # the two that failed are rows with their reason
    assert sorted(table["path"][table["error"] != ""].tolist()) == sorted(
        [str(big_file), str(many_pixels)])
    assert set(table["error"][table["error"] != ""]) == {"size"}
    table = {k: v[table["error"] == ""] for k, v in table.items()}
    assert sorted(table["path"].tolist()) == sorted(str(p) for p in paths)
    with ScoringClient(small_server.target) as client:  # one image a call: the reference
        for path, hardness in zip(table["path"], table["hardness"], strict=True):
            alone = client.score_images([Path(path).read_bytes()])
            assert hardness == pytest.approx(float(alone.hardness[0]), rel=1e-9, abs=1e-12)


def test_refusals_that_cannot_change_are_told_from_busy_ones() -> None:
    assert too_large("Received message larger than max (491806 vs. 262144)")
    assert too_large("Sent message larger than max (70000000 vs. 67108864)")
    assert too_large("request of 32 samples can never fit the queue (max_queue_size 8); send "
                     "smaller requests")
    assert too_large("the request's images need an estimated 900.0 MiB of decode memory at "
                     "once (its largest images, decoded in parallel), more than this server's "
                     "decode budget of 512.0 MiB; send the large images in separate requests")
    assert too_large("samples has 32 images, more than this server takes in one message (8); "
                     "send chunks with ScoreImagesStream")
    assert not too_large("queue full: 8 samples waiting, 8 more would exceed max_queue_size 8; "
                         "retry later")
    assert not too_large("decode budget busy: 500.0 MiB of 512.0 MiB in use, this request needs "
                         "100.0 MiB and waited 30 s; retry later")
    assert not too_large("the server is shutting down and accepts no new work")


class _AlwaysBusy(pb_grpc.ScoringServiceServicer):
    """A stand-in for a server whose queue never empties (a real one cannot be kept full on
    demand): model info, then RESOURCE_EXHAUSTED for every image call."""

    def __init__(self) -> None:
        self.refused = 0

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
                     ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(class_names=[str(k) for k in range(10)])

    def ScoreImages(self, request: pb.ScoreImagesRequest, context: grpc.ServicerContext
                    ) -> pb.ScoreImagesResponse:
        self.refused += 1
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "queue full: 8 samples waiting, 2 more would exceed max_queue_size 8; "
                      "retry later")


def test_busy_refusals_are_retried_for_a_bounded_time(tmp_path: Path) -> None:
    busy = _AlwaysBusy()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScoringServiceServicer_to_server(busy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        paths = digit_folder(tmp_path / "data", 2)
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=(
                r"^every server failed \(0:127\.0\.0\.1:\d+: busy for \d+ s, \d+ "
                r"RESOURCE_EXHAUSTED refusals without a success, the last: (RESOURCE_EXHAUSTED: )?"
                r"queue full: .*retry later\); 2 images left unscored, written as rows with "
                r"error 'unavailable' \(run again to score them\)$")):
            score_items([Item(str(p)) for p in paths], [f"127.0.0.1:{port}"],
                        tmp_path / "s.csv", progress=False, busy_give_up_s=2.0, concurrency=1)
        elapsed = time.monotonic() - started
        print(f"gave up on the busy server after {elapsed:.1f} s, {busy.refused} refusals")
        assert busy.refused >= 2
        assert elapsed < BOUND_S
    finally:
        server.stop(None)
