"""End to end: the Open Inference Protocol (KServe V2 gRPC), driven by tritonclient.

tritonclient's own generated messages are used for the raw-stub tests too, so every call here
also proves hardscore's .proto is wire compatible with Triton's. (tritonclient and hardscore's
inference stubs register the same ``inference.*`` names, so this process never imports the
latter: the server runs in a subprocess.)
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

try:
    import tritonclient.grpc as tc
except TypeError as exc:  # "duplicate symbol 'inference.DataType'"
    raise ImportError(
        "tritonclient cannot be imported: this process already imported "
        "hardscore_server.transport.inference_protocol.grpc_service_pb2 (or the server), which "
        "registers the same "
        "inference.* protobuf names in the default descriptor pool. Tests running in the pytest "
        "process must build Open Inference Protocol messages with tritonclient.grpc.service_pb2 "
        "(wire-identical, see test_proto_matches_tritons_field_numbers_and_types)") from exc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.pipeline.scores import score_logits
from hardscore_server.tools.digits import upscale_rgb

from conftest import PROTOC_PYTHON, REPO, metric, scrape
from oip_inputs import infer_input, model_input

MODEL = "digits-resnet"
SCORES = ("confidence", "margin", "hardness", "hardness_normalized")
LABEL_SCORES = ("mistakenness", "mistakenness_confidence", "label_issue_score",
                "margin_issue_score")


@pytest.fixture(scope="module")
def client(image_server):
    with tc.InferenceServerClient(image_server.target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(image_server):
    with grpc.insecure_channel(image_server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _infer_error(client, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        client.infer(*args, **kwargs)
    return info.value


# -- the contract ------------------------------------------------------------------------------


def _compile_descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "inference.pb"
    proc = subprocess.run(
        [str(PROTOC_PYTHON), "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}",
         f"--descriptor_set_out={out}", "inference/grpc_service.proto"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_proto_matches_tritons_field_numbers_and_types(tmp_path):
    (ours,) = _compile_descriptor_set(tmp_path).file
    pool = service_pb2.DESCRIPTOR.pool
    checked = 0

    def compare(message: descriptor_pb2.DescriptorProto, full_name: str) -> None:
        nonlocal checked
        theirs = pool.FindMessageTypeByName(full_name)
        for field in message.field:
            other = theirs.fields_by_number.get(field.number)
            assert other is not None, f"{full_name}.{field.name}: no field {field.number}"
            assert (other.name, other.type) == (field.name, field.type), f"{full_name}"
            assert other.is_repeated == (field.label == field.LABEL_REPEATED), field.name
            if field.type_name:
                target = other.message_type or other.enum_type
                assert "." + target.full_name == field.type_name, f"{full_name}.{field.name}"
            checked += 1
        for nested in message.nested_type:
            compare(nested, f"{full_name}.{nested.name}")
        for enum in message.enum_type:
            compare_enum(enum, f"{full_name}.{enum.name}")

    def compare_enum(enum: descriptor_pb2.EnumDescriptorProto, full_name: str) -> None:
        theirs = pool.FindEnumTypeByName(full_name)
        assert {(v.name, v.number) for v in enum.value} <= {
            (v.name, v.number) for v in theirs.values}, full_name

    assert ours.package == "inference"
    for message in ours.message_type:
        compare(message, f"inference.{message.name}")
    for enum in ours.enum_type:
        compare_enum(enum, f"inference.{enum.name}")
    (service,) = ours.service
    theirs = pool.FindServiceByName("inference.GRPCInferenceService")
    for method in service.method:
        other = theirs.methods_by_name[method.name]
        assert "." + other.input_type.full_name == method.input_type
        assert "." + other.output_type.full_name == method.output_type
    assert checked > 100


# -- health and metadata -----------------------------------------------------------------------


def test_health_server_metadata_and_readiness(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("resnet50")
    meta = client.get_server_metadata()
    assert meta.name == "hardscore"
    assert meta.version == importlib.metadata.version("hardscore")
    assert set(meta.extensions) >= {"model_configuration", "statistics"}


def test_model_metadata_and_config_describe_the_model(client):
    meta = client.get_model_metadata(MODEL)
    assert (meta.name, list(meta.versions), meta.platform) == (MODEL, ["1"], "onnxruntime_onnx")
    (images,) = meta.inputs
    assert (images.name, images.datatype, list(images.shape)) == ("images", "FP32",
                                                                  [-1, 3, 32, 32])
    outputs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert outputs["logits"] == ("FP32", [-1, 10])
    assert outputs["probabilities"] == ("FP64", [-1, 10])
    assert outputs["predicted_class"] == ("INT64", [-1])
    for name in SCORES + LABEL_SCORES:
        assert outputs[name] == ("FP64", [-1])

    config = client.get_model_config(MODEL).config
    assert (config.name, config.max_batch_size, config.backend) == (MODEL, 16, "onnxruntime")
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    (model_input,) = config.input
    assert (model_input.name, list(model_input.dims)) == ("images", [3, 32, 32])
    assert model_input.data_type == 11  # TYPE_FP32
    dims = {o.name: list(o.dims) for o in config.output}
    assert dims["logits"] == [10] and dims["hardness"] == [1]
    assert config.instance_group[0].count == 1
    assert "label" in config.parameters["optional_inputs"].string_value

    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("resnet50")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "'resnet50' is not found" in info.value.message()


# -- inference ---------------------------------------------------------------------------------


def test_fp32_request_larger_than_max_batch_size_is_split_by_the_batcher(
        client, image_server, digits):
    images, labels = digits
    n = 200  # max_batch_size is 16: at least 13 batches
    before_stats = client.get_inference_statistics(MODEL).model_stats[0]
    before = scrape(image_server.metrics_url)
    result = client.infer(MODEL, [infer_input(tc, "images", model_input(images[:n]), "FP32")])
    after = scrape(image_server.metrics_url)
    after_stats = client.get_inference_statistics(MODEL).model_stats[0]

    response = result.get_response()
    assert (response.model_name, response.model_version) == (MODEL, "1")
    assert [o.name for o in response.outputs] == [
        "logits", "probabilities", "predicted_class", *SCORES]  # no label: no label scores
    logits = result.as_numpy("logits")
    assert logits.shape == (n, 10) and logits.dtype == np.float32
    predicted = result.as_numpy("predicted_class")
    assert predicted.dtype == np.int64
    assert (predicted == labels[:n]).mean() >= 0.95
    expected = score_logits(logits)
    np.testing.assert_array_equal(predicted, expected.predicted_class)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.probabilities,
                               atol=1e-12)
    for name in SCORES:
        np.testing.assert_allclose(result.as_numpy(name), getattr(expected, name), atol=1e-5)

    assert after_stats.inference_count - before_stats.inference_count == n
    batches = after_stats.execution_count - before_stats.execution_count
    assert batches >= math.ceil(n / 16)
    assert metric(after, "hardscore_batch_size_count", model=MODEL) - metric(
        before, "hardscore_batch_size_count", model=MODEL) == batches
    assert max(b.batch_size for b in after_stats.batch_stats) <= 16
    assert metric(after, "hardscore_requests_total", method="ModelInfer", code="OK") - metric(
        before, "hardscore_requests_total", method="ModelInfer", code="OK") == 1


def test_uint8_pixels_and_png_bytes_give_the_fp32_logits(client, digits):
    images, _ = digits
    batch = images[:24]
    fp32 = client.infer(MODEL, [infer_input(tc, "images", model_input(batch), "FP32")], outputs=[
        tc.InferRequestedOutput("logits")]).as_numpy("logits")
    pixels = np.ascontiguousarray(upscale_rgb(batch).transpose(0, 3, 1, 2))  # [N, 3, 32, 32]
    uint8 = client.infer(MODEL, [infer_input(tc, "images", pixels, "UINT8")]).as_numpy("logits")
    np.testing.assert_allclose(uint8, fp32, atol=1e-5)
    pngs = np.array([encode_png(img) for img in batch], dtype=np.object_)
    for shape in ((len(batch),), (len(batch), 1)):  # [N] and [N, 1]
        encoded = client.infer(MODEL, [infer_input(tc, "images", pngs.reshape(shape), "BYTES")])
        np.testing.assert_allclose(encoded.as_numpy("logits"), fp32, atol=1e-4)


def test_label_input_gives_fiftyone_mistakenness_and_finds_corrupted_labels(client, digits):
    images, labels = digits
    n = 120
    given = labels[:n].copy()
    given[:10] = (given[:10] + 3) % 10  # corrupted
    given[10:15] = -1  # no label
    for datatype, dtype in (("INT64", np.int64), ("INT32", np.int32)):
        result = client.infer(MODEL, [infer_input(tc, "images", model_input(images[:n]), "FP32"),
                                      infer_input(tc, "label", given.astype(dtype), datatype)])
        names = [o.name for o in result.get_response().outputs]
        assert names[-4:] == list(LABEL_SCORES)
        expected = score_logits(result.as_numpy("logits"), given)
        for name in SCORES + LABEL_SCORES:
            np.testing.assert_allclose(result.as_numpy(name), getattr(expected, name),
                                       atol=1e-5, err_msg=name)
        mistakenness = result.as_numpy("mistakenness")
        assert np.isnan(mistakenness[10:15]).all()
        assert (mistakenness[:10] > 0.5).all()
        top = set(np.argsort(-np.nan_to_num(result.as_numpy("label_issue_score")))[:10].tolist())
        assert len(top & set(range(10))) >= 9


def test_requested_outputs_come_back_alone_and_in_order(client, digits):
    images, labels = digits
    result = client.infer(
        MODEL, [infer_input(tc, "images", model_input(images[:5]), "FP32")],
        outputs=[tc.InferRequestedOutput("hardness"), tc.InferRequestedOutput("predicted_class"),
                 tc.InferRequestedOutput("mistakenness")])
    assert [o.name for o in result.get_response().outputs] == [
        "hardness", "predicted_class", "mistakenness"]
    assert (result.as_numpy("predicted_class") == labels[:5]).all()
    assert np.isnan(result.as_numpy("mistakenness")).all()  # asked for without labels
    assert result.as_numpy("logits") is None


def _typed_request(name: str, datatype: str, shape: list[int], **contents) -> object:
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="req-7")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_are_answered_with_typed_contents(client, stub, digits):
    images, labels = digits
    batch = images[:6]
    x = model_input(batch)
    raw = client.infer(MODEL, [infer_input(tc, "images", x, "FP32"),
                               infer_input(tc, "label", labels[:6], "INT64")])
    pixels = upscale_rgb(batch).transpose(0, 3, 1, 2)
    requests = [
        _typed_request("images", "FP32", list(x.shape), fp32_contents=x.ravel().tolist()),
        _typed_request("images", "UINT8", list(pixels.shape),
                       uint_contents=pixels.ravel().tolist()),
        _typed_request("images", "BYTES", [6], bytes_contents=[encode_png(i) for i in batch]),
    ]
    for request in requests:
        label = request.inputs.add(name="label", datatype="INT64", shape=[6])
        label.contents.int64_contents.extend(labels[:6].tolist())
        response = stub.ModelInfer(request, timeout=30)
        assert response.id == "req-7" and not response.raw_output_contents
        outputs = {o.name: o for o in response.outputs}
        logits = np.array(outputs["logits"].contents.fp32_contents).reshape(6, 10)
        np.testing.assert_allclose(logits, raw.as_numpy("logits"), atol=1e-4)
        assert list(outputs["predicted_class"].contents.int64_contents) == labels[:6].tolist()
        assert list(outputs["mistakenness"].shape) == [6]
        np.testing.assert_allclose(outputs["mistakenness"].contents.fp64_contents,
                                   raw.as_numpy("mistakenness"), atol=1e-5)


def test_nan_and_infinite_inputs_are_answered_and_the_server_keeps_serving(client, digits):
    images, labels = digits
    x = model_input(images[:4])
    x[0] = np.nan
    x[1, 0, 0, 0] = np.inf
    x[2] = np.random.default_rng(0).integers(0, 2**32, x[2].size, dtype=np.uint32).view(
        np.float32).reshape(x[2].shape)  # random bits, as perf_analyzer sends
    result = client.infer(MODEL, [infer_input(tc, "images", x, "FP32"),
                                  infer_input(tc, "label", labels[:4], "INT64")])
    assert np.isnan(result.as_numpy("hardness")[0])
    assert np.isnan(result.as_numpy("mistakenness")[0])
    assert result.as_numpy("predicted_class")[0] == -1
    assert result.as_numpy("predicted_class")[3] == labels[3]  # the clean neighbour
    assert client.is_server_live()
    again = client.infer(MODEL, [infer_input(tc, "images", model_input(images[:2]), "FP32")])
    assert (again.as_numpy("predicted_class") == labels[:2]).all()


# -- errors ------------------------------------------------------------------------------------


def test_unknown_model_and_version_are_not_found(client, digits):
    x = [infer_input(tc, "images", model_input(digits[0][:1]), "FP32")]
    error = _infer_error(client, "resnet50", x)
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'resnet50' is not found" in error.message()
    error = _infer_error(client, MODEL, x, model_version="3")
    assert error.status() == "StatusCode.NOT_FOUND" and "version 3" in error.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("resnet50")
    assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(("make_inputs", "message"), [
    (lambda x: [infer_input(tc, "images", x[:, :, :28, :28].copy(), "FP32")],
     "unexpected shape for input 'images' for model 'digits-resnet'. Expected [-1,3,32,32], "
     "got [2,3,28,28]"),
    (lambda x: [infer_input(tc, "images", x.astype(np.float64), "FP64")],
     "inference input 'images' data-type is 'FP64', but model 'digits-resnet' expects 'FP32'"),
    (lambda x: [infer_input(tc, "pixels", x, "FP32")], "unexpected inference input 'pixels'"),
    (lambda x: [infer_input(tc, "images", np.array([encode_png(np.zeros((8, 8), np.uint8)),
                                           b"not an image"], dtype=np.object_), "BYTES")],
     "input 'images' element 1 cannot be used: decode: image: cannot identify image file"),
    (lambda x: [infer_input(tc, "images", x, "FP32"),
                infer_input(tc, "label", np.array([1, 12]), "INT64")],
     "input 'label' element 1 is 12: labels are class indices 0..9, or -1 for none"),
    (lambda x: [infer_input(tc, "images", x, "FP32"),
                infer_input(tc, "label", np.array([1, 2, 3]), "INT64")],
     "unexpected shape for input 'label' for model 'digits-resnet'. Expected [2]"),
    (lambda x: [infer_input(tc, "images", x, "FP32"),
                infer_input(tc, "label", np.array([1.0, 2.0]), "FP64")],
     "inference input 'label' data-type is 'FP64', but model 'digits-resnet' expects 'INT32' "
     "or 'INT64'"),
    (lambda x: [infer_input(tc, "label", np.array([1, 2]), "INT64")],
     "missing required input(s) ['images']"),
])
def test_bad_inputs_are_invalid_argument_with_a_precise_message(
        client, digits, make_inputs, message):
    error = _infer_error(client, MODEL, make_inputs(model_input(digits[0][:2])))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def test_bad_outputs_byte_sizes_and_raw_data_are_invalid_argument(client, stub, digits):
    x = model_input(digits[0][:2])
    error = _infer_error(client, MODEL, [infer_input(tc, "images", x, "FP32")],
                         outputs=[tc.InferRequestedOutput("embeddings")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected inference output 'embeddings' for model 'digits-resnet'" in error.message()

    cases = []
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="FP32", shape=[2, 3, 32, 32])
    request.raw_input_contents.append(x.tobytes()[:-4])
    cases.append((request, "input byte size mismatch for input 'images' for model "
                           "'digits-resnet'. Expected 24576, got 24572"))
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(struct.pack("<I", 3) + b"abc" + struct.pack("<I", 99))
    cases.append((request, "element 1 declares 99 bytes, only 0 remain"))
    cases.append((_typed_request("images", "FP32", [2, 3, 32, 32], fp32_contents=[0.0] * 10),
                  "Expected 6144 (shape [2,3,32,32]), got 10"))
    cases.append((_typed_request("images", "UINT8", [1, 3, 32, 32],
                                 uint_contents=[300] * 3072), "holds 300 at index 0"))
    cases.append((_typed_request("images", "FP32", [1, 3, 32, 32], int_contents=[0] * 3072),
                  "belongs in contents.fp32_contents, but contents.int_contents is set"))
    cases.append((_typed_request("images", "FP32", [0, 3, 32, 32]), "holds 0 images"))
    cases.append((_typed_request("images", "FP32", [300, 3, 32, 32]),
                  "holds 300 images, more than this server takes in one request (256)"))
    for request, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert message in info.value.details()
    assert client.is_server_ready()


def test_statistics_count_requests_samples_batches_and_durations(client, digits):
    client.infer(MODEL, [infer_input(tc, "images", model_input(digits[0][:3]), "FP32")])
    (stats,) = client.get_inference_statistics(MODEL).model_stats
    every = client.get_inference_statistics("").model_stats  # empty name: every model
    assert [m.name for m in every] == [MODEL, f"{MODEL}-pixels", f"{MODEL}-files"]
    assert stats.name == MODEL and stats.version == "1"
    s = stats.inference_stats
    assert stats.inference_count >= 3 and stats.execution_count >= 1
    # requests (test_inference_rest counts them exactly): fewer than samples here
    assert s.success.count == s.queue.count == s.compute_infer.count < stats.inference_count
    assert s.compute_input.count == s.compute_output.count == s.compute_infer.count
    assert s.success.ns >= s.queue.ns + s.compute_infer.ns > 0
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    # the batches that ran this name's samples: equal when none also held another name's
    # (test_inference_rest checks it exactly on a fresh server)
    assert sum(b.batch_size * b.compute_infer.count
               for b in stats.batch_stats) >= stats.inference_count
    assert stats.last_inference > 0
