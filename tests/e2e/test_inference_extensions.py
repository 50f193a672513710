"""End to end: the Open Inference Protocol's streaming, repository index, reflection v1, system
shared memory, the per-form model names, and Triton's own perf_analyzer driving them over HTTP,
gRPC streaming, shared memory and encoded PNG files (its stock --input-data format).

perf_analyzer comes from `make perf-analyzer` (bench/perf_analyzer.sh --fetch-only); each run
here is short (150 requests, no stabilisation windows).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.utils import InferenceServerException

from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import upscale_rgb

from conftest import REPO, error_of, http, proc_status
from oip_inputs import infer_input, model_input
from server_process import ServerProcess

MODEL = "digits-resnet"
PERF_ANALYZER = Path(os.environ.get(
    "PERF_ANALYZER",
    REPO / ".cache" / "perf_analyzer" / "tritonclient-2.50.0.data" / "data" / "bin"
    / "perf_analyzer"))


@pytest.fixture(scope="module")
def grpc_client(image_server):
    with tgrpc.InferenceServerClient(image_server.target) as c:
        yield c


@pytest.fixture(scope="module")
def http_client(image_server):
    c = thttp.InferenceServerClient(f"127.0.0.1:{image_server.http_port}")
    yield c
    c.close()


# -- one model name per input form -------------------------------------------------------------


def test_each_input_form_is_a_served_name_found_from_the_metadata(
        grpc_client, http_client, digits):
    images, _ = digits
    index = http_client.get_model_repository_index()
    assert index == [{"name": n, "version": "1", "state": "READY"}
                     for n in (MODEL, f"{MODEL}-pixels", f"{MODEL}-files")]
    x = model_input(images[:4])
    expected = grpc_client.infer(MODEL, [infer_input(tgrpc, "images", x, "FP32")]
                                 ).as_numpy("logits")
    pixels = np.ascontiguousarray(upscale_rgb(images[:4]).transpose(0, 3, 1, 2))
    pngs = np.array([[encode_png(i)] for i in images[:4]], dtype=np.object_)
    for name, data in ((f"{MODEL}-pixels", pixels), (f"{MODEL}-files", pngs)):
        (meta,) = http_client.get_model_metadata(name)["inputs"]  # metadata alone says what
        assert meta["shape"][0] == -1
        array = data.astype(np.uint8) if meta["datatype"] == "UINT8" else data
        for client, module in ((grpc_client, tgrpc), (http_client, thttp)):
            result = client.infer(name, [infer_input(module, meta["name"], array,
                                                meta["datatype"])])
            np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)
        config = http_client.get_model_config(name)
        assert [(i["name"], i["data_type"]) for i in config["input"]] == [
            (meta["name"], "TYPE_" + ("STRING" if meta["datatype"] == "BYTES" else "UINT8"))]
    error = _raises(grpc_client.infer, f"{MODEL}-files",
                    [infer_input(tgrpc, "images", model_input(images[:1]), "FP32")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected inference input 'images' for model 'digits-resnet-files'; its inputs " \
           "are 'image_files' and the optional 'label'" in error.message()
    error = _raises(grpc_client.infer, f"{MODEL}-pixels",
                    [infer_input(tgrpc, "image_pixels", model_input(images[:1]), "FP32")])
    assert "data-type is 'FP32', but model 'digits-resnet-pixels' expects 'UINT8'" in (
        error.message())


def _raises(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


# -- streaming ---------------------------------------------------------------------------------


def test_stream_answers_every_request_in_order_with_errors_in_band(grpc_client, digits):
    images, _ = digits
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    requests = [(MODEL, (5, 3, 32, 32)), (MODEL, (1, 3, 28, 32)), (MODEL, (40, 3, 32, 32)),
                ("resnet50", (1, 3, 32, 32)), (MODEL, (1, 3, 32, 32)), (MODEL, (17, 3, 32, 32))]
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, (model, shape) in enumerate(requests):
            x = np.zeros(shape, np.float32)
            x[: min(shape[0], 40), :, :, :] = model_input(images[: shape[0]])[:, :, :shape[2], :]
            grpc_client.async_stream_infer(model, [infer_input(tgrpc, "images", x, "FP32")],
                                           request_id=f"r{i}")
        got = [answers.get(timeout=60) for _ in requests]
    finally:
        grpc_client.stop_stream()
    for i, ((_, shape), (result, error)) in enumerate(zip(requests, got, strict=True)):
        if i == 1:
            assert result is None and "unexpected shape for input 'images' for model " \
                "'digits-resnet'. Expected [-1,3,32,32], got [1,3,28,32]" in error.message()
        elif i == 3:
            assert result is None and "Request for unknown model: 'resnet50'" in (
                error.message())
        else:
            assert error is None
            assert result.get_response().id == f"r{i}"  # in order
            assert result.as_numpy("logits").shape == (shape[0], 10)
    unary = grpc_client.infer(
        MODEL, [infer_input(tgrpc, "images", model_input(images[:17]), "FP32")])
    np.testing.assert_array_equal(got[5][0].as_numpy("logits"), unary.as_numpy("logits"))


# -- repository index and reflection v1 --------------------------------------------------------


def test_repository_index_over_grpc_and_rest(grpc_client, image_server):
    index = grpc_client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (MODEL, "1", "READY"), (f"{MODEL}-pixels", "1", "READY"), (f"{MODEL}-files", "1", "READY")]
    status, _, body = http(image_server, "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and len(json.loads(body)) == 3
    assert error_of(http(image_server, "/v2/repository/index", b'{"ready": 1}')) == (
        400, "'ready' must be true or false")
    with grpc.insecure_channel(image_server.target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=tgrpc.service_pb2.RepositoryIndexRequest.SerializeToString,
            response_deserializer=tgrpc.service_pb2.RepositoryIndexResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(tgrpc.service_pb2.RepositoryIndexRequest(repository_name="other"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown repository 'other'" in info.value.details()


def test_reflection_answers_as_v1_and_v1alpha(image_server):
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")]
    with grpc.insecure_channel(image_server.target) as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(  # the same messages: wire-identical
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            listed, described, missing = list(call(iter(requests), timeout=10))
            names = {s.name for s in listed.list_services_response.service}
            assert {"grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection",
                    "inference.GRPCInferenceService", "hardscore.v1.ScoringService"} <= names
            files = [_file(b) for b in described.file_descriptor_response.file_descriptor_proto]
            (v1,) = [f for f in files if f.package == "grpc.reflection.v1"]
            assert v1.name == "grpc/reflection/v1/reflection.proto"
            assert v1.service[0].method[0].input_type == (
                ".grpc.reflection.v1.ServerReflectionRequest")
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def _file(data: bytes) -> Any:
    from google.protobuf import descriptor_pb2

    return descriptor_pb2.FileDescriptorProto.FromString(data)


# -- system shared memory ----------------------------------------------------------------------


@pytest.fixture()
def regions() -> Iterator[list[Any]]:
    """Shared memory regions made by the test, destroyed after it."""
    made: list[Any] = []
    yield made
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _region(regions: list[Any], size: int) -> tuple[Any, str, str]:
    name = f"hs-{uuid.uuid4().hex[:12]}"
    key = f"/{name}"
    handle = shm.create_shared_memory_region(name, key, size)
    regions.append(handle)
    return handle, name, key


def test_inputs_and_outputs_through_system_shared_memory_grpc_and_rest(
        grpc_client, http_client, image_server, digits, regions):
    images, labels = digits
    x = model_input(images[:6])
    expected = grpc_client.infer(MODEL, [infer_input(tgrpc, "images", x, "FP32")])
    inp, in_name, in_key = _region(regions, 64 + x.nbytes)
    out, out_name, out_key = _region(regions, 1024)
    shm.set_shared_memory_region(inp, [x], offset=64)
    for client, module in ((grpc_client, tgrpc), (http_client, thttp)):
        client.register_system_shared_memory(in_name, in_key, 64 + x.nbytes)
        client.register_system_shared_memory(out_name, out_key, 1024)
        tensor = module.InferInput("images", list(x.shape), "FP32")
        tensor.set_shared_memory(in_name, x.nbytes, offset=64)
        hardness = module.InferRequestedOutput("hardness")
        hardness.set_shared_memory(out_name, 6 * 8, offset=100)
        predicted = module.InferRequestedOutput("predicted_class")
        result = client.infer(MODEL, [tensor], outputs=[hardness, predicted])
        np.testing.assert_array_equal(result.as_numpy("predicted_class"),
                                      expected.as_numpy("predicted_class"))
        written = shm.get_contents_as_numpy(out, np.float64, [6], offset=100)
        np.testing.assert_allclose(written, expected.as_numpy("hardness"), atol=1e-6)
        status = client.get_system_shared_memory_status(as_json=True) if module is tgrpc else (
            client.get_system_shared_memory_status())
        regions_seen = status["regions"].values() if module is tgrpc else status
        assert {r["name"] for r in regions_seen} == {in_name, out_name}
        client.unregister_system_shared_memory()
        left = client.get_system_shared_memory_status(as_json=True) if module is tgrpc else (
            client.get_system_shared_memory_status())
        assert not (left.get("regions") if module is tgrpc else left)
    assert (result.as_numpy("predicted_class") == labels[:6]).mean() >= 0.8


def test_a_client_truncating_its_region_gets_an_error_not_a_crashed_server(
        grpc_client, image_server, digits, regions):
    """Shrinking the object under a registered region (ftruncate) used to make the server read
    and write past the end of its mapping: SIGBUS, every call in flight lost."""
    images, _ = digits
    x = model_input(images[:2])
    inp, in_name, in_key = _region(regions, x.nbytes)
    _, out_name, out_key = _region(regions, 1024)
    shm.set_shared_memory_region(inp, [x])
    grpc_client.register_system_shared_memory(in_name, in_key, x.nbytes)
    grpc_client.register_system_shared_memory(out_name, out_key, 1024)
    try:
        os.truncate(f"/dev/shm/{in_name}", 100)
        tensor = tgrpc.InferInput("images", list(x.shape), "FP32")
        tensor.set_shared_memory(in_name, x.nbytes)
        error = _raises(grpc_client.infer, MODEL, [tensor])
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert "(the object was truncated)" in error.message()
        os.truncate(f"/dev/shm/{out_name}", 0)
        logits = tgrpc.InferRequestedOutput("logits")
        logits.set_shared_memory(out_name, 2 * 10 * 4)
        error = _raises(grpc_client.infer, MODEL, [infer_input(tgrpc, "images", x, "FP32")],
                        outputs=[logits])
        assert "(the object was truncated)" in error.message()
        assert os.path.getsize(f"/dev/shm/{out_name}") == 0
        # the server is alive and serves the same inputs sent in the request
        result = grpc_client.infer(MODEL, [infer_input(tgrpc, "images", x, "FP32")])
        assert result.as_numpy("logits").shape == (2, 10)
    finally:
        grpc_client.unregister_system_shared_memory()
    assert image_server.proc is not None and image_server.proc.poll() is None


def test_shared_memory_refusals_name_the_problem(grpc_client, image_server, regions, tmp_path):
    _, name, key = _region(regions, 4096)
    cases = [
        # (name, key, byte_size, offset, message)
        (name, key, 8192, 0, f"shared memory key '{key}' holds 4096 bytes: too small for 8192 "
                             "bytes at offset 0"),
        (name, key, 4096, 1, "too small for 4096 bytes at offset 1"),
        (name, "/../etc/passwd", 16, 0, "is not a POSIX shared memory name"),
        (name, "/etc/passwd", 16, 0, "is not a POSIX shared memory name"),
        (name, "/..", 16, 0, "is not a POSIX shared memory name"),
        (name, "/hs-never-created", 16, 0,
         "unable to open shared memory key '/hs-never-created': No such file or directory"),
        (name, key, 0, 0, f"shared memory region '{name}' must have byte_size > 0"),
    ]
    link = Path("/dev/shm") / f"hs-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(tmp_path / "elsewhere")
    try:
        cases.append((name, f"/{link.name}", 16, 0, "Too many levels of symbolic links"))
        for region, k, size, offset, message in cases:
            error = _raises(grpc_client.register_system_shared_memory, region, k, size, offset)
            assert error.status() == "StatusCode.INVALID_ARGUMENT", error.message()
            assert message in error.message()
    finally:
        link.unlink()
    grpc_client.register_system_shared_memory(name, key, 4096)
    try:
        error = _raises(grpc_client.register_system_shared_memory, name, key, 16)
        assert f"shared memory region '{name}' is already registered" in error.message()
        error = _raises(grpc_client.get_system_shared_memory_status, "hs-unknown")
        assert error.status() == "StatusCode.NOT_FOUND"
        assert error_of(http(image_server, "/v2/systemsharedmemory/region/hs-unknown/status")
                        ) == (404, "Unable to find system shared memory region: 'hs-unknown'")
        x = np.zeros((1, 3, 32, 32), np.float32)  # 12288 bytes: more than the region
        for region, size, offset, message in [
            ("hs-unknown", 12288, 0, "names shared memory region 'hs-unknown', which is not "
                                     "registered"),
            (name, 12288, 0, f"input 'images' needs 12288 bytes at offset 0 of shared memory "
                             f"region '{name}', which holds 4096 bytes"),
            (name, 16, 4090, "needs 16 bytes at offset 4090"),
            (name, 16, 0, "input byte size mismatch for input 'images' for model "
                          "'digits-resnet'. Expected 12288, got 16"),
        ]:
            tensor = tgrpc.InferInput("images", list(x.shape), "FP32")
            tensor.set_shared_memory(region, size, offset=offset)
            error = _raises(grpc_client.infer, MODEL, [tensor])
            assert error.status() == "StatusCode.INVALID_ARGUMENT"
            assert message in error.message()
        output = tgrpc.InferRequestedOutput("logits")
        output.set_shared_memory(name, 8)  # 40 bytes of logits do not fit in 8
        error = _raises(grpc_client.infer, MODEL, [infer_input(tgrpc, "images", x, "FP32")],
                        outputs=[output])
        assert "output 'logits' is 40 bytes, more than its shared_memory_byte_size 8" in (
            error.message())
        body = json.dumps({"key": key, "byte_size": 16}).encode()
        assert error_of(http(image_server, f"/v2/systemsharedmemory/region/{name}/register",
                             body))[0] == 400
        body = json.dumps({"key": 5, "byte_size": 16}).encode()
        assert error_of(http(image_server, "/v2/systemsharedmemory/region/x/register", body)
                        ) == (400, "registering a region needs 'key' as a string")
    finally:
        grpc_client.unregister_system_shared_memory(name)
    assert grpc_client.is_server_ready()


# -- perf_analyzer -----------------------------------------------------------------------------


def _perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 (from its cache) even without a GPU."""
    cudart = PERF_ANALYZER.parents[3] / "nvidia" / "cuda_runtime" / "lib"
    return {**os.environ, "LD_LIBRARY_PATH": str(cudart)}


def _perf_analyzer(server: ServerProcess, model: str, *args: str) -> dict[str, int]:
    """Runs perf_analyzer briefly; returns its client and server request counts."""
    assert PERF_ANALYZER.exists(), f"{PERF_ANALYZER} is missing: run `make perf-analyzer`"
    url = f"127.0.0.1:{server.http_port}" if "http" in args else server.target
    proc = subprocess.run(
        [str(PERF_ANALYZER), "-m", model, "-u", url, *args, "--request-count", "150",
         "--concurrency-range", "2"],
        capture_output=True, text=True, timeout=90,
        env=_perf_analyzer_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = dict(re.findall(r"(Request count|Successful request count|Inference count): (\d+)",
                             proc.stdout))
    return {k: int(v) for k, v in counts.items()}


def _stats(client: Any, model: str) -> dict[str, int]:
    (s,) = client.get_inference_statistics(model)["model_stats"]
    return {"success": int(s["inference_stats"]["success"]["count"]),
            "fail": int(s["inference_stats"]["fail"]["count"])}


@pytest.mark.parametrize(("model", "args"), [
    (MODEL, ("-i", "http")),                                   # its default: random FP32
    (MODEL, ("-i", "grpc", "--streaming")),
    (MODEL, ("-i", "grpc", "--shared-memory", "system")),
    (f"{MODEL}-pixels", ("-i", "http", "--shared-memory", "system", "-b", "4")),
], ids=["http", "grpc-streaming", "grpc-shared-memory", "http-shared-memory-pixels"])
def test_perf_analyzer_drives_the_server(image_server, http_client, model, args):
    before = _stats(http_client, model)
    counts = _perf_analyzer(image_server, model, *args)
    after = _stats(http_client, model)
    assert counts["Request count"] > 0
    assert after["fail"] == before["fail"]
    assert after["success"] - before["success"] >= counts["Request count"]


def test_perf_analyzer_sends_encoded_pngs_from_its_input_data_file(
        image_server, http_client, digits, tmp_path):
    images, _ = digits
    pngs = [encode_png(img) for img in images[:8]]
    # perf_analyzer's stock format: b64 holds the tensor's raw bytes (BYTES: 4-byte length
    # + file, per element)
    data = {"data": [{"image_files": {"b64": base64.b64encode(struct.pack("<I", len(p)) + p)
                                      .decode()}} for p in pngs]}
    path = tmp_path / "pngs.json"
    path.write_text(json.dumps(data))
    before = _stats(http_client, f"{MODEL}-files")
    counts = _perf_analyzer(image_server, f"{MODEL}-files", "-i", "http", "--input-data",
                            str(path))
    after = _stats(http_client, f"{MODEL}-files")
    assert after["success"] - before["success"] >= counts["Request count"] > 0
    assert after["fail"] == before["fail"]
    bad = tmp_path / "bad.json"  # the raw bytes without their length: refused, exact message
    bad.write_text(json.dumps({"data": [{"image_files": {"b64": base64.b64encode(
        pngs[0]).decode()}}]}))
    proc = subprocess.run(
        [str(PERF_ANALYZER), "-m", f"{MODEL}-files", "-u", f"127.0.0.1:{image_server.http_port}",
         "-i", "http", "--input-data", str(bad), "--request-count", "10"],
        capture_output=True, text=True, timeout=60,
        env=_perf_analyzer_env())
    assert proc.returncode != 0
    assert "raw data of BYTES input 'image_files' is malformed: element 0 declares" in (
        proc.stdout + proc.stderr)
    assert _stats(http_client, f"{MODEL}-files")["fail"] > after["fail"]


# -- a stream's memory -------------------------------------------------------------------------


def test_one_stream_holds_about_one_large_message_not_its_whole_window():
    """40 requests of a tiny 7000 x 7000 PNG padded with 40 MB after IEND, waiting on the
    decode budget, took one stream's server from 126 to 4,486 MiB: the stream kept 64 whole
    messages in progress. Now it is flow-controlled by bytes (STREAM_WINDOW_BYTES)."""
    import io

    from PIL import Image
    from tritonclient.grpc import service_pb2 as oip  # wire-identical: see test_inference_protocol
    from tritonclient.grpc import service_pb2_grpc as oip_grpc

    from server_process import start_server

    mib = 1024 * 1024
    budget = 512 * mib  # the default: one 7000 x 7000 decode (262 MiB estimated) at a time
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000), 128).save(buffer, "PNG", compress_level=9)
    padded = buffer.getvalue() + bytes(40 * mib)  # Pillow stops at IEND: the padding is dead
    n = 16

    def requests() -> Iterator[oip.ModelInferRequest]:
        for i in range(n):
            request = oip.ModelInferRequest(model_name=MODEL, id=str(i))
            request.inputs.add(name="images", datatype="BYTES", shape=[1]
                               ).contents.bytes_contents.append(padded)
            yield request

    server = start_server(["--decode-budget-bytes", str(budget), "--max-queue-size", "64"],
                          env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    try:
        assert server.proc is not None
        baseline = proc_status(server.proc.pid, "VmRSS")
        with grpc.insecure_channel(server.target, options=[
                ("grpc.max_send_message_length", 64 * mib)]) as channel:
            answers = list(oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                requests(), timeout=600))
        assert [a.infer_response.id for a in answers] == [str(i) for i in range(n)]
        assert all(not a.error_message for a in answers), answers[0].error_message
        peak = proc_status(server.proc.pid, "VmHWM")
        print(f"\nbaseline {baseline / mib:.0f} MiB, peak {peak / mib:.0f} MiB "
              f"(+{(peak - baseline) / mib:.0f} MiB) for {n} x {len(padded) / mib:.0f} MiB")
        assert peak < baseline + budget + 256 * mib
        assert "Traceback" not in server.output()
    finally:
        server.stop()
