"""SIGTERM under load loses nothing, over every RPC kind, run after run.

Each run starts a real server, drives it with concurrent callers (every kind: ScoreLogits,
ScoreImages, both streams, Open Inference Protocol ModelInfer, health Check, one health Watch),
sends SIGTERM at a random moment under load and lets the callers go on until the process has
exited. Accounting, per run:

- client side, every call ends OK (with a correct result) or UNAVAILABLE: never CANCELLED;
- server side, the "stopped" log line says how many calls' handlers started; each of them ended
  OK at its client (accepted = completed: zero lost), none was cut off;
- the Watch stream got SERVING, then NOT_SERVING, and ended OK; the process exited well within
  the grace period (nothing, the Watch included, held the drain).

A second test drains while long decodes run: with a 1 s grace period the process exits within
grace + 1 s, and the calls cut off are answered UNAVAILABLE (retryable), never CANCELLED.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import http.client
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as oip  # wire-identical; see test_inference_protocol
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import from_tensor, to_tensor

from conftest import metric, scrape
from hostile_images import slow_pngs
from server_process import ServerProcess, start_server

MODEL = "digits-resnet"
RUNS = 10
CALLERS = 12  # two per kind
GRACE_S = 5.0
IMAGES = 8
CHUNKS = 3
STOPPED = re.compile(r"stopped: (\d+) call\(s\) served, (\d+) refused while draining, "
                     r"(\d+) cut off")
NO_RETRIES = [("grpc.enable_retries", 0)]
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    code: grpc.StatusCode
    details: str = ""


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    signalled: float = 0.0
    exit_s: float = 0.0
    watch: list[str] = field(default_factory=list)
    watch_code: grpc.StatusCode | None = None
    late_watch: list[str] = field(default_factory=list)  # opened after the signal
    late_watch_code: grpc.StatusCode | None = None
    served: int = -1
    refused: int = -1
    cut_off: int = -1

    def ok(self, counted: bool = True) -> int:
        return sum(o.code == OK and (o.kind != "Check" or not counted) for o in self.outcomes)


class Digits:
    """Digit PNGs and the served model's predictions for them (asked once, before any load)."""

    def __init__(self) -> None:
        _, _, images, _ = heldout_split()
        self.pngs = [encode_png(img) for img in images[:64]]
        self.predicted: np.ndarray | None = None

    def pick(self, number: int) -> list[int]:
        return [(number * 5 + j) % len(self.pngs) for j in range(IMAGES)]

    def request(self, idx: list[int]) -> pb.ScoreImagesRequest:
        return pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=self.pngs[i]) for i in idx])

    def check(self, idx: list[int], predicted: np.ndarray) -> None:
        assert self.predicted is not None
        assert predicted.tolist() == self.predicted[idx].tolist()


def _logits(number: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(number)
    logits = rng.normal(size=(16, 10)).astype(np.float32)
    return logits, logits.argmax(axis=1).tolist()


async def _drive(server: ServerProcess, digits: Digits, run: Run, seed: int) -> None:
    with grpc.insecure_channel(server.target, options=NO_RETRIES) as sync_channel:
        await _drive_on(server, digits, run, seed, pb_grpc.ScoringServiceStub(sync_channel))


async def _drive_on(server: ServerProcess, digits: Digits, run: Run, seed: int,
                    sync_scoring: pb_grpc.ScoringServiceStub) -> None:
    async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
        scoring = pb_grpc.ScoringServiceStub(channel)
        infer = oip_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        counter = iter(range(1_000_000))

        async def reference() -> None:
            reply = await scoring.ScoreImages(digits.request(list(range(64))), timeout=30)
            digits.predicted = from_tensor(reply.scores.predicted_class)

        async def score_logits(n: int) -> None:
            logits, expected = _logits(n)
            reply = await scoring.ScoreLogits(pb.ScoreLogitsRequest(logits=to_tensor(logits)),
                                              timeout=30)
            assert from_tensor(reply.scores.predicted_class).tolist() == expected

        async def score_images(n: int) -> None:
            idx = digits.pick(n)
            reply = await scoring.ScoreImages(digits.request(idx), timeout=30)
            assert not reply.errors
            digits.check(idx, from_tensor(reply.scores.predicted_class))

        # The streams go through the synchronous API, as the SDK's do: grpcio's asyncio client
        # reports a stream the server refuses before the client has half-closed as INTERNAL
        # (its failed write overwrites the server's status: grpc/grpc issue 36066).
        def logits_stream_sync(n: int) -> None:
            chunks = [_logits(n * CHUNKS + k) for k in range(CHUNKS)]

            def requests() -> Iterator[pb.ScoreLogitsStreamRequest]:
                for logits, _ in chunks:
                    yield pb.ScoreLogitsStreamRequest(
                        chunk=pb.ScoreLogitsRequest(logits=to_tensor(logits)))
                    time.sleep(0.03)

            got = list(sync_scoring.ScoreLogitsStream(requests(), timeout=30))
            assert [from_tensor(r.scores.predicted_class).tolist() for r in got] == [
                expected for _, expected in chunks]

        def images_stream_sync(n: int) -> None:
            chunks = [digits.pick(n * CHUNKS + k) for k in range(CHUNKS)]

            def requests() -> Iterator[pb.ScoreImagesStreamRequest]:
                for idx in chunks:
                    yield pb.ScoreImagesStreamRequest(chunk=digits.request(idx))
                    time.sleep(0.03)

            got = list(sync_scoring.ScoreImagesStream(requests(), timeout=30))
            assert [r.first_row for r in got] == [k * IMAGES for k in range(CHUNKS)]
            for idx, r in zip(chunks, got, strict=True):
                digits.check(idx, from_tensor(r.result.scores.predicted_class))

        async def logits_stream(n: int) -> None:
            await asyncio.to_thread(logits_stream_sync, n)

        async def images_stream(n: int) -> None:
            await asyncio.to_thread(images_stream_sync, n)

        async def model_infer(n: int) -> None:
            idx = digits.pick(n)
            request = oip.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="images", datatype="BYTES", shape=[IMAGES]
                               ).contents.bytes_contents[:] = [digits.pngs[i] for i in idx]
            request.outputs.add(name="predicted_class")
            reply = await infer.ModelInfer(request, timeout=30)
            (output,) = reply.outputs
            digits.check(idx, np.array(output.contents.int64_contents))

        async def check(n: int) -> None:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status in (health_pb2.HealthCheckResponse.SERVING,
                                    health_pb2.HealthCheckResponse.NOT_SERVING)
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                not_serving.set()

        kinds: dict[str, Callable[[int], Awaitable[None]]] = {
            "ScoreLogits": score_logits, "ScoreImages": score_images,
            "ScoreLogitsStream": logits_stream, "ScoreImagesStream": images_stream,
            "ModelInfer": model_infer, "Check": check}

        async def one(kind: str, work: Callable[[], Awaitable[None]]) -> grpc.StatusCode:
            started = time.monotonic()
            try:
                await work()
                code, details = OK, ""
            except grpc.RpcError as exc:  # AioRpcError, or the synchronous API's error
                code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            run.outcomes.append(Outcome(kind, started, time.monotonic(), code, details))
            return code

        async def caller(kind: str) -> None:
            # Calls back to back; like a client behind a balancer, it leaves this server once
            # refused (or once a health check says NOT_SERVING).
            while True:
                number = next(counter)
                if await one(kind, functools.partial(kinds[kind], number)) != OK:
                    return
                if kind == "Check" and run.signalled and not_serving.is_set():
                    return

        not_serving = asyncio.Event()

        async def watch(late: bool = False) -> None:
            seen = run.late_watch if late else run.watch
            try:
                async for reply in health.Watch(health_pb2.HealthCheckRequest(), timeout=60):
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                code = OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            if late:
                run.late_watch_code = code
            else:
                run.watch_code = code

        async def signal_under_load() -> None:
            await asyncio.sleep(random.Random(seed).uniform(0.4, 0.9))
            run.signalled = time.monotonic()
            server.terminate()
            await asyncio.sleep(0.05)
            await watch(late=True)
            await asyncio.to_thread(server.wait, GRACE_S + 10)
            run.exit_s = time.monotonic() - run.signalled

        if digits.predicted is None:
            await one("ScoreImages", reference)
        watcher = asyncio.ensure_future(watch())
        names = list(kinds)
        await asyncio.wait_for(asyncio.gather(
            signal_under_load(), *[caller(names[i % len(names)]) for i in range(CALLERS)]),
            timeout=GRACE_S + 30)
        await asyncio.wait_for(watcher, 5)


def test_sigterm_under_load_loses_no_call_over_every_rpc_kind():
    digits = Digits()
    runs = []
    for seed in range(RUNS):
        server = start_server(["--grace-period-s", str(GRACE_S), "--max-batch-size", "16",
                               "--max-queue-size", "4096", "--max-queue-delay-ms", "2"])
        run = Run()
        try:
            asyncio.run(_drive(server, digits, run, seed))
        finally:
            server.stop()
        log = server.output()
        match = STOPPED.search(log)
        assert match, log
        run.served, run.refused, run.cut_off = (int(g) for g in match.groups())
        runs.append(run)

        bad = [o for o in run.outcomes if o.code not in (OK, UNAVAILABLE)]
        assert not bad, (seed, [(o.kind, round(o.started - run.signalled, 4),
                                  round(o.ended - run.signalled, 4), o.code.name, o.details)
                                 for o in bad])
        assert run.cut_off == 0, log
        # every call whose handler started completed with its (checked) result
        assert run.served == run.ok(), (seed, run.served, run.ok(), log)
        # a call answered UNAVAILABLE came after the signal
        assert all(o.ended > run.signalled for o in run.outcomes if o.code == UNAVAILABLE)
        assert run.watch == ["SERVING", "NOT_SERVING"] and run.watch_code == OK, run.watch
        # a Watch opened during the drain: NOT_SERVING and the end, or refused once closed
        assert (run.late_watch, run.late_watch_code) in (
            (["NOT_SERVING"], OK), ([], UNAVAILABLE)), (run.late_watch, run.late_watch_code)
        assert run.exit_s < GRACE_S, run.exit_s  # the drain waited for calls, not the grace
        assert "Traceback" not in log, log

    outcomes = [o for run in runs for o in run.outcomes]
    in_flight = [o for run in runs for o in run.outcomes
                 if o.started < run.signalled < o.ended and o.code == OK]
    kinds = {o.kind for o in outcomes}
    assert kinds == {"ScoreLogits", "ScoreImages", "ScoreLogitsStream", "ScoreImagesStream",
                     "ModelInfer", "Check"}
    assert {o.kind for o in in_flight} - {"Check"}, "no call was in flight at a signal"
    assert sum(run.refused for run in runs) > 0, "no call arrived during a drain"
    assert any(run.late_watch == ["NOT_SERVING"] for run in runs)
    print(f"\n{RUNS} runs x {CALLERS} callers: {sum(r.served for r in runs)} calls accepted, "
          f"{sum(r.ok() for r in runs)} completed OK, {len(in_flight)} of them in flight at "
          f"the signal, {sum(r.refused for r in runs)} refused UNAVAILABLE by the drain, "
          f"{sum(o.code == UNAVAILABLE for o in outcomes)} UNAVAILABLE in all, 0 lost; "
          f"exit after SIGTERM: max {max(r.exit_s for r in runs):.2f}s")


# -- long decodes ------------------------------------------------------------------------------

SLOW_IMAGES = 160
SLOW_CALLS = 4



def test_the_process_exits_within_grace_plus_one_second_while_decodes_run():
    grace = 1.0
    request = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p)
                                             for p in slow_pngs(SLOW_IMAGES)])
    server = start_server(["--grace-period-s", str(grace), "--preprocess-threads", "1",
                           "--max-queue-size", "1024"])
    outcomes: list[tuple[grpc.StatusCode, str]] = []
    exit_s = 0.0

    async def main() -> None:
        nonlocal exit_s
        async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
            stub = pb_grpc.ScoringServiceStub(channel)
            # a normal call first: the server serves
            small = await stub.ScoreImages(pb.ScoreImagesRequest(
                samples=request.samples[:2]), timeout=30)
            assert not small.errors

            async def slow() -> None:
                try:
                    await stub.ScoreImages(request, timeout=60)
                    outcomes.append((OK, ""))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((exc.code(), exc.details() or ""))

            calls = [asyncio.ensure_future(slow()) for _ in range(SLOW_CALLS)]
            while metric(scrape(server.metrics_url), "hardscore_calls_in_flight") < SLOW_CALLS:
                await asyncio.sleep(0.02)  # every call's images are decoding or waiting to
            signalled = time.monotonic()
            server.terminate()
            await asyncio.to_thread(server.wait, 30)
            exit_s = time.monotonic() - signalled
            await asyncio.gather(*calls)

    try:
        asyncio.run(main())
    finally:
        server.stop()
    log = server.output()
    print(f"\nexit {exit_s:.2f}s after SIGTERM with {SLOW_CALLS} calls of {SLOW_IMAGES} "
          f"slow images decoding, grace {grace}s")
    assert exit_s <= grace + 1.0, (exit_s, log)
    # the decodes (one thread, seconds of them) outlast the grace period: the calls still
    # running then are cut off, retryably; none is cancelled
    cut = [details for code, details in outcomes if code == UNAVAILABLE]
    assert len(outcomes) == SLOW_CALLS and len(cut) >= 1, outcomes
    assert all(code in (OK, UNAVAILABLE) for code, _ in outcomes), outcomes
    assert all("grace period ended" in details for details in cut), outcomes
    match = STOPPED.search(log)
    assert match and int(match[3]) == len(cut), log
    assert "Traceback" not in log, log


# -- the SDK's retry -----------------------------------------------------------------------------

def test_the_sdk_retries_a_call_refused_by_a_draining_server_on_another_one():
    """Two servers behind one target (A first): once A drains with a long call in flight, the
    SDK's calls are refused by A with UNAVAILABLE and a retry pushback past the moment A's port
    closes, and its retry policy sends them again, to B. Every one succeeds."""
    slow = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p) for p in slow_pngs(240)])
    # the grace period only bounds the long call, which must finish within it whatever the
    # machine's speed (it outlasted 10 s at load 5-14)
    a = start_server(["--grace-period-s", "240", "--preprocess-threads", "1",
                      "--max-queue-size", "1024"])
    b = start_server([])
    results: list[list[int]] = []
    try:
        # pick_first, so that every call goes to A while it serves (an ipv4: target is
        # spread round_robin by default)
        with ScoringClient(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", timeout=30,
                           load_balancing="pick_first") as client:
            logits, expected = _logits(0)
            assert client.score_logits(logits).predicted_class.tolist() == expected  # on A

            def long_call() -> None:
                with grpc.insecure_channel(a.target) as channel:
                    pb_grpc.ScoringServiceStub(channel).ScoreImages(slow, timeout=240)

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                long = pool.submit(long_call)
                while not metric(scrape(a.metrics_url), "hardscore_calls_in_flight"):
                    time.sleep(0.02)
                a.terminate()
                time.sleep(0.1)  # A is draining: refuses new calls, its long call goes on
                for number in range(1, 6):
                    logits, expected = _logits(number)
                    results.append(client.score_logits(logits).predicted_class.tolist())
                    assert results[-1] == expected
                on_b = metric(scrape(b.metrics_url), "hardscore_requests_total",
                              method="ScoreLogits", code="OK")
                long.result()  # A's call in flight finished with its result
        assert a.wait(60) == 0
    finally:
        a.stop()
        b.stop()
    match = STOPPED.search(a.output())
    assert match, a.output()
    served_on_a, refused_on_a = int(match[1]), int(match[2])
    assert served_on_a == 2, a.output()[-3000:]  # the first SDK call and the long one
    assert refused_on_a >= 1  # the SDK's first attempt after the signal
    assert on_b == 5  # every call after the signal, retried, was served by B


def test_rest_answers_503_while_draining_and_its_started_calls_finish():
    # The REST port drains as the gRPC one does: from SIGTERM on, new requests (on open
    # keep-alive connections and new ones) get 503 with Triton's error shape and readiness
    # turns false, while calls already started run to their result; then it closes.
    server = start_server(["--grace-period-s", str(GRACE_S), "--preprocess-threads", "1"])
    request = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p)
                                             for p in slow_pngs(SLOW_IMAGES)])
    try:
        answers, result = _rest_during_drain(server, request)
        assert server.wait(GRACE_S + 5) == 0
    finally:
        server.stop()
    assert not result.errors  # started before SIGTERM: it finished with its result
    refusal = json.dumps({"error": "the server is shutting down and accepts no new requests; "
                                   "retry (another replica)"}).encode()
    not_ready = json.dumps({"ready": False}).encode()  # KServe's body
    assert answers == [("/v2/health/ready", 400, not_ready),
                       (f"/v2/models/{MODEL}", 503, refusal)] * 2


def _rest_during_drain(server: ServerProcess, request: pb.ScoreImagesRequest
                       ) -> tuple[list[tuple[str, int, bytes]], pb.ScoreImagesResponse]:
    """Starts ``request`` over gRPC, sends SIGTERM while it decodes, then asks the REST port
    for readiness and metadata on a keep-alive connection opened before and on a new one."""
    kept = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    kept.request("GET", "/v2/health/ready")
    ready = kept.getresponse()
    ready.read()
    assert ready.status == 200
    with (concurrent.futures.ThreadPoolExecutor(1) as pool,
          grpc.insecure_channel(server.target, options=NO_RETRIES) as channel):
        started = pool.submit(pb_grpc.ScoringServiceStub(channel).ScoreImages, request,
                              timeout=60)
        while metric(scrape(server.metrics_url), "hardscore_calls_in_flight") < 1:
            time.sleep(0.02)  # its images are decoding
        server.terminate()
        time.sleep(0.1)
        answers = []
        for connection in (kept, http.client.HTTPConnection(
                "127.0.0.1", server.http_port, timeout=10)):
            for path in ("/v2/health/ready", f"/v2/models/{MODEL}"):
                connection.request("GET", path)
                reply = connection.getresponse()
                answers.append((path, reply.status, reply.read()))
        return answers, started.result(timeout=60)


# -- asyncio clients streaming into a drain ------------------------------------------------------

REFUSED_STREAMS = 24


def test_an_asyncio_client_streaming_into_a_drain_is_told_unavailable_not_internal():
    """grpcio's asyncio client reports a stream the server ends before the client has
    half-closed as INTERNAL "Internal error from Core" when one of its writes is in flight at
    that moment (grpc/grpc issue 36066): not retryable, and it hides the server's status. The
    gate reads a refused stream's messages until the client half-closes (bounded) before it
    answers, so streams written the way clients write them (all chunks at once, as the SDK's
    AsyncScoringClient; or spread over a few tens of milliseconds) get UNAVAILABLE."""
    slow = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p) for p in slow_pngs(240)])
    digits = Digits()
    server = start_server(["--grace-period-s", "10", "--preprocess-threads", "1",
                           "--max-queue-size", "1024"])
    outcomes: list[tuple[str, grpc.StatusCode, str]] = []

    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target, options=NO_RETRIES) as channel:
            stub = pb_grpc.ScoringServiceStub(channel)
            long = asyncio.ensure_future(stub.ScoreImages(slow, timeout=60))
            while not metric(scrape(server.metrics_url), "hardscore_calls_in_flight"):
                await asyncio.sleep(0.02)
            server.terminate()
            await asyncio.sleep(0.1)  # draining: the long call holds the refusal window open
            chunks = [digits.request(digits.pick(k)) for k in range(CHUNKS)]

            async def spread() -> AsyncIterator[pb.ScoreImagesStreamRequest]:
                for chunk in chunks:
                    yield pb.ScoreImagesStreamRequest(chunk=chunk)
                    await asyncio.sleep(0.03)

            async def one(number: int) -> None:
                requests: AsyncIterator[pb.ScoreImagesStreamRequest] | Iterator[
                    pb.ScoreImagesStreamRequest]
                if number % 2:
                    kind, requests = "spread", spread()
                else:  # every chunk at once, as AsyncScoringClient writes a stream
                    kind, requests = "at once", iter(
                        [pb.ScoreImagesStreamRequest(chunk=c) for c in chunks])
                try:
                    async for _ in stub.ScoreImagesStream(requests, timeout=30):
                        pass
                    outcomes.append((kind, OK, ""))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((kind, exc.code(), exc.details() or ""))

            await asyncio.gather(*[one(n) for n in range(REFUSED_STREAMS)])
            assert not (await long).errors  # the call in flight finished with its result

    try:
        asyncio.run(main())
        assert server.wait(30) == 0
    finally:
        server.stop()
    log = server.output()
    assert len(outcomes) == REFUSED_STREAMS
    assert all(code == UNAVAILABLE for _, code, _ in outcomes), [
        (kind, code.name, details) for kind, code, details in outcomes if code != UNAVAILABLE]
    assert all("shutting down" in details for _, _, details in outcomes), outcomes
    match = STOPPED.search(log)
    assert match and int(match[2]) == REFUSED_STREAMS, log
    assert "Traceback" not in log, log
