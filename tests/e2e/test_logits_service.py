"""End to end: ScoreLogits(Stream) on a real server process, through the real client."""

from __future__ import annotations

import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hardscore_client import ScoringClient
from hardscore_server.metrics import FEW_VALUES, HARDNESS_BUCKETS, BulkHistogram
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import to_tensor

from conftest import FIXTURES, metric, scrape


def test_scores_match_fiftyone_reference_through_the_service(logits_client):
    with np.load(FIXTURES / "fiftyone_brain_reference_1000.npz") as ref:
        result = logits_client.score_logits(ref["logits"], ref["gt_idx"],
                                            ids=[f"s{i}" for i in range(1000)])
        assert np.abs(result.hardness - ref["hardness"]).max() < 1e-12
        assert np.abs(result.mistakenness - ref["mistakenness"]).max() < 1e-12
        assert np.abs(result.mistakenness_confidence - ref["mistakenness_conf"]).max() < 1e-12
        assert np.array_equal(result.predicted_class, ref["pred_idx"])
    assert result.ids[:2] == ["s0", "s1"] and len(result.ids) == 1000


def test_labels_by_name_and_probabilities(logits_client):
    names = ["cat", "dog", "fox"]
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    result = logits_client.score_logits(logits, ["dog", "dog", ""], class_names=names,
                                        include_probabilities=True)
    assert result.given_label.tolist() == [1, 1, -1]
    assert result.class_names == names
    assert result.mistakenness[0] > 0.5 > result.mistakenness[1]
    assert np.isnan(result.mistakenness[2])
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert result.probabilities.dtype == np.float32 and result.probabilities.shape == (3, 3)


def test_empty_batch_returns_empty_scores(logits_client):
    result = logits_client.score_logits(np.zeros((0, 10), dtype=np.float32),
                                        np.zeros(0, dtype=np.int64))
    assert len(result) == 0 and result.hardness.shape == (0,)


def test_streams_one_million_rows_in_order(logits_client):
    rng = np.random.default_rng(3)
    n = 1_000_000
    logits = rng.normal(size=(n, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=n)
    result = logits_client.score_logits(logits, labels)
    assert len(result) == n
    # spot-check rows across every chunk against in-process scoring
    from hardscore_server.pipeline.scores import score_logits

    rows = np.linspace(0, n - 1, 500).astype(int)
    expected = score_logits(logits[rows], labels[rows])
    np.testing.assert_allclose(result.hardness[rows], expected.hardness, atol=1e-12)
    np.testing.assert_allclose(result.label_issue_score[rows], expected.label_issue_score,
                               atol=1e-12)
    assert np.array_equal(result.given_label, labels)


def _raw(target: str, request: pb.ScoreLogitsRequest) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreLogits(request, timeout=10)
        return info.value


def _request(logits: np.ndarray, **kwargs: object) -> pb.ScoreLogitsRequest:
    return pb.ScoreLogitsRequest(logits=to_tensor(logits), **kwargs)  # type: ignore[arg-type]


GOOD = np.zeros((4, 3), dtype=np.float32)
NAN_ROW = GOOD.copy()
NAN_ROW[2, 1] = np.nan
INF_ROW = GOOD.copy()
INF_ROW[3, 0] = np.inf

BAD_REQUESTS = {
    "nan": (_request(NAN_ROW), "logits row 2 has a non-finite value (nan in class 1)"),
    "inf": (_request(INF_ROW), "logits row 3 has a non-finite value (inf in class 0)"),
    "byte length": (
        pb.ScoreLogitsRequest(logits=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[4, 3],
                                               data=b"\0" * 40)),
        "logits.data: 40 bytes, expected 48 for shape [4, 3] of float32",
    ),
    "one class": (_request(np.zeros((4, 1), dtype=np.float32)),
                  "logits must have at least 2 classes, got C = 1"),
    "rank": (_request(np.zeros(4, dtype=np.float32)), "logits.shape must be [N, C], got [4]"),
    "dtype": (_request(np.zeros((4, 3), dtype=np.int32)),
              "logits.dtype must be DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT64, got DATA_TYPE_INT32"),
    "missing": (pb.ScoreLogitsRequest(), "logits is required"),
    "label range": (
        _request(GOOD, labels=pb.GivenLabels(indices=pb.LabelIndices(values=[0, 1, 3, 0]))),
        "labels.indices[2] = 3 is out of range: expected 0..2 or -1 for no label",
    ),
    "label count": (
        _request(GOOD, labels=pb.GivenLabels(indices=pb.LabelIndices(values=[0, 1]))),
        "labels.indices has 2 labels, expected 4 (one per row)",
    ),
    "unknown name": (
        _request(GOOD, labels=pb.GivenLabels(names=pb.LabelNames(values=["a", "b", "zebra", ""])),
                 options=pb.ScoringOptions(class_names=["a", "b", "c"])),
        "labels.names[2] = 'zebra' is not a known class name",
    ),
    "names without classes": (
        _request(GOOD, labels=pb.GivenLabels(names=pb.LabelNames(values=["a"] * 4))),
        "labels.names needs options.class_names to map names to classes",
    ),
    "ids count": (_request(GOOD, ids=["a", "b", "c"]),
                  "ids has 3 entries, expected 0 or 4 (one per row)"),
    "class names count": (_request(GOOD, options=pb.ScoringOptions(class_names=["a", "b"])),
                          "options.class_names has 2 names, expected 3 (one per class)"),
    "temperature": (_request(GOOD, options=pb.ScoringOptions(temperature=0.0)),
                    "options.temperature must be finite and > 0, got 0.0"),
    "too many rows": (_request(np.zeros((200_001, 2), dtype=np.float32)),
                      "logits has 200001 rows, more than max_rows_per_request (200000)"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_next_request_is_served(case, logits_server):
    request, message = BAD_REQUESTS[case]
    error = _raw(logits_server.target, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    with ScoringClient(logits_server.target) as client:
        assert len(client.score_logits(GOOD)) == 4


def test_message_larger_than_limit_is_refused_and_server_survives(logits_server):
    big = np.zeros((200_000, 70), dtype=np.float32)  # 56 MB > 48 MiB limit
    error = _raw(logits_server.target, _request(big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with ScoringClient(logits_server.target) as client:
        assert len(client.score_logits(GOOD)) == 4


def test_bad_chunk_in_stream_names_chunk_and_row(logits_server):
    chunks = [_request(GOOD), _request(GOOD), _request(NAN_ROW)]
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in stub.ScoreLogitsStream(
                (pb.ScoreLogitsStreamRequest(chunk=c) for c in chunks), timeout=10
            ):
                replies.append(reply)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 2 (stream rows from 8): logits row 2 has a non-finite value" in (
        info.value.details())
    assert [r.first_row for r in replies] == [0, 4]


def test_health_reports_serving(logits_server):
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hardscore.v1.ScoringService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_list_reports_every_service(logits_server):
    if not hasattr(health_pb2, "HealthListRequest"):  # the client-range venv's 1.62 stubs
        pytest.skip("this grpcio-health-checking predates Health/List")
    with grpc.insecure_channel(logits_server.target) as channel:
        # called by name: some grpcio-health-checking releases have the messages, not the stub
        list_call = channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=health_pb2.HealthListRequest.SerializeToString,
            response_deserializer=health_pb2.HealthListResponse.FromString)
        reply = list_call(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: s.status for name, s in reply.statuses.items()}
    assert statuses == {"": health_pb2.HealthCheckResponse.SERVING,
                        "hardscore.v1.ScoringService": health_pb2.HealthCheckResponse.SERVING}


def test_reflection_lists_services(logits_server):
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"hardscore.v1.ScoringService", "grpc.health.v1.Health"} <= names


def test_metrics_count_requests_samples_and_scores(logits_server, logits_client):
    before = scrape(logits_server.metrics_url)
    logits_client.score_logits(np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), [0, 1, 1])
    _raw(logits_server.target, _request(NAN_ROW))
    after = scrape(logits_server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("hardscore_requests_total", method="ScoreLogits", code="OK") == 1
    assert delta("hardscore_requests_total", method="ScoreLogits", code="INVALID_ARGUMENT") == 1
    assert delta("hardscore_samples_scored_total", kind="logits") == 3
    assert delta("hardscore_hardness_count", model="logits") == 3
    assert delta("hardscore_mistakenness_count", model="logits") == 3
    # two agreeing rows have mistakenness < 0.5, the disagreeing one > 0.5
    assert delta("hardscore_mistakenness_bucket", model="logits", le="0.5") == 2
    assert delta("hardscore_request_duration_seconds_count", method="ScoreLogits") == 2


def test_bulk_histogram_counts_the_same_a_few_at_a_time_and_in_bulk():
    # edges themselves (counted in their own bucket: le is inclusive), NaN and inf skipped
    values = np.array([0.0, 0.01, 0.0100001, 0.5, 2.0, 6.9, 7.0, 7.5, 1e9, np.nan, np.inf,
                       -np.inf, 0.2, 0.35, 3.0, 1.0, 0.05])
    bulk = BulkHistogram("h", "doc", "model", HARDNESS_BUCKETS)
    bulk.observe_many("m", values)
    few = BulkHistogram("h", "doc", "model", HARDNESS_BUCKETS)
    for start in range(0, len(values), FEW_VALUES):
        few.observe_many("m", values[start:start + FEW_VALUES])
    assert len(values) > FEW_VALUES  # the bulk call took the numpy path

    def samples(histogram: BulkHistogram) -> dict[tuple[str, str], float]:
        (family,) = histogram.collect()
        return {(s.name, s.labels.get("le", "")): s.value for s in family.samples}

    got = samples(few)
    assert got == pytest.approx(samples(bulk))
    assert got[("h_bucket", "0.01")] == 2  # 0.0 and 0.01
    assert got[("h_bucket", "7.0")] == 12  # all but 7.5 and 1e9
    assert got[("h_bucket", "+Inf")] == got[("h_count", "")] == 14
    assert got[("h_sum", "")] == pytest.approx(np.nansum(values[np.isfinite(values)]))


def test_graceful_shutdown_finishes_the_request_in_flight():
    from server_process import start_server

    server = start_server(["--no-model", "--grace-period-s", "30"])
    try:
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(600_000, 10)).astype(np.float32)
        with grpc.insecure_channel(server.target, options=[
            ("grpc.max_receive_message_length", 1 << 30),
            ("grpc.max_send_message_length", 1 << 30),
        ]) as channel:
            stub = pb_grpc.ScoringServiceStub(channel)
            future = stub.ScoreLogits.future(_request(logits), timeout=60)
            time.sleep(0.3)  # the call is accepted and being scored
            server.terminate()
            reply = future.result()
        assert reply.scores.num_rows == 600_000
        assert server.wait(30) == 0
        assert "draining" in server.output()
    finally:
        server.stop()


def test_metrics_endpoint_closes_and_frees_its_port():
    import socket

    from hardscore_server.metrics import ServerMetrics
    from hardscore_server.transport.metrics_endpoint import MetricsEndpoint

    metrics = ServerMetrics()
    endpoint = MetricsEndpoint(metrics.registry)
    port = endpoint.start("127.0.0.1", 0)
    metrics.requests.labels("ScoreLogits", "OK").inc()
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert metric(samples, "hardscore_requests_total", method="ScoreLogits", code="OK") == 1
    head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as reply:  # was 405
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        assert reply.read() == b""
    endpoint.close()
    endpoint.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
