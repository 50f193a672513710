"""Exact or refused, on a real server: extreme finite logits and temperatures give exact finite
scores, bad temperatures are refused naming the field, and rows whose scores are NaN (the
model's non-finite logits) are counted in /metrics.

Open Inference Protocol messages are built with tritonclient's stubs (see
test_inference_protocol.py: the server's own stubs must not be imported in this process)."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc

from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import to_tensor

from conftest import metric, scrape

MODEL = "digits-resnet"


def _logits_request(logits: np.ndarray, labels: list[int] | None = None,
                    temperature: float | None = None) -> pb.ScoreLogitsRequest:
    request = pb.ScoreLogitsRequest(logits=to_tensor(logits))
    if labels is not None:
        request.labels.indices.values[:] = labels
    if temperature is not None:
        request.options.temperature = temperature
    return request


def _floats(tensor: pb.Tensor) -> list[float]:
    return np.frombuffer(tensor.data, dtype="<f8").tolist()


def test_extreme_finite_logits_and_temperatures_give_exact_scores(logits_server):
    with grpc.insecure_channel(logits_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        edge = np.array([[1.7e308, -1.7e308], [-1.7e308, 1.7e308]], dtype=np.float64)
        scores = stub.ScoreLogits(_logits_request(edge, [0, 0]), timeout=30).scores
        assert np.frombuffer(scores.predicted_class.data, dtype="<i4").tolist() == [0, 1]
        assert _floats(scores.confidence) == [1.0, 1.0]
        assert _floats(scores.hardness) == [0.0, 0.0]
        assert _floats(scores.mistakenness) == [0.0, 1.0]
        assert _floats(scores.margin_issue_score) == [0.0, 1.0]
        for temperature in (1e-308, 5e-324):
            ordinary = np.array([[1.0, 2.0], [3.0, 3.0]], dtype=np.float32)
            scores = stub.ScoreLogits(_logits_request(ordinary, temperature=temperature),
                                      timeout=30).scores
            assert _floats(scores.confidence) == [1.0, 0.5]
            assert _floats(scores.hardness) == [0.0, math.log(2)]
        for temperature, shown in ((0.0, "0.0"), (-1.0, "-1.0"), (math.inf, "inf"),
                                   (math.nan, "nan")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ScoreLogits(_logits_request(edge, temperature=temperature), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == (
                f"options.temperature must be finite and > 0, got {shown}")
        # an ordinary request still gets ordinary numbers
        scores = stub.ScoreLogits(_logits_request(np.zeros((1, 4), dtype=np.float32)),
                                  timeout=30).scores
        assert _floats(scores.hardness) == [math.log(4)]


def test_rows_with_nan_scores_are_counted(image_server):
    # hardscore.v1 refuses non-finite pixels per sample; the Open Inference Protocol hands FP32
    # input to the model as is, so NaN or infinite pixels give NaN logits and NaN scores
    x = np.zeros((3, 3, 32, 32), dtype=np.float32)
    x[0] = np.nan
    x[2] = np.inf
    before = scrape(image_server.metrics_url)
    with tc.InferenceServerClient(image_server.target) as client:
        result = client.infer(MODEL, [_input("images", x, "FP32"),
                                      _input("label", np.array([3, 3, 3]), "INT64")])
        hardness = result.as_numpy("hardness")
        assert np.isnan(hardness[[0, 2]]).all() and np.isfinite(hardness[1])
        assert result.as_numpy("predicted_class")[[0, 2]].tolist() == [-1, -1]
        after = scrape(image_server.metrics_url)

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        assert delta("hardscore_nonfinite_scores_total", model=MODEL) == 2
        assert delta("hardscore_hardness_count", model=MODEL) == 1
        assert delta("hardscore_mistakenness_count", model=MODEL) == 1
        assert delta("hardscore_samples_scored_total", kind="images") == 3
        assert delta("hardscore_requests_total", method="ModelInfer", code="OK") == 1
        # a normal request still succeeds, and adds nothing to the count
        again = client.infer(MODEL, [_input("images", x[1:2], "FP32")])
        assert np.isfinite(again.as_numpy("hardness")).all()
    final = scrape(image_server.metrics_url)
    assert metric(final, "hardscore_nonfinite_scores_total", model=MODEL) == metric(
        after, "hardscore_nonfinite_scores_total", model=MODEL)


def _input(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
