"""End to end: the Open Inference Protocol over HTTP/REST (KServe V2), driven by
tritonclient.http and by plain HTTP requests (urllib), against a real server subprocess.

The same server answers gRPC: the statistics test sends through both transports and checks the
counts against those it made itself.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.pipeline.scores import score_logits
from hardscore_server.tools.digits import upscale_rgb

from conftest import error_of, http, metric, scrape
from oip_inputs import infer_input, model_input
from server_process import start_server

MODEL = "digits-resnet"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def client(image_server):
    c = thttp.InferenceServerClient(f"127.0.0.1:{image_server.http_port}")
    yield c
    c.close()


# -- health and metadata -----------------------------------------------------------------------


def test_health_metadata_config_over_tritonclient_and_plain_http(client, image_server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2") and not client.is_model_ready("resnet50")
    assert client.get_server_metadata()["extensions"] == [
        "model_configuration", "statistics", "binary_tensor_data", "system_shared_memory",
        "model_repository"]
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert {"name": "hardness", "datatype": "FP64", "shape": [-1]} in meta["outputs"]
    config = client.get_model_config(MODEL)
    assert (config["max_batch_size"], config["input"][0]["data_type"]) == (16, "TYPE_FP32")
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000

    for path, status in [("/v2/health/live", 200), ("/v2/health/ready", 200),
                         (f"/v2/models/{MODEL}/ready", 200),
                         (f"/v2/models/{MODEL}/versions/1/ready", 200),
                         (f"/v2/models/{MODEL}/versions/7/ready", 400),
                         ("/v2/models/resnet50/ready", 400)]:
        assert http(image_server, path)[0] == status, path
    status, _, body = http(image_server, f"/v2/models/{MODEL}/versions/1")
    assert status == 200 and json.loads(body)["versions"] == ["1"]
    # as gRPC: one description, whichever transport
    with tgrpc.InferenceServerClient(image_server.target) as g:
        grpc_config = g.get_model_config(MODEL).config
    assert [(o.name, list(o.dims), o.HasField("reshape")) for o in grpc_config.output] == [
        (o["name"], o["dims"], "reshape" in o) for o in config["output"]]


# -- inference ---------------------------------------------------------------------------------


def test_binary_and_json_tensors_give_the_grpc_scores(client, image_server, digits):
    images, labels = digits
    n = 40  # more than max_batch_size 16: split by the batcher
    x = model_input(images[:n])
    with tgrpc.InferenceServerClient(image_server.target) as g:
        tensor = tgrpc.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        expected_logits = g.infer(MODEL, [tensor]).as_numpy("logits")
    binary = client.infer(MODEL, [infer_input(thttp, "images", x, "FP32"),
                                  infer_input(thttp, "label", labels[:n], "INT64")])
    as_json = client.infer(MODEL, [infer_input(thttp, "images", x, "FP32", binary=False),
                                   infer_input(thttp, "label", labels[:n].astype(np.int32), "INT32",
                                          binary=False)],
                           outputs=[thttp.InferRequestedOutput(name, binary_data=False)
                                    for name in ("logits", "predicted_class", "mistakenness")])
    assert [o["name"] for o in as_json.get_response()["outputs"]] == [
        "logits", "predicted_class", "mistakenness"]
    assert all("data" in o for o in as_json.get_response()["outputs"])
    assert all("binary_data_size" in o["parameters"] for o in binary.get_response()["outputs"])
    np.testing.assert_array_equal(binary.as_numpy("logits"), expected_logits)
    np.testing.assert_allclose(as_json.as_numpy("logits"), expected_logits, atol=1e-5)
    expected = score_logits(expected_logits, labels[:n])
    np.testing.assert_array_equal(as_json.as_numpy("predicted_class"), expected.predicted_class)
    for name in ("hardness", "mistakenness", "label_issue_score"):
        np.testing.assert_allclose(binary.as_numpy(name), getattr(expected, name), atol=1e-5)
    np.testing.assert_allclose(as_json.as_numpy("mistakenness"), expected.mistakenness,
                               atol=1e-5)


def test_uint8_pixels_png_files_and_plain_json_requests(client, image_server, digits):
    images, _ = digits
    batch = images[:6]
    fp32 = client.infer(MODEL, [infer_input(thttp, "images", model_input(batch), "FP32")]
                        ).as_numpy("logits")
    pixels = np.ascontiguousarray(upscale_rgb(batch).transpose(0, 3, 1, 2))
    uint8 = client.infer(MODEL, [infer_input(thttp, "images", pixels, "UINT8")]).as_numpy("logits")
    np.testing.assert_allclose(uint8, fp32, atol=1e-5)
    pngs = np.array([encode_png(img) for img in batch], dtype=np.object_)
    encoded = client.infer(MODEL, [infer_input(thttp, "images", pngs, "BYTES")]).as_numpy("logits")
    np.testing.assert_allclose(encoded, fp32, atol=1e-4)

    # plain JSON, nested data, no client library: JSON outputs by default
    body = json.dumps({"id": "req-9", "inputs": [
        {"name": "images", "datatype": "UINT8", "shape": list(pixels.shape),
         "data": pixels.tolist()}], "outputs": [{"name": "predicted_class"}]}).encode()
    status, headers, reply = http(image_server, INFER, body,
                                  {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    payload = json.loads(reply)
    assert (payload["id"], payload["model_name"], payload["model_version"]) == (
        "req-9", MODEL, "1")
    (out,) = payload["outputs"]
    assert out == {"name": "predicted_class", "datatype": "INT64", "shape": [6],
                   "data": np.argmax(fp32, axis=1).tolist()}

    # gzip-compressed binary request, binary outputs asked for on the request
    header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": 0}}],
                         "parameters": {"binary_data_output": True},
                         "outputs": [{"name": "hardness"}]}).encode()
    raw = b"".join(struct.pack("<I", len(p)) + p for p in pngs[:2])
    header = header.replace(b'"binary_data_size": 0', b'"binary_data_size": %d' % len(raw))
    status, headers, reply = http(
        image_server, INFER, gzip.compress(header + raw),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"})
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    (out,) = json.loads(reply[:length])["outputs"]
    assert out["parameters"] == {"binary_data_size": 16}
    expected = score_logits(fp32[:2]).hardness
    np.testing.assert_allclose(np.frombuffer(reply[length:], "<f8"), expected, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------


def _json_infer(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _images(shape: Any = None, **fields: Any) -> dict[str, Any]:
    shape = [1, 3, 32, 32] if shape is None else shape
    tensor: dict[str, Any] = {"name": "images", "datatype": "FP32", "shape": shape}
    tensor.update(fields)
    return tensor


ZEROS = [0.0] * 3072

BAD_REQUESTS = [
    # (path, body, headers, status, message)
    (INFER, b"{bad", {}, 400, "failed to parse the request JSON"),
    (INFER, b"[1, 2]", {}, 400, "the request must be a JSON object, got list"),
    (INFER, b"[" * 100_000 + b"]" * 100_000, {}, 400,
     "failed to parse the request JSON: nested too deeply"),
    (INFER, b"{}", {}, 400, "the request needs 'inputs' as a JSON array"),
    (INFER, _json_infer([_images(data=ZEROS[:10])]), {}, 400,
     "unexpected number of elements in data for input 'images' for model 'digits-resnet'. "
     "Expected 3072 (shape [1,3,32,32]), got 10"),
    (INFER, _json_infer([_images(data=["a"] * 3072)]), {}, 400,
     "data of input 'images' for model 'digits-resnet' must be numbers"),
    (INFER, _json_infer([_images([1, 3, 28, 28], data=ZEROS)]), {}, 400,
     "unexpected shape for input 'images' for model 'digits-resnet'. Expected [-1,3,32,32], "
     "got [1,3,28,28]"),
    (INFER, _json_infer([_images(shape=["1"], data=ZEROS)]), {}, 400,
     "input 'images' needs 'shape' as an array of integers"),
    (INFER, _json_infer([_images()]), {}, 400,
     "input 'images' has no data: give 'data' or 'binary_data_size'"),
    (INFER, _json_infer([_images(data=ZEROS), {"name": "label", "datatype": "INT64",
                                               "shape": [1], "data": [10]}]), {}, 400,
     "input 'label' element 0 is 10: labels are class indices 0..9, or -1 for none"),
    (INFER, _json_infer([_images(data=ZEROS)], outputs=[{"name": "embeddings"}]), {}, 400,
     "unexpected inference output 'embeddings' for model 'digits-resnet'"),
    (INFER, _json_infer([_images(parameters={"binary_data_size": 12288})]),
     {"Inference-Header-Content-Length": "0"}, 400,
     "failed to parse the request JSON: Expecting value: line 1 column 1 (char 0)"),
    (INFER, b"{}", {"Inference-Header-Content-Length": "x"}, 400,
     "Inference-Header-Content-Length must be an integer, got 'x'"),
    (INFER, b"{}", {"Inference-Header-Content-Length": "99"}, 400,
     "Inference-Header-Content-Length is 99, but the body holds 2 bytes"),
    (INFER, b"{}", {"Content-Encoding": "gzip"}, 400,
     "cannot read the request body: 400, message:\n  Can not decode content-encoding: gzip"),
    (INFER, _json_infer([_images(data=ZEROS)], parameters={"timeout": -1}), {}, 400,
     "'timeout' must be an integer >= 0 (microseconds)"),
    (INFER, _json_infer([_images(data=ZEROS)], parameters={"timeout": "x"}), {}, 400,
     "'timeout' must be an integer >= 0 (microseconds)"),
    # Triton's per-request timeout (microseconds): 1 us has passed when the sample reaches the
    # head of the queue, so it is not computed
    (INFER, _json_infer([_images(data=ZEROS)], parameters={"timeout": 1}), {}, 504,
     "deadline passed while waiting in the queue; not computed"),
    ("/v2/models/resnet50/infer", _json_infer([_images(data=ZEROS)]), {}, 404,
     "Request for unknown model: 'resnet50' is not found"),
    (f"/v2/models/{MODEL}/versions/3/infer", _json_infer([_images(data=ZEROS)]), {}, 404,
     "Request for unknown model: 'digits-resnet' version 3 is not found"),
    ("/v2/models/resnet50/config", None, {}, 404, "'resnet50' is not found"),
    ("/v2/models/resnet50/stats", None, {}, 404, "'resnet50' is not found"),
    ("/v2/models/resnet50", None, {}, 404, "'resnet50' is not found"),
    ("/v2/repository/nothing", None, {}, 404, "not found: GET /v2/repository/nothing"),
    (INFER, None, {}, 405, "method GET is not allowed on /v2/models/digits-resnet/infer"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), BAD_REQUESTS,
                         ids=[f"{i}-{case[3]}" for i, case in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_triton_errors_with_exact_statuses(
        image_server, path, body, headers, status, message):
    got_status, got_message = error_of(http(image_server, path, body, headers))
    assert got_status == status, got_message
    assert message in got_message


def test_binary_data_sizes_must_match_the_body(image_server, digits):
    x = model_input(digits[0][:1])
    header = _json_infer([_images(parameters={"binary_data_size": x.nbytes})])
    length = {"Inference-Header-Content-Length": str(len(header))}
    for raw, message in [
        (x.tobytes()[:-4], "declares 12288 bytes of binary data at offset 0, but only 12284 "
                           "remain after the JSON header"),
        (x.tobytes() + b"1234", "the body holds 4 bytes of binary data after the last input's"),
    ]:
        assert error_of(http(image_server, INFER, header + raw, length)) == (400, message) or (
            message in error_of(http(image_server, INFER, header + raw, length))[1])
    header = _json_infer([_images(parameters={"binary_data_size": 8}, datatype="FP32")])
    status, message = error_of(http(image_server, INFER, header + b"\0" * 8,
                                    {"Inference-Header-Content-Length": str(len(header))}))
    assert (status, message) == (
        400, "input byte size mismatch for input 'images' for model 'digits-resnet'. "
             "Expected 12288, got 8")
    assert http(image_server, "/v2/health/ready")[0] == 200


def test_bodies_over_max_message_bytes_are_refused_with_413():
    with start_server(["--max-message-bytes", "65536", "--max-batch-size", "4"]) as server:
        x = np.zeros((2, 3, 32, 32), np.float32)  # 24 KiB binary: fits
        header = _json_infer([_images([2, 3, 32, 32],
                                      parameters={"binary_data_size": x.nbytes})])
        status, _, _ = http(server, INFER, header + x.tobytes(),
                            {"Inference-Header-Content-Length": str(len(header))})
        assert status == 200
        big = _json_infer([_images([8, 3, 32, 32], data=[0.0] * 8 * 3072)])
        assert error_of(http(server, INFER, big)) == (
            413, "request body exceeds 65536 bytes (max_message_bytes)")
        bomb = gzip.compress(b" " * 10_000_000 + b"{}")  # 10 MB of blanks in 10 KB
        assert error_of(http(server, INFER, bomb, {"Content-Encoding": "gzip"})) == (
            413, "request body exceeds 65536 bytes (max_message_bytes)")
        assert http(server, "/v2/health/ready")[0] == 200


def test_tritonclient_http_errors_carry_the_status(client, digits):
    x = model_input(digits[0][:2])
    with pytest.raises(InferenceServerException) as info:
        client.infer("resnet50", [infer_input(thttp, "images", x, "FP32")])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [infer_input(thttp, "images", x.astype(np.float64), "FP64")])
    assert info.value.status() == "400"
    assert "data-type is 'FP64', but model 'digits-resnet' expects 'FP32'" in (
        info.value.message())


# -- statistics --------------------------------------------------------------------------------


def test_statistics_count_requests_samples_batches_and_failures(client, image_server, digits):
    """Triton's meanings: success/fail count requests, inference_count samples, execution_count
    batches; the test's own requests, through both transports, are exactly what changes."""
    images, _ = digits

    def stats() -> dict[str, Any]:
        (s,) = client.get_inference_statistics(MODEL)["model_stats"]
        return s

    before, metrics_before = stats(), scrape(image_server.metrics_url)
    sizes = [1, 8, 20, 3]  # 20 > max_batch_size 16: two batches; the others one each
    with tgrpc.InferenceServerClient(image_server.target) as g:
        for i, n in enumerate(sizes):
            x = model_input(images[:n])
            if i % 2:
                client.infer(MODEL, [infer_input(thttp, "images", x, "FP32")])
            else:
                tensor = tgrpc.InferInput("images", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                g.infer(MODEL, [tensor])
        bad = tgrpc.InferInput("images", [1, 3, 28, 28], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 28, 28), np.float32))
        with pytest.raises(InferenceServerException):
            g.infer(MODEL, [bad])
    for body in (b"{bad", _json_infer([_images(data=[0.0])])):
        assert http(image_server, INFER, body)[0] == 400
    with pytest.raises(InferenceServerException):  # another model: not this one's failure
        client.infer("resnet50", [infer_input(thttp, "images", model_input(images[:1]), "FP32")])
    after, metrics_after = stats(), scrape(image_server.metrics_url)

    def delta(*keys: str) -> int:
        a: Any = after
        b: Any = before
        for key in keys:
            a, b = a[key], b[key]
        return int(a) - int(b)

    assert delta("inference_stats", "success", "count") == len(sizes)
    assert delta("inference_stats", "fail", "count") == 3
    assert delta("inference_count") == sum(sizes)
    assert delta("execution_count") == 5
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta("inference_stats", part, "count") == len(sizes)
    s = after["inference_stats"]
    assert s["success"]["ns"] >= (s["queue"]["ns"] + s["compute_input"]["ns"]
                                  + s["compute_infer"]["ns"] + s["compute_output"]["ns"])
    batch_counts = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    old_counts = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    grown = {size: batch_counts[size] - old_counts.get(size, 0) for size in batch_counts
             if batch_counts[size] != old_counts.get(size, 0)}
    assert grown == {1: 1, 3: 1, 4: 1, 8: 1, 16: 1}
    # failures by cause: the request metrics' code label, per transport
    def failed(method: str, code: str) -> float:
        return metric(metrics_after, "hardscore_requests_total", method=method, code=code) - (
            metric(metrics_before, "hardscore_requests_total", method=method, code=code))
    assert failed("ModelInfer", "INVALID_ARGUMENT") == 1
    assert failed("http:ModelInfer", "INVALID_ARGUMENT") == 2
    assert failed("http:ModelInfer", "NOT_FOUND") == 1


def _batch_sums(s: dict[str, Any]) -> tuple[int, int]:
    """(executions, samples in them) from one model's batch_stats."""
    counts = [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in s["batch_stats"]]
    return sum(c for _, c in counts), sum(size * c for size, c in counts)


def test_statistics_count_each_served_name_apart_and_never_score_images(digits):
    """On a fresh server: each served name counts only its own requests' samples and the
    batches that ran them; ScoreImages counts in none; both transports say the same."""
    from concurrent.futures import ThreadPoolExecutor

    images, _ = digits
    files = f"{MODEL}-files"
    pngs = np.array([encode_png(img) for img in images[:9]], dtype=np.object_)
    with start_server(["--max-batch-size", "16", "--max-queue-delay-ms", "5",
                       "--max-queue-size", "256"]) as server, \
            thttp.InferenceServerClient(f"127.0.0.1:{server.http_port}") as rest, \
            tgrpc.InferenceServerClient(server.target) as g, \
            ScoringClient(server.target, timeout=60) as scoring:

        def stats() -> dict[str, dict[str, Any]]:
            every = rest.get_inference_statistics()["model_stats"]
            assert [s["name"] for s in every] == [MODEL, f"{MODEL}-pixels", files]
            for s in every:  # gRPC's own message says the same
                assert int(s["inference_count"]) == g.get_inference_statistics(
                    s["name"]).model_stats[0].inference_count
            return {s["name"]: s for s in every}

        # one at a time, so no batch mixes names: 20 + 3 to the model, 5 + 2 to -files
        g.infer(MODEL, [infer_input(tgrpc, "images", model_input(images[:20]), "FP32")])
        rest.infer(MODEL, [infer_input(thttp, "images", model_input(images[:3]), "FP32")])
        rest.infer(files, [infer_input(thttp, "image_files", pngs[:5, None], "BYTES")])
        g.infer(files, [infer_input(tgrpc, "image_files", pngs[:2, None], "BYTES")])
        with pytest.raises(InferenceServerException):  # a failure: no samples counted
            g.infer(files, [infer_input(tgrpc, "image_files", np.array([[b"no image"]],
                                                                      np.object_), "BYTES")])
        result = scoring.score_images(list(pngs[:7]))  # hardscore.v1
        assert len(result.predicted_class) == 7 and not result.errors
        k1, k2, k_v1 = 23, 7, 7
        s = stats()
        assert [int(s[n]["inference_count"]) for n in s] == [k1, 0, k2]
        assert [int(s[n]["inference_stats"]["success"]["count"]) for n in s] == [2, 0, 2]
        assert [int(s[n]["inference_stats"]["fail"]["count"]) for n in s] == [0, 0, 1]
        assert [int(s[n]["execution_count"]) for n in s] == [3, 0, 2]  # 16 + 4, 3; 5, 2
        assert {int(b["batch_size"]) for b in s[MODEL]["batch_stats"]} == {16, 4, 3}
        assert s[f"{MODEL}-pixels"]["batch_stats"] == []
        assert int(s[f"{MODEL}-pixels"]["last_inference"]) == 0
        for n in (MODEL, files):  # no batch mixed names: the batches hold exactly the samples
            assert _batch_sums(s[n]) == (int(s[n]["execution_count"]),
                                         int(s[n]["inference_count"]))
            assert int(s[n]["last_inference"]) > 0
        # the model ran every sample once: the names' sum plus ScoreImages, nothing counted twice
        samples = scrape(server.metrics_url)
        ran = metric(samples, "hardscore_batch_size_sum", model=MODEL)
        assert ran == k1 + k2 + k_v1 == sum(int(x["inference_count"]) for x in s.values()) + k_v1
        assert metric(samples, "hardscore_batch_size_count", model=MODEL) > 5  # + ScoreImages

        # both names at once (gRPC's client is thread-safe): batches may mix them; each name's
        # counts stay its own
        def send(i: int) -> None:
            if i % 2:
                g.infer(MODEL, [infer_input(tgrpc, "images", model_input(images[:4]), "FP32")])
            else:
                g.infer(files, [infer_input(tgrpc, "image_files", pngs[:3, None], "BYTES")])

        before, batches_before = s, metric(samples, "hardscore_batch_size_count", model=MODEL)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(24)))
        after = stats()
        batches = metric(scrape(server.metrics_url), "hardscore_batch_size_count",
                         model=MODEL) - batches_before
        grew = {n: int(after[n]["execution_count"]) - int(before[n]["execution_count"])
                for n in (MODEL, files)}
        assert int(after[MODEL]["inference_count"]) == k1 + 12 * 4
        assert int(after[files]["inference_count"]) == k2 + 12 * 3
        assert 1 <= grew[MODEL] <= 12 * 4 and 1 <= grew[files] <= 12 * 3
        assert max(grew.values()) <= batches <= sum(grew.values())  # a mixed batch counts twice
        for n in (MODEL, files):
            executions, held = _batch_sums(after[n])
            assert executions == int(after[n]["execution_count"])
            assert held >= int(after[n]["inference_count"])  # mixed batches hold the other's too
            assert max(int(b["batch_size"]) for b in after[n]["batch_stats"]) <= 16
        # REST's per-model path and gRPC's message agree with the list
        status, _, body = http(server, f"/v2/models/{files}/stats")
        assert status == 200 and json.loads(body)["model_stats"] == [after[files]]
        (grpc_files,) = g.get_inference_statistics(files).model_stats
        assert (grpc_files.execution_count, len(grpc_files.batch_stats)) == (
            int(after[files]["execution_count"]), len(after[files]["batch_stats"]))


def test_a_burst_beyond_the_queue_is_refused_with_503_and_the_rest_is_served(digits):
    """The same admission as gRPC: a full queue refuses at once (503, Triton's 'unavailable'),
    every accepted request is answered correctly, and the server serves on."""
    from concurrent.futures import ThreadPoolExecutor

    x = model_input(digits[0][:32])  # a request fills the whole queue of 32 on its own
    header = _json_infer([_images(list(x.shape), parameters={"binary_data_size": x.nbytes})],
                         outputs=[{"name": "predicted_class"}])
    body, length = header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    with start_server(["--max-queue-size", "32", "--max-batch-size", "8",
                       "--max-queue-delay-ms", "20"]) as server:
        with ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(lambda _: http(server, INFER, body, length), range(48)))
        statuses = [status for status, _, _ in replies]
        assert set(statuses) == {200, 503}, statuses
        predicted = []
        for reply in replies:
            if reply[0] == 503:
                message = error_of(reply)[1]
                assert "queue full" in message and "max_queue_size 32" in message, message
            else:
                (out,) = json.loads(reply[2])["outputs"]
                predicted.append(out["data"])
        status, _, again = http(server, INFER, body, length)  # serving on, the same answer
        assert status == 200 and http(server, "/v2/health/ready")[0] == 200
        assert predicted == [json.loads(again)["outputs"][0]["data"]] * len(predicted)


# -- hostile and departing clients -------------------------------------------------------------


def _decodes(server) -> dict[str, float]:
    samples = scrape(server.metrics_url)
    return {outcome: metric(samples, "hardscore_image_decodes_total", outcome=outcome)
            for outcome in ("done", "after_cancel", "abandoned")}


def _wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_client_that_disconnects_stops_its_images_being_decoded(image_server):
    """REST kept decoding every image of a request whose client had gone (120 of 120)."""
    from hostile_images import encode, gradient

    big = encode(gradient(1500, 1500), "PNG", compress_level=1)  # tens of ms each to decode
    n = 200
    elements = b"".join(struct.pack("<I", len(big)) + big for _ in range(n))
    header = json.dumps({"inputs": [{
        "name": "images", "datatype": "BYTES", "shape": [n],
        "parameters": {"binary_data_size": len(elements)}}]}).encode()
    body = header + elements
    label = {"method": "http:ModelInfer", "code": "CANCELLED"}
    cancelled = metric(scrape(image_server.metrics_url), "hardscore_requests_total", **label)
    before = _decodes(image_server)
    with socket.create_connection(("127.0.0.1", image_server.http_port)) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream"
            f"\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait_for(lambda: _decodes(image_server)["done"] - before["done"] >= 4)
    _wait_for(lambda: sum(_decodes(image_server)[k] - before[k] for k in before) == n)
    after = _decodes(image_server)
    late = after["after_cancel"] - before["after_cancel"]
    abandoned = after["abandoned"] - before["abandoned"]
    print(f"\n{after['done'] - before['done']:.0f} decoded while connected, {late:.0f} after "
          f"the client left, {abandoned:.0f} never started")
    assert abandoned >= 1 and late <= 2  # at most what the 2 decode threads had begun
    samples = scrape(image_server.metrics_url)
    assert metric(samples, "hardscore_requests_total", **label) == cancelled + 1
    assert metric(samples, "hardscore_decode_budget_in_use_bytes") == 0
    tensor = infer_input(thttp, "images", model_input(np.zeros((1, 8, 8), np.uint8)), "FP32")
    client = thttp.InferenceServerClient(f"127.0.0.1:{image_server.http_port}")
    assert client.infer(MODEL, [tensor]).as_numpy("logits").shape == (1, 10)
    client.close()


def test_small_json_routes_refuse_large_or_undecodable_bodies(image_server):
    shm = "/v2/systemsharedmemory/region/r/register"
    big = json.dumps({"key": "/k", "pad": "x" * 70_000}).encode()
    status, message = error_of(http(image_server, shm, big))
    assert (status, message) == (413, "request body exceeds 65536 bytes, the most this path takes")
    for path in (shm, "/v2/repository/index"):
        status, message = error_of(http(image_server, path, b"not gzip at all",
                                        {"Content-Encoding": "gzip"}))
        assert status == 400 and message.startswith("cannot read the request body"), message
    assert http(image_server, "/v2/repository/index", b"{}")[0] == 200


def _strict(body: bytes) -> Any:
    """JSON as strict parsers read it: bare NaN or Infinity is an error, not a number."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(body, parse_constant=refuse)


def test_replies_are_strict_json_and_health_answers_with_a_body(image_server):
    """An unlabelled row's label scores are NaN: the reply carried bare NaN, which KServe's
    client and JavaScript's JSON.parse reject; live/ready answered an empty body."""
    body = _json_infer([_images(shape=[2, 3, 32, 32], data=ZEROS * 2),
                        {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, -1]}],
                       outputs=[{"name": "mistakenness", "parameters": {"binary_data": False}},
                                {"name": "hardness", "parameters": {"binary_data": False}}])
    status, _, raw = http(image_server, INFER, body)
    assert status == 200
    outputs = {o["name"]: o["data"] for o in _strict(raw)["outputs"]}
    assert outputs["mistakenness"][1] is None and isinstance(outputs["mistakenness"][0], float)
    assert all(isinstance(v, float) for v in outputs["hardness"])
    # tritonclient reads null back as NaN
    client = thttp.InferenceServerClient(f"127.0.0.1:{image_server.http_port}")
    images = model_input(np.zeros((2, 8, 8), np.uint8))
    result = client.infer(MODEL, [infer_input(thttp, "images", images, "FP32", binary=False),
                                  infer_input(thttp, "label", np.array([3, -1]), "INT64",
                                              binary=False)],
                          outputs=[thttp.InferRequestedOutput("mistakenness", binary_data=False)])
    mistakenness = result.as_numpy("mistakenness")
    assert np.isfinite(mistakenness[0]) and np.isnan(mistakenness[1])
    client.close()
    for path, expected in [("/v2/health/live", {"live": True}),
                           ("/v2/health/ready", {"ready": True}),
                           (f"/v2/models/{MODEL}/ready", {"name": MODEL, "ready": True})]:
        status, headers, raw = http(image_server, path)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert _strict(raw) == expected
    status, _, raw = http(image_server, "/v2/models/resnet50/ready")
    assert (status, _strict(raw)) == (400, {"name": "resnet50", "ready": False})
