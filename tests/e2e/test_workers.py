"""``--workers 2``: two server processes on one port under a supervisor (supervisor.py).

- Calls on separate connections land on both processes (the kernel spreads connections over the
  SO_REUSEPORT group), and the supervisor's /metrics, scraped over HTTP, is the sum of the
  workers' own: request and sample counts equal what this test sent.
- SIGTERM to the supervisor drains both workers: calls in flight on each finish with their
  results, every worker exits, the supervisor exits 0.
- A worker that dies is not restarted silently: the supervisor says so, stops the other worker
  and exits 1; a killed supervisor leaves no worker behind; start-up failures exit with the
  single server's codes (3 model, 4 port).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.utils.shared_memory as shm

from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import from_tensor

from conftest import metric, scrape
from oip_inputs import infer_input, model_input
from server_process import ServerProcess, start_server

WORKER_SERVING = re.compile(
    r"^worker (\d+) \| .*serving gRPC on [^ ]+:(\d+), metrics on [^ ]+:(\d+)")
PIDS = re.compile(r"\(2 workers, pids (\d+), (\d+)\)")
CALLS = 24
PER_CALL = 4


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    _, _, images, _ = heldout_split()
    return [encode_png(img) for img in images[:64]]


def worker_metrics_urls(server: ServerProcess) -> dict[int, str]:
    """Each worker's own /metrics (from its relayed "serving" line)."""
    found = {}
    for line in server.lines:
        match = WORKER_SERVING.search(line)
        if match:
            found[int(match[1])] = f"http://127.0.0.1:{match[3]}/metrics"
    return found


def worker_pids(server: ServerProcess) -> list[int]:
    match = PIDS.search(server.output())
    assert match, server.output()
    return [int(match[1]), int(match[2])]


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def call(target: str, pngs: list[bytes], timeout: float = 60) -> pb.ScoreImagesResponse:
    """One ScoreImages call on a connection of its own (no subchannel shared with others)."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1),
               ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        request = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p) for p in pngs])
        return stub.ScoreImages(request, timeout=timeout, wait_for_ready=True)


@pytest.fixture()
def two_workers() -> Iterator[ServerProcess]:
    server = start_server(["--workers", "2", "--max-batch-size", "16",
                           "--max-queue-size", "8192", "--grace-period-s", "60"])
    yield server
    server.stop()


def test_calls_reach_both_workers_and_metrics_sum(two_workers: ServerProcess, pngs):
    urls = worker_metrics_urls(two_workers)
    assert sorted(urls) == [0, 1]
    assert two_workers.metrics_port not in {int(u.split(":")[2].split("/")[0])
                                            for u in urls.values()}
    replies = [call(two_workers.target, pngs[i:i + PER_CALL]) for i in range(CALLS)]
    for i, reply in enumerate(replies):
        assert not reply.errors
        assert len(from_tensor(reply.scores.predicted_class)) == PER_CALL, i

    total = scrape(two_workers.metrics_url)
    per_worker = [scrape(urls[i]) for i in (0, 1)]
    ok = {"method": "ScoreImages", "code": "OK"}
    calls = [metric(w, "hardscore_requests_total", **ok) for w in per_worker]
    assert all(c > 0 for c in calls), calls  # both processes served
    assert sum(calls) == CALLS
    assert metric(total, "hardscore_requests_total", **ok) == CALLS
    assert metric(total, "hardscore_samples_scored_total", kind="images") == CALLS * PER_CALL
    assert metric(total, "hardscore_batch_size_sum", model="digits-resnet") == CALLS * PER_CALL
    assert metric(total, "hardscore_request_duration_seconds_count",
                  method="ScoreImages") == CALLS
    assert metric(total, "hardscore_workers") == 2
    # one model, served by both: the info gauge is not doubled
    info = [v for (name, _), v in total.items() if name == "hardscore_model_info"]
    assert info == [1.0]


def test_sigterm_drains_every_worker_then_the_supervisor_exits(two_workers: ServerProcess, pngs):
    urls = worker_metrics_urls(two_workers)
    pids = worker_pids(two_workers)
    big = [pngs[i % len(pngs)] for i in range(1024)]
    results: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            results[i] = call(two_workers.target, big, timeout=120)
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    # wait until both workers are computing (samples scored on each), then SIGTERM
    deadline = time.monotonic() + 60
    while not all(metric(scrape(urls[i]), "hardscore_samples_scored_total", kind="images") > 0
                  for i in (0, 1)):
        assert time.monotonic() < deadline, "both workers never got a call"
        time.sleep(0.02)
    two_workers.terminate()
    assert two_workers.wait(120) == 0
    for t in threads:
        t.join(10)
    for i in range(8):
        reply = results[i]
        assert isinstance(reply, pb.ScoreImagesResponse), reply
        assert not reply.errors
        predicted = np.asarray(from_tensor(reply.scores.predicted_class), dtype=np.int64)
        assert len(predicted) == 1024 and np.all(predicted >= 0)
    assert all(gone(pid) for pid in pids)
    out = two_workers.output()
    for index in (0, 1):
        assert f"worker {index} | " in out and re.search(rf"worker {index} \| .*stopped", out)
    assert "received SIGTERM: draining 2 workers" in out


def test_a_dead_worker_is_not_restarted_silently(two_workers: ServerProcess):
    pids = worker_pids(two_workers)
    os.kill(pids[0], signal.SIGKILL)
    assert two_workers.wait(60) == 1
    out = two_workers.output()
    assert f"worker 0 (pid {pids[0]}) exited with code -9; not restarted" in out
    assert re.search(r"worker 1 \| .*stopped", out)
    assert all(gone(pid) for pid in pids)


def test_workers_do_not_outlive_a_killed_supervisor(two_workers: ServerProcess):
    pids = worker_pids(two_workers)
    assert two_workers.proc is not None
    two_workers.proc.kill()  # SIGKILL: no drain by the supervisor; the kernel tells the workers
    two_workers.wait(30)
    deadline = time.monotonic() + 60
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.05)


def test_workers_serve_health_on_the_shared_port(two_workers: ServerProcess):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(two_workers.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with urllib.request.urlopen(two_workers.metrics_url, timeout=10) as page:
        assert b"hardscore_workers 2.0" in page.read()
    # the supervisor's endpoint is the single server's: /metrics only
    other = two_workers.metrics_url.replace("/metrics", "/healthz")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(other, timeout=10)
    assert caught.value.code == 404


def supervisor_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardscore_server.main", "--workers", "2", "--host", "127.0.0.1",
         "--port", "0", "--metrics-host", "127.0.0.1", *args],
        capture_output=True, text=True, timeout=120)


def test_start_up_failures_give_the_single_server_exit_codes(tmp_path):
    # a model that does not load: every worker exits 3, so does the supervisor
    bad = tmp_path / "bad"
    shutil.copytree(DEFAULT_MODEL_DIR, bad)
    (bad / "model.onnx").write_bytes(b"not an onnx graph")
    done = supervisor_exit("--model-dir", str(bad), "--metrics-port", "0")
    assert done.returncode == 3, done.stderr
    assert re.search(r"worker \d \(pid \d+\) exited with code 3 while starting", done.stderr)
    # the metrics port is taken: 4, after the workers were drained
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = supervisor_exit("--metrics-port", str(taken.getsockname()[1]))
    assert done.returncode == 4, done.stderr
    assert "cannot bind metrics 127.0.0.1" in done.stderr
    assert re.search(r"worker 1 \| .*stopped", done.stderr)


def test_workers_share_the_rest_port(two_workers: ServerProcess):
    # KServe V2 REST binds the one port with SO_REUSEPORT in every worker, as gRPC does
    from conftest import http

    assert two_workers.http_url.startswith("http://127.0.0.1:")
    images = np.zeros((1, 3, 32, 32), dtype=np.float32)  # the model's own input
    body = json.dumps({"inputs": [{"name": "images", "shape": list(images.shape),
                                   "datatype": "FP32", "data": images.ravel().tolist()}],
                       "outputs": [{"name": "hardness"}]}).encode()
    for _ in range(8):  # new connections each: the kernel spreads them over the workers
        status, _headers, _body = http(two_workers, "/v2/health/ready")
        assert status == 200
        status, _headers, reply = http(two_workers, "/v2/models/digits-resnet/infer", body,
                                       {"Content-Type": "application/json"})
        assert status == 200, reply
        outputs = {o["name"]: o for o in json.loads(reply)["outputs"]}
        assert len(outputs["hardness"]["data"]) == 1


SHM_CALLS = 20


def test_a_shared_memory_region_works_on_every_worker(two_workers: ServerProcess, pngs):
    """A region registered over one connection is known to every worker: ModelInfer over 20
    new connections (spread over both processes) reads its input from it and writes its
    output to it; once unregistered (over yet another connection) every worker refuses it
    with the same message. Before: 11 of 20 failed "not registered"."""
    _, _, images, _ = heldout_split()
    x = model_input(images[:4])
    handles = []
    names = {}
    for role, size in (("in", x.nbytes), ("out", 1024)):
        name = f"hs-{role}-{uuid.uuid4().hex[:12]}"
        handles.append(shm.create_shared_memory_region(name, f"/{name}", size))
        names[role] = name
    try:
        shm.set_shared_memory_region(handles[0], [x])
        registrar = tgrpc.InferenceServerClient(two_workers.target)
        registrar.register_system_shared_memory(names["in"], f"/{names['in']}", x.nbytes)
        registrar.register_system_shared_memory(names["out"], f"/{names['out']}", 1024)
        registrar.close()
        with tgrpc.InferenceServerClient(two_workers.target) as client:
            expected = client.infer("digits-resnet", [infer_input(tgrpc, "images", x, "FP32")])

        def infer_once() -> Any:
            with tgrpc.InferenceServerClient(two_workers.target) as client:  # a new connection
                tensor = tgrpc.InferInput("images", list(x.shape), "FP32")
                tensor.set_shared_memory(names["in"], x.nbytes)
                logits = tgrpc.InferRequestedOutput("logits")
                logits.set_shared_memory(names["out"], 4 * 10 * 4)
                predicted = tgrpc.InferRequestedOutput("predicted_class")
                return client.infer("digits-resnet", [tensor], outputs=[logits, predicted])

        before = [scrape(u) for u in worker_metrics_urls(two_workers).values()]
        for _ in range(SHM_CALLS):
            result = infer_once()
            np.testing.assert_array_equal(result.as_numpy("predicted_class"),
                                          expected.as_numpy("predicted_class"))
            written = shm.get_contents_as_numpy(handles[1], np.float32, [4, 10])
            np.testing.assert_allclose(written, expected.as_numpy("logits"), atol=1e-5)
        after = [scrape(u) for u in worker_metrics_urls(two_workers).values()]
        ok = {"method": "ModelInfer", "code": "OK"}
        served = [metric(a, "hardscore_requests_total", **ok)
                  - metric(b, "hardscore_requests_total", **ok)
                  for b, a in zip(before, after, strict=True)]
        assert sum(served) == SHM_CALLS and all(served), served  # both workers read it

        with tgrpc.InferenceServerClient(two_workers.target) as client:
            status = client.get_system_shared_memory_status(as_json=True)
            assert set(status["regions"]) == set(names.values())
            client.unregister_system_shared_memory(names["in"])
        refused = 0
        for _ in range(SHM_CALLS):
            with pytest.raises(Exception) as caught:
                infer_once()
            assert f"names shared memory region '{names['in']}', which is not registered" in (
                str(caught.value))
            refused += 1
        assert refused == SHM_CALLS
        with tgrpc.InferenceServerClient(two_workers.target) as client:
            status = client.get_system_shared_memory_status(as_json=True)
            assert set(status.get("regions", {})) == {names["out"]}
            client.unregister_system_shared_memory()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
