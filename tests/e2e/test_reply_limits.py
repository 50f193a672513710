"""Replies within the message limit: a request whose reply cannot fit is refused before it is
scored (INVALID_ARGUMENT naming the streaming RPC), and the SDK sizes its chunks so that it
never sends one."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.pipeline.scores import score_logits
from hardscore_server.transport.hardscore_v1.replies import (
    image_reply_bytes,
    scores_bytes,
    scores_reply_bytes,
)
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import to_tensor

from conftest import metric, scrape
from server_process import ServerProcess, start_server

SMALL_LIMIT = 100_000
"""max_message_bytes of the small server, in bytes."""


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    """A logits-only server with the default message and row limits."""
    server = start_server(["--no-model"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerProcess]:
    """A logits-only server whose messages are at most SMALL_LIMIT bytes."""
    server = start_server(["--no-model", "--max-message-bytes", str(SMALL_LIMIT)])
    yield server
    server.stop()


def _stub(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.ScoringServiceStub]:
    """A raw stub whose own limits are far above the server's (the server must refuse)."""
    big = 256 * 1024 * 1024
    channel = grpc.insecure_channel(server.target, options=[
        ("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)])
    return channel, pb_grpc.ScoringServiceStub(channel)


def _request(n: int, classes: int = 2, seed: int = 0) -> pb.ScoreLogitsRequest:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, size=n).tolist()
    return pb.ScoreLogitsRequest(logits=to_tensor(logits),
                                 labels=pb.GivenLabels(indices=pb.LabelIndices(values=labels)))


def _largest_fitting(limit: int, first_row: int | None = None) -> int:
    """The most labelled two-class rows whose reply fits in ``limit`` bytes."""
    n = 1
    while scores_reply_bytes(scores_bytes(n + 1, 2, labelled=True), first_row) <= limit:
        n += 1
    return n


def _codes(server: ServerProcess, method: str) -> dict[str, float]:
    samples = scrape(server.metrics_url)
    return {code: metric(samples, "hardscore_requests_total", method=method, code=code)
            for code in ("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL")}


def test_a_million_labelled_rows_are_refused_before_scoring(default_server):
    request = _request(1_000_000)
    assert request.ByteSize() == 9_000_030  # the request fits, its 72 MB reply does not
    before = _codes(default_server, "ScoreLogits")
    channel, stub = _stub(default_server)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreLogits(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            "the reply to these 1000000 rows would be 72000179 bytes, more than the server's "
            "max_message_bytes (67108864); send at most about 932065 rows per chunk with "
            "ScoreLogitsStream")
        after = _codes(default_server, "ScoreLogits")
        assert {k: after[k] - before[k] for k in after} == {
            "OK": 0, "INVALID_ARGUMENT": 1, "RESOURCE_EXHAUSTED": 0, "INTERNAL": 0}
        # a normal request still succeeds
        reply = stub.ScoreLogits(_request(10), timeout=30)
        assert reply.scores.num_rows == 10
    assert "Traceback" not in default_server.output()


def test_sdk_scores_a_million_labelled_rows_under_the_default_limit(default_server):
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=4, size=(1_000_000, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=1_000_000)
    with ScoringClient(default_server.target) as client:
        result = client.score_logits(logits, labels)
    local = score_logits(logits, labels)
    assert len(result) == 1_000_000
    np.testing.assert_array_equal(result.predicted_class, local.predicted_class)
    for name in ("confidence", "margin", "hardness", "hardness_normalized", "mistakenness",
                 "mistakenness_confidence", "label_issue_score", "margin_issue_score"):
        np.testing.assert_array_equal(getattr(result, name), getattr(local, name), err_msg=name)


def test_the_limit_is_exact_for_calls_and_stream_chunks(small_server):
    n = _largest_fitting(SMALL_LIMIT)
    before = {m: _codes(small_server, m) for m in ("ScoreLogits", "ScoreLogitsStream")}
    channel, stub = _stub(small_server)
    with channel:
        assert stub.ScoreLogits(_request(n), timeout=30).ByteSize() <= SMALL_LIMIT
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreLogits(_request(n + 1), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "with ScoreLogitsStream" in (info.value.details() or "")
        # a stream's second chunk starts at row 10: its reply carries first_row too
        m = _largest_fitting(SMALL_LIMIT, first_row=10)
        chunks = [_request(10), _request(m), _request(10)]
        replies = list(stub.ScoreLogitsStream(pb.ScoreLogitsStreamRequest(chunk=c) for c in chunks))
        assert [r.first_row for r in replies] == [0, 10, 10 + m]
        stream = stub.ScoreLogitsStream(
            pb.ScoreLogitsStreamRequest(chunk=c) for c in [_request(10), _request(m + 1)])
        first = next(stream)
        assert first.scores.num_rows == 10
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(
            f"chunk 1 (stream rows from 10): the reply to these {m + 1} rows would be")
        assert "send smaller chunks" in (info.value.details() or "")
        assert stub.ScoreLogits(_request(5), timeout=30).scores.num_rows == 5
    for method, expected in (("ScoreLogits", {"OK": 2, "INVALID_ARGUMENT": 1}),
                             ("ScoreLogitsStream", {"OK": 1, "INVALID_ARGUMENT": 1})):
        after = _codes(small_server, method)
        assert {k: after[k] - before[method][k] for k in after} == {
            **expected, "RESOURCE_EXHAUSTED": 0, "INTERNAL": 0}, method
    assert "Traceback" not in small_server.output()


def test_sdk_sizes_chunks_from_long_ids_and_float64_logits(small_server):
    # 1,000-character ids dominate both the request and the reply: chunks sized from the
    # logits alone would be ten times too large for this server
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3000, 3))  # float64
    labels = rng.integers(-1, 3, size=3000)
    ids = [f"{i:08d}" + "x" * 992 for i in range(3000)]
    with ScoringClient(small_server.target, max_message_bytes=SMALL_LIMIT) as client:
        result = client.score_logits(logits, labels, ids, include_probabilities=True)
    assert result.ids == ids
    local = score_logits(logits, labels)  # one batch: its rounding may differ in the last bit
    np.testing.assert_array_equal(result.predicted_class, local.predicted_class)
    np.testing.assert_allclose(result.hardness, local.hardness, rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.label_issue_score, local.label_issue_score, rtol=0,
                               atol=1e-15)


def test_image_replies_over_the_limit_are_refused_before_decoding():
    # Open Inference Protocol messages are built with tritonclient's stubs (see
    # test_inference_protocol.py)
    limit = 20_000
    pixels = np.full((8, 8), 128, dtype=np.uint8)
    samples = [pb.ImageSample(pixels=to_tensor(pixels), label_index=i % 10) for i in range(150)]
    options = pb.ScoringOptions(include_probabilities=True, include_logits=True)
    request = pb.ScoreImagesRequest(samples=samples, options=options)
    bound = image_reply_bytes(
        scores_bytes(150, 10, labelled=True, include_probabilities=True, include_logits=True,
                     class_names=[str(i) for i in range(10)]), "digits-resnet", "1")
    assert request.ByteSize() < limit < bound
    with start_server(["--max-message-bytes", str(limit)]) as server:
        channel, stub = _stub(server)
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                stub.ScoreImages(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == (
                f"the reply to these 150 samples would be {bound} bytes, more than the server's "
                f"max_message_bytes ({limit}); send at most about {150 * limit // bound} "
                "samples per chunk with ScoreImagesStream")
            stream = stub.ScoreImagesStream(iter([pb.ScoreImagesStreamRequest(chunk=request)]))
            with pytest.raises(grpc.RpcError) as info:
                next(stream)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (info.value.details() or "").startswith("chunk 0 (stream samples from 0)")
            # the Open Inference Protocol: 150 tiny PNGs whose default outputs cannot fit
            pngs = np.array([encode_png(pixels)] * 150, dtype=np.object_)
            with tc.InferenceServerClient(server.target) as client:
                images = tc.InferInput("images", [150], "BYTES")
                images.set_data_from_numpy(pngs)
                with pytest.raises(InferenceServerException) as oip_info:
                    client.infer("digits-resnet", [images])
                assert oip_info.value.status() == "StatusCode.INVALID_ARGUMENT"
                assert "the reply to these 150 images would be" in oip_info.value.message()
                assert "send smaller requests" in oip_info.value.message()
                samples_scored = metric(scrape(server.metrics_url),
                                        "hardscore_samples_scored_total", kind="images")
                assert samples_scored == 0  # every refusal came before anything ran
                few = tc.InferInput("images", [10], "BYTES")
                few.set_data_from_numpy(pngs[:10])
                assert client.infer("digits-resnet", [few]).as_numpy("hardness").shape == (10,)
            small = pb.ScoreImagesRequest(samples=samples[:20], options=options)
            reply = stub.ScoreImages(small, timeout=30)
            assert reply.scores.num_rows == 20 and not reply.errors
            codes = _codes(server, "ScoreImages")
            assert (codes["INVALID_ARGUMENT"], codes["OK"]) == (1, 1)
            codes = _codes(server, "ModelInfer")
            assert (codes["INVALID_ARGUMENT"], codes["OK"]) == (1, 1)
        assert "Traceback" not in server.output()
