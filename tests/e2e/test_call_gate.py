"""Unparseable requests and deadline accounting, against a real server.

- **Unparseable requests**: random bytes and truncated messages, sent with identity
  (de)serializers to every method of every service on the port (hardscore.v1, the Open
  Inference Protocol, grpc.health.v1, reflection), unary and streaming, get INVALID_ARGUMENT
  naming the request type, one log line each and no traceback; normal calls work afterwards.
- **Deadlines**: a call whose deadline expires while its images are decoded is counted as
  DEADLINE_EXCEEDED (not CANCELLED) in ``hardscore_requests_total`` and its samples in
  ``hardscore_rejections_total{reason="deadline"}``; a call the client cancels is counted as
  CANCELLED and ``reason="cancelled"``; all scraped over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from hardscore_client import ScoringClient
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import to_tensor

from conftest import metric, scrape, served_oip_methods
from hostile_images import slow_pngs
from server_process import ServerProcess, start_server

MODEL = "digits-resnet"
GARBAGE = b"\xff\xff\xff\xff"  # an unterminated varint: no protobuf message parses it
TRUNCATED = b"\x0a\x05ab"  # field 1, 5 bytes announced, 2 sent


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    server = start_server(["--max-queue-size", "1024", "--max-batch-size", "16",
                           "--preprocess-threads", "1"])
    yield server
    server.stop()


def _methods() -> list[tuple[str, bool, bool]]:
    """(path, request streaming, response streaming) of every method served on the port."""
    found = []
    scoring = pb.DESCRIPTOR.services_by_name["ScoringService"]
    for m in scoring.methods:
        found.append((f"/{scoring.full_name}/{m.name}", m.client_streaming, m.server_streaming))
    for name in sorted(served_oip_methods()):
        found.append((f"/inference.GRPCInferenceService/{name}", False, False))
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    for m in health.methods:
        found.append((f"/{health.full_name}/{m.name}", m.client_streaming, m.server_streaming))
    found.append(("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True))
    return found


METHODS = _methods()


def _call_raw(channel: grpc.Channel, path: str, streaming_in: bool, streaming_out: bool,
              payload: bytes) -> grpc.RpcError:
    """Sends ``payload`` as the (first) request message; returns the error the call ended with."""
    kind: Any = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (streaming_in, streaming_out)]
    call = kind(path, request_serializer=None, response_deserializer=None)
    request = iter([payload]) if streaming_in else payload
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=30)
        if streaming_out:
            list(result)
    return caught.value


@pytest.mark.parametrize("payload", [GARBAGE, TRUNCATED], ids=["random", "truncated"])
def test_unparseable_requests_get_invalid_argument_on_every_method(server, payload):
    assert len(METHODS) >= 15
    lines_before = len(server.lines)
    before = scrape(server.metrics_url)
    with grpc.insecure_channel(server.target) as channel:
        for path, streaming_in, streaming_out in METHODS:
            error = _call_raw(channel, path, streaming_in, streaming_out, payload)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error)
            details = error.details() or ""
            assert "is not a valid" in details and "message" in details, (path, details)
            assert "DecodeError" in details, (path, details)
            if path.endswith("Stream"):  # hardscore.v1 streams name the message
                assert details.startswith("chunk") or "stream message 0" in details, details
    after = scrape(server.metrics_url)
    log = server.lines[lines_before:]
    assert not [line for line in log if "Traceback" in line or "Unexpected" in line], log
    for path, *_ in METHODS:  # one quiet line per call; hardscore.v1 streams answer it as
        # any invalid chunk (counted, not logged)
        lines = 0 if path.startswith("/hardscore.v1") and path.endswith("Stream") else 1
        assert sum(path in line and "is not a valid" in line for line in log) == lines, (
            path, log)
    # counted, as the client saw them, for the services that count their calls
    for name in ("ScoreLogits", "ScoreImages", "ScoreImagesStream", "ModelInfer"):
        assert (metric(after, "hardscore_requests_total", method=name, code="INVALID_ARGUMENT")
                - metric(before, "hardscore_requests_total", method=name,
                         code="INVALID_ARGUMENT")) == 1, name


def test_a_truncated_real_request_names_its_type_and_the_server_still_serves(server):
    request = pb.ScoreLogitsRequest(logits=to_tensor(np.zeros((64, 10), np.float32)))
    raw = request.SerializeToString()
    with grpc.insecure_channel(server.target) as channel:
        error = _call_raw(channel, "/hardscore.v1.ScoringService/ScoreLogits", False, False,
                          raw[: len(raw) // 2])
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid hardscore.v1.ScoreLogitsRequest message" in (error.details() or "")
        # a stream whose second message is cut: the first is scored, the second named
        stream = channel.stream_stream("/hardscore.v1.ScoringService/ScoreLogitsStream",
                                       request_serializer=None, response_deserializer=None)
        chunk = pb.ScoreLogitsStreamRequest(chunk=request).SerializeToString()
        replies = []
        with pytest.raises(grpc.RpcError) as caught:
            for reply in stream(iter([chunk, chunk[:-7]]), timeout=30):
                replies.append(reply)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stream message 1:" in (caught.value.details() or "")
        assert len(replies) <= 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        infer = oip_grpc.GRPCInferenceServiceStub(channel).ServerLive(oip.ServerLiveRequest())
        assert infer.live
    with ScoringClient(server.target) as client:
        result = client.score_logits(np.eye(10, dtype=np.float32) * 5)
    assert result.predicted_class.tolist() == list(range(10))


# -- deadlines ---------------------------------------------------------------------------------

SLOW_IMAGES = 160



@pytest.fixture(scope="module")
def slow_request() -> pb.ScoreImagesRequest:
    return pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=png)
                                          for png in slow_pngs(SLOW_IMAGES)])


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_an_expired_deadline_is_counted_as_deadline_exceeded(server, slow_request):
    before = scrape(server.metrics_url)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ScoreImages(slow_request, timeout=0.25)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = _settled(server, before, "ScoreImages")
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImages",
                  code="DEADLINE_EXCEEDED") == 1
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImages",
                  code="CANCELLED") == 0
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="deadline") == SLOW_IMAGES
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="cancelled") == 0
    _still_serves(server)


def test_a_call_the_client_cancels_is_counted_as_cancelled(server, slow_request):
    before = scrape(server.metrics_url)

    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = pb_grpc.ScoringServiceStub(channel).ScoreImages(slow_request, timeout=60)
            while not metric(scrape(server.metrics_url), "hardscore_calls_in_flight"):
                await asyncio.sleep(0.01)  # its handler has started: its images are decoding
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(cancel_midway())
    after = _settled(server, before, "ScoreImages")
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImages",
                  code="CANCELLED") == 1
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImages",
                  code="DEADLINE_EXCEEDED") == 0
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="cancelled") == SLOW_IMAGES
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="deadline") == 0
    _still_serves(server)


def test_an_expired_stream_is_counted_as_deadline_exceeded(server, slow_request):
    before = scrape(server.metrics_url)
    with grpc.insecure_channel(server.target) as channel:
        stream = pb_grpc.ScoringServiceStub(channel).ScoreImagesStream(
            iter([pb.ScoreImagesStreamRequest(chunk=slow_request)]), timeout=0.25)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = _settled(server, before, "ScoreImagesStream")
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImagesStream",
                  code="DEADLINE_EXCEEDED") == 1
    assert _delta(before, after, "hardscore_requests_total", method="ScoreImagesStream",
                  code="CANCELLED") == 0
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="deadline") == SLOW_IMAGES
    _still_serves(server)


def test_an_expired_open_inference_protocol_call_is_counted_as_deadline_exceeded(
        server, slow_request):
    request = oip.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="BYTES", shape=[SLOW_IMAGES]
                       ).contents.bytes_contents[:] = [s.encoded for s in slow_request.samples]
    before = scrape(server.metrics_url)
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=0.25)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = _settled(server, before, "ModelInfer")
    assert _delta(before, after, "hardscore_requests_total", method="ModelInfer",
                  code="DEADLINE_EXCEEDED") == 1
    assert _delta(before, after, "hardscore_requests_total", method="ModelInfer",
                  code="CANCELLED") == 0
    _still_serves(server)


def _codes(before: dict, after: dict, method: str) -> dict[str, float]:
    """How many calls of ``method`` the server counted since ``before``, by status code."""
    found: dict[str, float] = {}
    for (name, labels), value in after.items():
        if name == "hardscore_requests_total" and ("method", method) in labels:
            code = dict(labels)["code"]
            found[code] = value - before.get((name, labels), 0.0)
    return {code: n for code, n in found.items() if n}


EXPIRING = 6  # 960 samples: within the queue (1024)


async def _concurrent_codes(server: ServerProcess, request: pb.ScoreImagesRequest,
                            timeout: float, calls: int) -> list[grpc.StatusCode]:
    """The status of each of ``calls`` concurrent ScoreImages(``request``) calls over one
    channel, each with the deadline ``timeout`` (seconds)."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                await stub.ScoreImages(request, timeout=timeout)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
        return list(await asyncio.gather(*(one() for _ in range(calls))))


def test_calls_ended_by_their_deadline_are_never_counted_cancelled(server, slow_request):
    """Concurrent calls whose deadline passes while the server decodes them: every one is
    DEADLINE_EXCEEDED in the metrics, whichever side noticed first, and none of their samples
    is counted ``cancelled``."""
    before = scrape(server.metrics_url)

    codes = asyncio.run(_concurrent_codes(server, slow_request, 0.25, EXPIRING))
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * EXPIRING
    after = _settled(server, before, "ScoreImages", EXPIRING)
    dropped = _delta(before, after, "hardscore_calls_dropped_total", method="ScoreImages")
    handled = _codes(before, after, "ScoreImages")
    assert handled.get("DEADLINE_EXCEEDED", 0) + dropped == EXPIRING, handled
    assert set(handled) == {"DEADLINE_EXCEEDED"}, handled
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="cancelled") == 0
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="deadline") == SLOW_IMAGES * handled["DEADLINE_EXCEEDED"]
    _still_serves(server)


RESETS = 4


def test_a_reset_just_before_the_servers_deadline_is_counted_as_deadline_exceeded(
        server, slow_request):
    """The client's copy of a deadline starts before the server's, so a client whose deadline
    passes resets the call a little before the server's copy does: played here by clients
    that cancel 30 ms before their deadline. Each is DEADLINE_EXCEEDED, its samples
    ``deadline``."""
    before = scrape(server.metrics_url)

    async def reset_early() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.ScoringServiceStub(channel)

            async def one() -> None:
                call = stub.ScoreImages(slow_request, timeout=1.0)
                await asyncio.sleep(0.97)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            await asyncio.gather(*(one() for _ in range(RESETS)))

    asyncio.run(reset_early())
    after = _settled(server, before, "ScoreImages", RESETS)
    assert _codes(before, after, "ScoreImages") == {"DEADLINE_EXCEEDED": RESETS}
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="deadline") == SLOW_IMAGES * RESETS
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="cancelled") == 0
    _still_serves(server)


OVERLOAD = 400


def test_under_overload_expired_calls_are_never_counted_cancelled(server):
    """A burst of calls with a 50 ms deadline, far more than the server reads in that time:
    the calls the server's code saw are DEADLINE_EXCEEDED (or OK) in
    ``hardscore_requests_total`` or, when grpc ended them before their handler ran, in
    ``hardscore_calls_dropped_total``; none is CANCELLED, no sample ``cancelled``."""
    small = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=png)
                                           for png in slow_pngs(2, 64)])
    before = scrape(server.metrics_url)

    seen = asyncio.run(_concurrent_codes(server, small, 0.05, OVERLOAD))
    assert set(seen) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    time.sleep(1.0)  # the server's tasks for the last calls end
    after = scrape(server.metrics_url)
    handled = _codes(before, after, "ScoreImages")
    dropped = _delta(before, after, "hardscore_calls_dropped_total", method="ScoreImages")
    assert set(handled) <= {"OK", "DEADLINE_EXCEEDED"}, handled
    # a call can finish on the server just after its client's copy of the deadline passed
    assert handled.get("OK", 0) >= seen.count(grpc.StatusCode.OK)
    assert sum(handled.values()) + dropped <= OVERLOAD
    assert _delta(before, after, "hardscore_rejections_total", model=MODEL,
                  reason="cancelled") == 0
    _still_serves(server)


def _settled(server: ServerProcess, before: dict, method: str, calls: int = 1) -> dict:
    """The metrics once the server has recorded the end of ``calls`` calls of ``method`` (it may
    lag the client's), in ``hardscore_requests_total`` or ``hardscore_calls_dropped_total``."""
    deadline = time.monotonic() + 30

    def ended(samples: dict) -> float:
        return sum(v for (name, labels), v in samples.items()
                   if name in ("hardscore_requests_total", "hardscore_calls_dropped_total")
                   and ("method", method) in labels)
    while True:
        after = scrape(server.metrics_url)
        if ended(after) - ended(before) >= calls or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def _still_serves(server: ServerProcess) -> None:
    with ScoringClient(server.target) as client:
        result = client.score_images([slow_pngs(1, 32)[0]])
    assert not result.errors and result.predicted_class.shape == (1,)


# -- streams cancelled while their replies are written -----------------------------------------

CANCELLED_STREAMS = 60  # of each method; before the fix ~1 in 20 ScoreLogitsStream logged ERROR


def test_streams_cancelled_mid_write_log_no_error_and_are_counted(server):
    """Clients cancel ScoreLogitsStream, ScoreImagesStream and ModelStreamInfer streams at
    random moments while the server writes large replies (a write the core refuses because
    the client has just gone used to be logged by grpc as an ERROR with a traceback). The
    server log holds no ERROR and no traceback; every hardscore.v1 stream is counted exactly
    once, OK or CANCELLED (or dropped before its handler ran)."""
    rng = random.Random(7)
    rows = np.random.default_rng(0).normal(size=(20000, 10)).astype(np.float32)
    options = pb.ScoringOptions(include_probabilities=True, include_logits=True)
    logits = pb.ScoreLogitsStreamRequest(chunk=pb.ScoreLogitsRequest(
        logits=to_tensor(rows), options=options))
    pngs = slow_pngs(8, 32)
    images = pb.ScoreImagesStreamRequest(chunk=pb.ScoreImagesRequest(
        samples=[pb.ImageSample(encoded=p) for p in pngs], options=options))
    infer = oip.ModelInferRequest(model_name=MODEL)
    infer.inputs.add(name="images", datatype="BYTES", shape=[len(pngs)]
                     ).contents.bytes_contents[:] = pngs
    log_before = len(server.lines)
    before = scrape(server.metrics_url)

    async def one(channel: grpc.aio.Channel, kind: int) -> None:
        message: Any
        if kind == 0:
            call = pb_grpc.ScoringServiceStub(channel).ScoreLogitsStream(timeout=60)
            message = logits
        elif kind == 1:
            call = pb_grpc.ScoringServiceStub(channel).ScoreImagesStream(timeout=60)
            message = images
        else:
            call = oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=60)
            message = infer
        n = rng.randint(1, 12)

        async def write() -> None:
            for _ in range(n):
                await call.write(message)
            await call.done_writing()
        writer = asyncio.ensure_future(write())
        # sent before it is cancelled: a call cancelled before its client has sent it (1 to 2
        # ms after it was made, no reply read) never reaches the server, which cannot count it
        await call.wait_for_connection()
        with contextlib.suppress(grpc.RpcError):
            for _ in range(rng.randint(0, n)):  # read some replies, then leave mid-stream
                await call.read()
        await asyncio.sleep(rng.uniform(0, 0.02))
        call.cancel()
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer

    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            gate = asyncio.Semaphore(4)

            async def limited(i: int) -> None:
                async with gate:
                    await one(channel, i % 3)
            await asyncio.gather(*(limited(i) for i in range(3 * CANCELLED_STREAMS)))

    asyncio.run(main())

    def counted_all(samples: dict) -> bool:
        return all(sum(_codes(before, samples, m).values()) + _delta(
            before, samples, "hardscore_calls_dropped_total", method=m) >= CANCELLED_STREAMS
            for m in ("ScoreLogitsStream", "ScoreImagesStream"))

    until = time.monotonic() + 15.0  # the server's tasks for the last streams end (busy CPUs)
    while not counted_all(after := scrape(server.metrics_url)) and time.monotonic() < until:
        time.sleep(0.25)
    log = "\n".join(server.lines[log_before:])
    assert "ERROR" not in log and "Traceback" not in log, log[:3000]
    for method in ("ScoreLogitsStream", "ScoreImagesStream"):
        counted = _codes(before, after, method)
        dropped = _delta(before, after, "hardscore_calls_dropped_total", method=method)
        print(f"\n{method}: {CANCELLED_STREAMS} streams cancelled, counted {counted}, "
              f"dropped before their handler {dropped:g}, calls in flight "
              f"{metric(after, 'hardscore_calls_in_flight'):g}")
        # each exactly once: OK (answered in full before the cancel), CANCELLED, or dropped
        total = sum(counted.values()) + dropped
        assert total == CANCELLED_STREAMS, (method, counted, dropped)
        assert set(counted) <= {"OK", "CANCELLED"}, (method, counted)
    _still_serves(server)
