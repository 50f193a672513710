"""Fuzzing every request type of every service on the port with hypothesis.

Requests are drawn from the message descriptors (every field, oneof and map, nested messages
included), with domain-shaped values where random ones would never get past the first check:
tensors whose byte length matches their shape (NaN, infinity and extreme values included),
images that are random bytes, real PNG/JPEG/WebP/BMP/GIF/TIFF files of random sizes and modes,
truncated or bit-flipped files, and Open Inference Protocol requests with consistent inputs. A
second test sends random bytes as the serialised request of every method.

Each call must end, within its deadline, in an expected status (OK with a well-formed reply,
or INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED); never INTERNAL, UNKNOWN or a hang. After
every example the health check answers; after every test a good request is scored correctly; at
the end the server process is alive and logged no unexpected error.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2 as oip  # wire-identical; see test_inference_protocol

from hardscore_client import ScoringClient
from hardscore_wire import scoring_pb2 as pb

from conftest import served_oip_methods
from server_process import ServerProcess, start_server

MAX_MESSAGE = 4 * 1024 * 1024
CALL_TIMEOUT_S = 30.0
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED}


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    server = start_server(["--max-message-bytes", str(MAX_MESSAGE), "--max-rows-per-request",
                           "4096", "--max-batch-size", "16", "--max-queue-size", "512"])
    yield server
    code = server.stop()
    log = server.output()
    assert code == 0, log
    assert "failed unexpectedly" not in log and "Exception in callback" not in log, log
    # grpc's log of an exception escaping a handler: none, unparseable requests included
    assert "Unexpected [" not in log and "Traceback" not in log, log


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    limit = 2 * MAX_MESSAGE  # the client lets oversized requests through: the server refuses
    with grpc.insecure_channel(fuzz_server.target, options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit)]) as ch:
        yield ch


# -- values ----------------------------------------------------------------------------------

_I32, _U32 = (-(2**31), 2**31 - 1), (0, 2**32 - 1)
_I64, _U64 = (-(2**63), 2**63 - 1), (0, 2**64 - 1)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: _I32, FieldDescriptor.TYPE_SINT32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32, FieldDescriptor.TYPE_UINT32: _U32,
    FieldDescriptor.TYPE_FIXED32: _U32, FieldDescriptor.TYPE_INT64: _I64,
    FieldDescriptor.TYPE_SINT64: _I64, FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_UINT64: _U64, FieldDescriptor.TYPE_FIXED64: _U64,
}

MODEL_NAMES = st.sampled_from(["", "digits-resnet", "resnet-9000", "digits-resnet\x00", "../x"])
OIP_DATATYPES = ["FP32", "UINT8", "BYTES", "INT32", "INT64", "FP64", "FP16", "BOOL", "", "fp32"]
OIP_OUTPUTS = ["logits", "probabilities", "predicted_class", "confidence", "margin", "hardness",
               "hardness_normalized", "mistakenness", "mistakenness_confidence",
               "label_issue_score", "margin_issue_score", "nope"]
# Plausible values for fields by name, mixed with arbitrary ones.
HINTS: dict[str, st.SearchStrategy[Any]] = {
    "model_name": MODEL_NAMES,
    "name": st.sampled_from(["", "digits-resnet", "images", "label", "logits", "x"]),
    "model_version": st.sampled_from(["", "1", "2", "-1", "latest"]),
    "version": st.sampled_from(["", "1", "2"]),
    "datatype": st.sampled_from(OIP_DATATYPES),
    "class_names": st.sampled_from([str(i) for i in range(10)] + ["", "cat"]),
    "label_name": st.sampled_from([str(i) for i in range(10)] + ["", "zebra", "1 "]),
    "label_index": st.integers(-3, 12),
    "temperature": st.sampled_from([1.0, 0.5, 2.0, 0.0, -1.0, 1e-300, 1e300, math.inf, math.nan]),
    "service": st.sampled_from(["", "hardscore.v1.ScoringService", "nope"]),
    "file_containing_symbol": st.sampled_from(["hardscore.v1.ScoringService", "nope", ""]),
}


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    t = field.type
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        return st.one_of(st.integers(max(lo, -3), min(hi, 40)), st.integers(lo, hi))
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=12)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [77])
    raise AssertionError(f"unhandled field type {t}")


_cache: dict[tuple[str, int], st.SearchStrategy[Any]] = {}


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Arbitrary messages of ``descriptor``: any subset of fields, at most one per oneof."""
    special = SPECIAL.get(descriptor.full_name)
    if special is not None and depth > 0:
        return special()
    key = (descriptor.full_name, depth)
    if key in _cache:
        return _cache[key]
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        values[field.name] = _field(field, depth)
    groups = [[f.name for f in o.fields] for o in descriptor.oneofs]
    in_oneof = {name for group in groups for name in group}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        kwargs: dict[str, Any] = {}
        for name, strategy in values.items():
            if name not in in_oneof and draw(st.booleans()):
                kwargs[name] = draw(strategy)
        for group in groups:
            chosen = draw(st.none() | st.sampled_from(group))
            if chosen is not None:
                kwargs[chosen] = draw(values[chosen])
        return cls(**kwargs)

    _cache[key] = build()
    return _cache[key]


def _field(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return st.dictionaries(_scalar(key_field), _field(value_field, depth + 1),
                                   max_size=3)
        one: st.SearchStrategy[Any] = st.deferred(lambda: messages(entry, depth + 1))
    else:
        one = HINTS.get(field.name, _scalar(field))
        if field.name in HINTS:
            one = st.one_of(one, _scalar(field))
    return st.lists(one, max_size=4) if field.is_repeated else one


# -- domain-shaped values ------------------------------------------------------------------

ITEM = {pb.DATA_TYPE_UNSPECIFIED: 4, pb.DATA_TYPE_FLOAT32: 4, pb.DATA_TYPE_FLOAT64: 8,
        pb.DATA_TYPE_INT32: 4, pb.DATA_TYPE_UINT8: 1, 77: 4}
NUMPY: dict[int, Any] = {pb.DATA_TYPE_FLOAT32: np.float32, pb.DATA_TYPE_FLOAT64: np.float64,
         pb.DATA_TYPE_INT32: np.int32, pb.DATA_TYPE_UINT8: np.uint8}
HUGE_DIMS = [-1, 2**31, 2**40, 2**63 - 1]


def _numbers(seed: int, count: int, dtype: Any, wild: bool) -> bytes:
    """``count`` values of ``dtype``, little-endian; ``wild`` mixes in NaN, inf, extremes."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        values = rng.normal(0, 3, count).astype(dtype)
        if wild and count:
            specials = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 1e-40],
                                dtype=np.float64).astype(dtype)
            picks = rng.integers(0, count, max(1, count // 8))
            values[picks] = rng.choice(specials, len(picks))
    else:
        info = np.iinfo(dtype)
        low, high = (info.min, info.max) if wild else (max(info.min, -2), min(info.max, 12))
        values = rng.integers(low, high, count, endpoint=True).astype(dtype)
    return values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


@st.composite
def shapes(draw: st.DrawFn, image: bool = False) -> list[int]:
    if image and draw(st.booleans()):
        h, w = draw(st.integers(0, 40)), draw(st.integers(0, 40))
        c = draw(st.sampled_from([1, 2, 3, 4]))
        return draw(st.sampled_from([[h, w], [h, w, c], [c, h, w], [1, c, h, w]]))
    dims = st.one_of(st.integers(0, 12), st.sampled_from(HUGE_DIMS))
    return draw(st.lists(dims, max_size=4))


@st.composite
def tensors(draw: st.DrawFn, image: bool = False) -> pb.Tensor:
    dtype = draw(st.sampled_from(list(ITEM)))
    shape = draw(shapes(image))
    count = math.prod(shape) if all(0 <= d < 2**20 for d in shape) else -1
    if 0 <= count <= 50_000 and draw(st.integers(0, 4)) > 0:
        numpy_type = NUMPY.get(dtype, np.float32)
        data = _numbers(draw(st.integers(0, 2**32 - 1)), count, numpy_type, draw(st.booleans()))
        if draw(st.integers(0, 5)) == 0:  # off by a few bytes
            data = data[:max(0, len(data) - draw(st.integers(1, 8)))]
    else:
        data = draw(st.binary(max_size=64))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


FORMATS = ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]
MODES = ["L", "RGB", "RGBA", "P", "1", "I;16", "LA", "CMYK", "F"]


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """Random bytes, real image files of random sizes and modes, or broken ones."""
    kind = draw(st.sampled_from(["random", "file", "file", "truncated", "flipped", "magic"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # the format cannot hold this mode
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=fmt)
    data = buffer.getvalue()
    if kind == "truncated":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flipped":
        flipped = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            flipped[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped)
    if kind == "magic":
        return data[:8] + draw(st.binary(max_size=200))
    return data


@st.composite
def image_samples(draw: st.DrawFn) -> pb.ImageSample:
    sample: pb.ImageSample = draw(messages(pb.ImageSample.DESCRIPTOR))
    if draw(st.integers(0, 3)) > 0:
        if draw(st.booleans()):
            sample.encoded = draw(image_files())
        else:
            sample.pixels.CopyFrom(draw(tensors(image=True)))
    return sample


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    """ModelInfer requests shaped like real ones (images, labels, requested outputs)."""
    if draw(st.integers(0, 3)) == 0:
        return draw(messages(oip.ModelInferRequest.DESCRIPTOR))
    n = draw(st.integers(0, 6))
    raw = draw(st.booleans())
    request = oip.ModelInferRequest(
        model_name=draw(st.sampled_from(["digits-resnet"] * 6 + ["", "resnet-9000"])),
        model_version=draw(st.sampled_from(["", "", "", "1", "2"])))
    datatype = draw(st.sampled_from(["FP32", "UINT8", "BYTES"] * 3 + ["FP64", "INT64"]))
    images = request.inputs.add(name=draw(st.sampled_from(["images"] * 7 + ["x"])),
                                datatype=datatype)
    seed = draw(st.integers(0, 2**32 - 1))
    if datatype == "BYTES":
        files = [draw(image_files()) for _ in range(n)]
        images.shape.extend(draw(st.sampled_from([[n], [n, 1], [n, 2], [1]])))
        if raw:
            request.raw_input_contents.append(b"".join(
                len(f).to_bytes(4, "little") + f for f in files))
        else:
            images.contents.bytes_contents.extend(files)
    else:
        shape = draw(st.sampled_from([[n, 3, 32, 32]] * 4 + [[n, 32, 32, 3], [n, 3, 8, 8], [n]]))
        images.shape.extend(shape)
        dtype = {"FP32": np.float32, "UINT8": np.uint8, "FP64": np.float64, "INT64": np.int64}[
            datatype]
        data = _numbers(seed, math.prod(shape), dtype, draw(st.booleans()))
        if raw:
            request.raw_input_contents.append(data[:len(data) - draw(st.sampled_from([0, 0, 1]))])
        else:
            values = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).tolist()
            contents = images.contents
            target: Any = {"FP32": contents.fp32_contents, "FP64": contents.fp64_contents,
                           "INT64": contents.int64_contents, "UINT8": contents.uint_contents
                           }[datatype]
            target.extend(values)
    if draw(st.booleans()):
        label_type = draw(st.sampled_from(["INT64", "INT32"] * 3 + ["FP32"]))
        count = draw(st.sampled_from([n] * 5 + [n + 1]))
        labels = [draw(st.integers(-2, 11)) for _ in range(count)]
        label = request.inputs.add(name="label", datatype=label_type, shape=[len(labels)])
        if raw:
            wire = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4"}[label_type]
            request.raw_input_contents.append(np.array(labels, dtype=wire).tobytes())
        elif label_type == "FP32":
            label.contents.fp32_contents.extend(labels)
        else:
            (label.contents.int64_contents if label_type == "INT64"
             else label.contents.int_contents).extend(labels)
    for name in draw(st.lists(st.sampled_from(OIP_OUTPUTS), max_size=3)):
        request.outputs.add(name=name)
    return request


@st.composite
def logits_requests(draw: st.DrawFn) -> pb.ScoreLogitsRequest:
    """Mostly [N, C] float tensors of consistent size, with labels of about the right count."""
    request: pb.ScoreLogitsRequest = draw(messages(pb.ScoreLogitsRequest.DESCRIPTOR))
    if draw(st.integers(0, 3)) == 0:
        return request
    if draw(st.integers(0, 3)) > 0:  # options drawn above are mostly wrong for these logits
        request.ClearField("options")
    request.ClearField("labels")
    n, c = draw(st.integers(0, 20)), draw(st.sampled_from([0, 1, *range(2, 13), 2, 3, 10]))
    dtype = draw(st.sampled_from([pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT64]))
    data = _numbers(draw(st.integers(0, 2**32 - 1)), n * c, NUMPY[dtype], draw(st.booleans()))
    request.logits.CopyFrom(pb.Tensor(dtype=dtype, shape=[n, c], data=data))
    rows = draw(st.sampled_from([n] * 6 + [n + 1, max(0, n - 1)]))
    kind = draw(st.sampled_from(["none", "indices", "names"]))
    if kind == "indices":
        request.labels.indices.values[:] = draw(st.lists(st.integers(-2, c + 1), min_size=rows,
                                                         max_size=rows))
    elif kind == "names":
        names = [f"class{i}" for i in range(c)]
        request.labels.names.values[:] = draw(st.lists(
            st.sampled_from([*names, "", "zebra"]), min_size=rows, max_size=rows))
        if draw(st.integers(0, 3)) > 0:
            request.options.class_names[:] = names
    if draw(st.booleans()):
        request.options.include_probabilities = True
    ids = draw(st.sampled_from(["none", "none", "rows", "keep"]))
    if ids == "none":
        request.ClearField("ids")
    elif ids == "rows":
        request.ids[:] = [f"id{i}" for i in range(n)]
    return request


@st.composite
def images_requests(draw: st.DrawFn) -> pb.ScoreImagesRequest:
    request: pb.ScoreImagesRequest = draw(messages(pb.ScoreImagesRequest.DESCRIPTOR))
    if draw(st.integers(0, 3)) > 0:
        request.model_name = draw(st.sampled_from(["", "digits-resnet"]))
    if draw(st.booleans()):
        request.options.ClearField("temperature")
    return request


SPECIAL: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "hardscore.v1.Tensor": tensors,
    "hardscore.v1.ImageSample": image_samples,
    "hardscore.v1.ScoreLogitsRequest": logits_requests,
    "hardscore.v1.ScoreImagesRequest": images_requests,
}


# -- the methods and their requests ----------------------------------------------------------

def _service_methods() -> dict[str, MethodDescriptor]:
    services = [
        pb.DESCRIPTOR.services_by_name["ScoringService"],
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ]
    served = served_oip_methods()
    return {f"{s.name}.{m.name}": m for s in services for m in s.methods
            if m.name != "Watch"  # Watch streams until cancelled: not a request/reply
            and (s.name != "GRPCInferenceService" or m.name in served)}


METHODS = _service_methods()
REQUESTS: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "inference.ModelInferRequest": infer_requests,
    "hardscore.v1.ScoreLogitsRequest": logits_requests,
    "hardscore.v1.ScoreImagesRequest": images_requests,
}
EXAMPLES = {"ScoreLogits": 150, "ScoreLogitsStream": 60, "ScoreImages": 150,
            "ScoreImagesStream": 60, "ModelInfer": 200}


def _requests(method: MethodDescriptor) -> st.SearchStrategy[Any]:
    name = method.input_type.full_name
    one = REQUESTS[name]() if name in REQUESTS else messages(method.input_type)
    return st.lists(one, max_size=4) if method.client_streaming else one


def _call(channel: grpc.Channel, method: MethodDescriptor, request: Any, *,
          raw: bool = False) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Calls ``method``; returns (status, details, replies). ``raw``: bytes in, bytes out."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    reply_class = message_factory.GetMessageClass(method.output_type)
    serialize: Callable[[Any], bytes] = (lambda b: b) if raw else (lambda m: m.SerializeToString())
    call: Any
    if raw or (method.client_streaming and method.server_streaming):
        call = channel.stream_stream(path, request_serializer=serialize,
                                     response_deserializer=reply_class.FromString)
        argument = iter(request if isinstance(request, list) else [request])
        streaming_reply = True
    else:
        kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                 (True, False): channel.stream_unary}
        call = kinds[(method.client_streaming, method.server_streaming)](
            path, request_serializer=serialize, response_deserializer=reply_class.FromString)
        argument = iter(request) if method.client_streaming else request
        streaming_reply = method.server_streaming
    try:
        reply = call(argument, timeout=CALL_TIMEOUT_S)
        replies = list(reply) if streaming_reply else [reply]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", []
    return grpc.StatusCode.OK, "", replies


def _check_reply(name: str, request: Any, replies: list[Any]) -> None:
    """Well-formed OK replies: one result per row or chunk, in order."""
    if name == "ScoreLogits":
        rows = request.logits.shape[0] if len(request.logits.shape) else 0
        assert replies[0].scores.num_rows == rows
    elif name == "ScoreImages":
        n = len(request.samples)
        assert replies[0].scores.num_rows == n
        assert all(0 <= e.index < n for e in replies[0].errors)
        assert len({e.index for e in replies[0].errors}) == len(replies[0].errors)
    elif name in ("ScoreLogitsStream", "ScoreImagesStream"):
        assert len(replies) == len(request)
        first = 0
        for reply in replies:
            assert reply.first_row == first
            scores = reply.scores if name == "ScoreLogitsStream" else reply.result.scores
            first += scores.num_rows
    elif name == "ModelInfer":
        assert replies[0].outputs or not request.inputs


def _healthy(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=CALL_TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _serves_normally(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.output()
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]], dtype=np.float32)
    with ScoringClient(server.target, timeout=CALL_TIMEOUT_S) as client:
        result = client.score_logits(logits, [0, 1])
        assert result.predicted_class.tolist() == [0, 2]
        assert result.label_issue_score is not None and result.label_issue_score[1] > 0.9
        assert client.get_model_info().name == "digits-resnet"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fuzzed_requests_get_a_valid_status(name, fuzz_server, channel):
    method = METHODS[name]
    short = method.name

    @fuzz_settings(EXAMPLES.get(short, 40))
    @given(request=_requests(method))
    def run(request: Any) -> None:
        code, details, replies = _call(channel, method, request)
        assert code in EXPECTED, (code, details, request)
        if code == grpc.StatusCode.OK:
            _check_reply(short, request, replies)
        elif method.containing_service.name != "Health":  # grpc's own, answers bare NOT_FOUND
            assert details, code  # every refusal says why
        _healthy(channel)

    run()
    _serves_normally(fuzz_server)


@fuzz_settings(120)
@given(name=st.sampled_from(sorted(METHODS)), body=st.binary(max_size=512))
def test_random_bytes_as_requests_get_a_valid_status(fuzz_server, channel, name, body):
    code, details, _ = _call(channel, METHODS[name], body, raw=True)
    # Bytes that are not a message of the input type: INVALID_ARGUMENT from the call gate, on
    # unary and streaming methods alike (grpc.aio alone answers UNKNOWN with a traceback).
    assert code in EXPECTED, (code, details, body)
    if code == grpc.StatusCode.INVALID_ARGUMENT and "is not a valid" in details:
        assert "DecodeError" in details, details
    _healthy(channel)


def test_server_serves_normally_after_the_fuzzing(fuzz_server):
    _serves_normally(fuzz_server)
