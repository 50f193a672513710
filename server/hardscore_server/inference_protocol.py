"""The Open Inference Protocol (KServe V2 gRPC, ``inference.GRPCInferenceService``).

Standard inference clients (tritonclient, KServe, perf_analyzer) call the served model through
this service, on the same port as hardscore.v1. It is a thin layer: it unpacks the protocol's
tensors, runs them through the same dynamic batcher as ScoreImages (``ImageScorer.batcher``),
scores the logits with ``score_logits`` and packs the scores as extra output tensors.

Inputs of ModelInfer (tensor data in ``raw_input_contents`` or typed ``contents``):

- ``images`` (the manifest's input name), one of
  FP32 ``[N, C, H, W]``: the model input, already normalised (``(pixel / 255 - mean) / std``);
  taken as is, NaN and infinity included (they give NaN scores, never an error);
  UINT8 ``[N, C, H, W]``: pixels 0..255, normalised here with the manifest's mean and std;
  BYTES ``[N]`` or ``[N, 1]``: encoded image files (JPEG, PNG, WebP, BMP, GIF, TIFF), decoded and
  resized here exactly as ScoreImages does. The protocol has no per-sample errors, so one
  undecodable image fails the call with INVALID_ARGUMENT naming its index.
- ``label`` (optional), INT32 or INT64 ``[N]`` or ``[N, 1]``: given class indices, -1 = none.

Outputs, raw when the request was raw: those the request lists in ``outputs``, else all of
them, the label scores only when a ``label`` input was given. Label scores asked for by name
without a ``label`` input are NaN, as for label -1 (clients such as perf_analyzer ask for every
output the metadata lists):

========================  =======  ======  ==============================================
name                      type     shape   meaning
========================  =======  ======  ==============================================
logits                    FP32     [N, K]  the model's output
probabilities             FP64     [N, K]  softmax(logits / temperature)
predicted_class           INT64    [N]     argmax; -1 where the logits are not finite
confidence                FP64     [N]     max probability
margin                    FP64     [N]     top-1 minus top-2 probability
hardness                  FP64     [N]     entropy (nats), FiftyOne's compute_hardness
hardness_normalized       FP64     [N]     hardness / ln K
mistakenness              FP64     [N]     FiftyOne's logits mistakenness (label given)
mistakenness_confidence   FP64     [N]     FiftyOne's default mistakenness (label given)
label_issue_score         FP64     [N]     1 - p(given label) (label given)
margin_issue_score        FP64     [N]     1 - normalized margin (label given)
========================  =======  ======  ==============================================

Scores are FP64 because ``score_logits`` computes them in float64: the numbers are FiftyOne's to
the last bit. Rows without a label (-1) get NaN label scores; non-finite logits give NaN scores.

Errors use the status codes and message wording of Triton, the protocol's reference server:
unknown model or version NOT_FOUND, bad shapes, datatypes and byte sizes INVALID_ARGUMENT, a
full queue RESOURCE_EXHAUSTED, an expired deadline DEADLINE_EXCEEDED. Unlike Triton, a request
may hold more than ``max_batch_size`` images: the batcher splits it across batches.

ModelStatistics reports the batcher's cumulative counts, which include ScoreImages traffic (one
model, one batcher). Counts are in samples (images): ``success``, ``queue`` and
``compute_infer`` count samples, and their durations sum each sample's queue wait and the
duration of the batch it ran in, so the averages are per image (per request for batch-1
clients such as perf_analyzer's default).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import json
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from hardscore_client.proto import grpc_service_pb2 as oip
from hardscore_client.proto import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.config import ServerConfig
from hardscore_server.image_scoring import ImageScorer, UnknownModel
from hardscore_server.metrics import ServerMetrics
from hardscore_server.preprocess import SampleError, decode_image
from hardscore_server.scores import NO_LABEL, ScoreBatch, score_logits
from hardscore_server.servicer import CallRecorder, deadline_of
from hardscore_server.validation import InvalidRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "hardscore"
EXTENSIONS = ("model_configuration", "statistics")
"""Triton protocol extensions served besides the core protocol."""
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
LABEL_INPUT = "label"
IMAGE_DATATYPES = ("FP32", "UINT8", "BYTES")
LABEL_DATATYPES = ("INT32", "INT64")

Float32Array = npt.NDArray[np.float32]

#: Little-endian numpy dtype of each fixed-size datatype (the raw encoding).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: The ``InferTensorContents`` field holding each datatype's typed values.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(dict.fromkeys(CONTENTS_FIELDS.values()))
_CONFIG_TYPES = {"FP32": oip.TYPE_FP32, "FP64": oip.TYPE_FP64, "INT64": oip.TYPE_INT64,
                 "UINT8": oip.TYPE_UINT8, "INT32": oip.TYPE_INT32, "BYTES": oip.TYPE_STRING}


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: name, datatype, per-sample shape (() or (classes,)), needs a label."""

    name: str
    datatype: str
    per_class: bool = False
    needs_label: bool = False


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("logits", "FP32", per_class=True),
    OutputSpec("probabilities", "FP64", per_class=True),
    OutputSpec("predicted_class", "INT64"),
    OutputSpec("confidence", "FP64"),
    OutputSpec("margin", "FP64"),
    OutputSpec("hardness", "FP64"),
    OutputSpec("hardness_normalized", "FP64"),
    OutputSpec("mistakenness", "FP64", needs_label=True),
    OutputSpec("mistakenness_confidence", "FP64", needs_label=True),
    OutputSpec("label_issue_score", "FP64", needs_label=True),
    OutputSpec("margin_issue_score", "FP64", needs_label=True),
)
OUTPUTS_BY_NAME = {o.name: o for o in OUTPUTS}


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass
class _Input:
    """One input tensor of a request: its message and its raw bytes (None when typed)."""

    tensor: oip.ModelInferRequest.InferInputTensor
    raw: bytes | None


class TensorReader:
    """Reads input tensors' data, checking it against the declared datatype and shape."""

    def __init__(self, model: str) -> None:
        self.model = model

    def element_count(self, name: str, shape: Sequence[int]) -> int:
        if any(d < 0 for d in shape):
            raise InvalidRequest(
                f"invalid shape {_shape_text(shape)} for input '{name}' for model "
                f"'{self.model}': dimensions must be >= 0")
        return math.prod(shape)

    def numeric(self, item: _Input, shape: Sequence[int]) -> np.ndarray:
        """A fixed-size datatype's values as a native-endian array of ``shape`` (a copy)."""
        t = item.tensor
        dtype = NUMPY_DTYPES[t.datatype]
        count = self.element_count(t.name, shape)
        if item.raw is not None:
            expected = count * dtype.itemsize
            if len(item.raw) != expected:
                raise InvalidRequest(
                    f"input byte size mismatch for input '{t.name}' for model '{self.model}'. "
                    f"Expected {expected}, got {len(item.raw)}")
            flat = np.frombuffer(item.raw, dtype=dtype)
        else:
            field = self._typed_field(item)
            values = getattr(t.contents, field)
            if len(values) != count:
                raise InvalidRequest(
                    f"unexpected number of elements in contents.{field} for input '{t.name}' "
                    f"for model '{self.model}'. Expected {count} (shape "
                    f"{_shape_text(shape)}), got {len(values)}")
            wide = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64)
            if dtype.kind in "iu" and len(wide):
                info = np.iinfo(dtype)
                bad = np.flatnonzero((wide < info.min) | (wide > info.max))
                if len(bad):
                    raise InvalidRequest(
                        f"contents.{field} of input '{t.name}' holds {wide[bad[0]]} at index "
                        f"{bad[0]}, out of range for {t.datatype}")
            flat = wide.astype(dtype)
        return np.array(flat.reshape(shape), dtype=dtype.newbyteorder("="))

    def strings(self, item: _Input, shape: Sequence[int]) -> list[bytes]:
        """A BYTES tensor's elements."""
        t = item.tensor
        count = self.element_count(t.name, shape)
        if item.raw is None:
            elements = list(getattr(t.contents, self._typed_field(item)))
        else:
            elements = self._split_raw_bytes(t.name, item.raw)
        if len(elements) != count:
            raise InvalidRequest(
                f"expected {count} string elements for inference input '{t.name}' for model "
                f"'{self.model}' (shape {_shape_text(shape)}), got {len(elements)}")
        return elements

    def _split_raw_bytes(self, name: str, raw: bytes) -> list[bytes]:
        """Raw BYTES: each element is a 4-byte little-endian length, then that many bytes."""
        out: list[bytes] = []
        offset = 0
        view = memoryview(raw)
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidRequest(
                    f"raw data of BYTES input '{name}' is malformed: element {len(out)} at byte "
                    f"{offset} needs a 4-byte length, only {len(raw) - offset} bytes remain")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise InvalidRequest(
                    f"raw data of BYTES input '{name}' is malformed: element {len(out)} "
                    f"declares {size} bytes, only {len(raw) - offset} remain")
            out.append(bytes(view[offset:offset + size]))
            offset += size
        return out

    def _typed_field(self, item: _Input) -> str:
        """The contents field of the tensor's datatype; refuses data in any other field."""
        t = item.tensor
        field = CONTENTS_FIELDS.get(t.datatype)
        if field is None:
            raise InvalidRequest(
                f"input '{t.name}' of datatype {t.datatype} has no typed contents field in the "
                "protocol; send it in raw_input_contents")
        for other in _ALL_CONTENTS_FIELDS:
            if other != field and len(getattr(t.contents, other)):
                raise InvalidRequest(
                    f"input '{t.name}' has datatype {t.datatype}, whose typed data belongs in "
                    f"contents.{field}, but contents.{other} is set")
        return field


@dataclass
class ParsedRequest:
    """A validated ModelInfer request, before the images are decoded."""

    images: np.ndarray | list[bytes]
    labels: npt.NDArray[np.int64] | None
    outputs: list[OutputSpec]
    raw: bool
    n: int


class InferenceProtocolServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves ``inference.GRPCInferenceService`` for the one model of an ImageScorer."""

    def __init__(
        self, config: ServerConfig, metrics: ServerMetrics, images: ImageScorer
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._calls = CallRecorder(metrics)
        self._images = images
        self._m = images.manifest
        self._version = importlib.metadata.version("hardscore")

    # -- health and metadata ----------------------------------------------------------------

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return await self._calls.unary("ServerLive", context,
                                lambda: _done(oip.ServerLiveResponse(live=True)))

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        # The port is bound only after the model is loaded and warmed up; ready turns false
        # when the server starts draining.
        ready = self._images.batcher.accepting
        return await self._calls.unary("ServerReady", context,
                                lambda: _done(oip.ServerReadyResponse(ready=ready)))

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = (request.name == self._m.name and request.version in ("", self._m.version)
                 and self._images.batcher.accepting)
        return await self._calls.unary("ModelReady", context,
                                lambda: _done(oip.ModelReadyResponse(ready=ready)))

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        response = oip.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=EXTENSIONS)
        return await self._calls.unary("ServerMetadata", context, lambda: _done(response))

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        async def work() -> oip.ModelMetadataResponse:
            self._check_model(request.name, request.version)
            m = self._m
            meta = oip.ModelMetadataResponse.TensorMetadata
            return oip.ModelMetadataResponse(
                name=m.name, versions=[m.version], platform=PLATFORM,
                inputs=[meta(name=m.input_name, datatype="FP32", shape=[-1, *self._chw])],
                outputs=[meta(name=o.name, datatype=o.datatype, shape=self._output_shape(o))
                         for o in OUTPUTS],
            )

        return await self._calls.unary("ModelMetadata", context, work)

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        async def work() -> oip.ModelConfigResponse:
            self._check_model(request.name, request.version)
            return oip.ModelConfigResponse(config=self._model_config())

        return await self._calls.unary("ModelConfig", context, work)

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        async def work() -> oip.ModelStatisticsResponse:
            if request.name or request.version:  # empty name: every model (the one)
                self._check_model(request.name, request.version)
            return oip.ModelStatisticsResponse(model_stats=[self._statistics()])

        return await self._calls.unary("ModelStatistics", context, work)

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        async def work() -> oip.ModelInferResponse:
            self._check_model(request.model_name, request.model_version)
            parsed = await asyncio.to_thread(self._parse, request)
            reservation = self._images.batcher.reserve(parsed.n)  # refuse before decoding
            try:
                inputs = await self._model_input(parsed)
                logits = await self._images.batcher.infer(
                    inputs, deadline_of(context), reservation)
            finally:
                reservation.release()
            return await asyncio.to_thread(self._respond, request, parsed, logits)

        return await self._calls.unary("ModelInfer", context, work)

    def _parse(self, request: oip.ModelInferRequest) -> ParsedRequest:
        """Checks the request's inputs and outputs and reads the tensors' data (worker thread)."""
        m = self._m
        raw = len(request.raw_input_contents) > 0
        if raw and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidRequest(
                f"expected {len(request.inputs)} raw input contents (one per input, in input "
                f"order) for model '{m.name}', got {len(request.raw_input_contents)}")
        by_name: dict[str, _Input] = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.name not in (m.input_name, LABEL_INPUT):
                raise InvalidRequest(
                    f"unexpected inference input '{tensor.name}' for model '{m.name}'; its "
                    f"inputs are '{m.input_name}' and the optional '{LABEL_INPUT}'")
            if tensor.name in by_name:
                raise InvalidRequest(
                    f"input '{tensor.name}' is given more than once for model '{m.name}'")
            for key in ("shared_memory_region", "shared_memory_byte_size"):
                if key in tensor.parameters:
                    raise InvalidRequest(
                        f"input '{tensor.name}' names a shared memory region: this server "
                        "does not support shared memory; send the data in the request")
            if raw and tensor.HasField("contents"):
                raise InvalidRequest(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{m.name}'")
            by_name[tensor.name] = _Input(tensor, request.raw_input_contents[i] if raw else None)
        if m.input_name not in by_name:
            got = [t.name for t in request.inputs]
            raise InvalidRequest(
                f"expected 1 or 2 inputs but got {len(got)} inputs for model '{m.name}'. Got "
                f"input(s) {got}, but missing required input(s) ['{m.input_name}']. Please "
                "provide all required input(s).")
        reader = TensorReader(m.name)
        images, n = self._read_images(reader, by_name[m.input_name])
        labels = self._read_labels(reader, by_name[LABEL_INPUT], n) if (
            LABEL_INPUT in by_name) else None
        outputs = self._requested_outputs(request, labels is not None)
        if labels is None and any(o.needs_label for o in outputs):
            labels = np.full(n, NO_LABEL, dtype=np.int64)  # asked for, no labels: all NaN
        return ParsedRequest(images=images, labels=labels, outputs=outputs, raw=raw, n=n)

    def _read_images(self, reader: TensorReader, item: _Input) -> tuple[Any, int]:
        t = item.tensor
        m = self._m
        shape = list(t.shape)
        if t.datatype not in IMAGE_DATATYPES:
            raise InvalidRequest(
                f"inference input '{t.name}' data-type is '{t.datatype}', but model '{m.name}' "
                f"expects 'FP32' (normalised), 'UINT8' (pixels) or 'BYTES' (encoded images)")
        if t.datatype == "BYTES":
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise InvalidRequest(
                    f"unexpected shape for input '{t.name}' for model '{m.name}'. Expected [-1] "
                    f"or [-1,1] (one encoded image per element), got {_shape_text(shape)}")
        elif len(shape) != 4 or shape[1:] != list(self._chw):
            raise InvalidRequest(
                f"unexpected shape for input '{t.name}' for model '{m.name}'. Expected "
                f"{_shape_text([-1, *self._chw])}, got {_shape_text(shape)}")
        n = shape[0]
        limit = min(self._config.max_rows_per_request, self._config.max_queue_size)
        if n < 1:
            raise InvalidRequest(
                f"input '{t.name}' for model '{m.name}' holds {n} images; send at least one")
        if n > limit:
            raise InvalidRequest(
                f"input '{t.name}' holds {n} images, more than this server takes in one "
                f"request ({limit}); send smaller requests")
        if t.datatype == "BYTES":
            return reader.strings(item, shape), n
        return reader.numeric(item, shape), n

    def _read_labels(
        self, reader: TensorReader, item: _Input, n: int
    ) -> npt.NDArray[np.int64]:
        t = item.tensor
        m = self._m
        shape = list(t.shape)
        if t.datatype not in LABEL_DATATYPES:
            raise InvalidRequest(
                f"inference input '{t.name}' data-type is '{t.datatype}', but model '{m.name}' "
                "expects 'INT32' or 'INT64'")
        if shape not in ([n], [n, 1]):
            raise InvalidRequest(
                f"unexpected shape for input '{t.name}' for model '{m.name}'. Expected [{n}] "
                f"(one label per image, -1 = none), got {_shape_text(shape)}")
        labels = reader.numeric(item, shape).reshape(n).astype(np.int64)
        bad = np.flatnonzero((labels < NO_LABEL) | (labels >= m.num_classes))
        if len(bad):
            raise InvalidRequest(
                f"input '{t.name}' element {bad[0]} is {labels[bad[0]]}: labels are class "
                f"indices 0..{m.num_classes - 1}, or -1 for none")
        return labels

    def _requested_outputs(
        self, request: oip.ModelInferRequest, has_labels: bool
    ) -> list[OutputSpec]:
        if not request.outputs:
            return [o for o in OUTPUTS if has_labels or not o.needs_label]
        chosen: dict[str, OutputSpec] = {}
        for wanted in request.outputs:
            spec = OUTPUTS_BY_NAME.get(wanted.name)
            if spec is None:
                raise InvalidRequest(
                    f"unexpected inference output '{wanted.name}' for model '{self._m.name}'; "
                    f"its outputs are {', '.join(OUTPUTS_BY_NAME)}")
            for key in ("classification", "shared_memory_region"):
                if key in wanted.parameters:
                    raise InvalidRequest(
                        f"output '{wanted.name}' asks for '{key}', which this server does not "
                        "support (ask for 'predicted_class' and 'probabilities' instead of "
                        "classification; shared memory is not supported)")
            chosen.setdefault(spec.name, spec)
        return list(chosen.values())

    async def _model_input(self, parsed: ParsedRequest) -> Float32Array:
        """The batch's model input float32 [N, C, H, W]."""
        images = parsed.images
        if isinstance(images, list):
            return await self._decode_all(images)
        if images.dtype == np.uint8:
            return await asyncio.to_thread(self._normalise, images)
        return np.ascontiguousarray(images, dtype=np.float32)

    def _normalise(self, pixels: npt.NDArray[np.uint8]) -> Float32Array:
        """UINT8 [N, C, H, W] pixels -> (pixel / 255 - mean) / std, in float32 as preprocess."""
        x = pixels.astype(np.float32)
        x /= np.float32(255)
        x -= np.asarray(self._m.mean, dtype=np.float32)[:, np.newaxis, np.newaxis]
        x /= np.asarray(self._m.std, dtype=np.float32)[:, np.newaxis, np.newaxis]
        return x

    async def _decode_all(self, encoded: list[bytes]) -> Float32Array:
        """Decodes in up to ``preprocess_threads`` slices in parallel, keeping order."""
        slices = min(self._config.preprocess_threads, len(encoded))
        bounds = np.linspace(0, len(encoded), slices + 1).astype(int)
        parts = await asyncio.gather(*[
            asyncio.to_thread(self._decode, encoded, int(a), int(b))
            for a, b in itertools.pairwise(bounds)
        ])
        return np.concatenate(parts)

    def _decode(self, encoded: list[bytes], start: int, stop: int) -> Float32Array:
        spec = self._images.spec
        out = np.empty((stop - start, *self._chw), dtype=np.float32)
        observe = self._metrics.preprocess_time.labels(self._m.name).observe
        for i in range(start, stop):
            started = time.perf_counter()
            try:
                out[i - start] = decode_image(encoded[i], spec)
            except SampleError as exc:
                self._metrics.sample_errors.labels(exc.reason).inc()
                raise InvalidRequest(
                    f"input '{self._m.input_name}' element {i} cannot be used: {exc}") from None
            observe(time.perf_counter() - started)
        return out

    def _respond(
        self, request: oip.ModelInferRequest, parsed: ParsedRequest, logits: np.ndarray
    ) -> oip.ModelInferResponse:
        """Scores the logits and packs the requested outputs (worker thread)."""
        m = self._m
        with np.errstate(all="ignore"):  # NaN / infinite logits give NaN scores, quietly
            batch = score_logits(logits, parsed.labels, m.temperature)
        predicted = np.where(np.isfinite(batch.confidence), batch.predicted_class, -1)
        self._metrics.samples.labels("images").inc(parsed.n)
        self._metrics.observe_scores(m.name, batch.hardness, batch.mistakenness)
        response = oip.ModelInferResponse(model_name=m.name, model_version=m.version,
                                          id=request.id)
        for spec in parsed.outputs:
            values = _output_values(spec.name, logits, predicted, batch)
            array = np.ascontiguousarray(values, dtype=NUMPY_DTYPES[spec.datatype])
            tensor = response.outputs.add(name=spec.name, datatype=spec.datatype,
                                          shape=array.shape)
            if parsed.raw:
                response.raw_output_contents.append(array.tobytes())
            else:
                getattr(tensor.contents, CONTENTS_FIELDS[spec.datatype]).extend(
                    array.ravel().tolist())
        return response

    # -- model description --------------------------------------------------------------------

    @property
    def _chw(self) -> tuple[int, int, int]:
        m = self._m
        return (m.input_channels, m.input_height, m.input_width)

    def _output_shape(self, spec: OutputSpec) -> list[int]:
        return [-1, self._m.num_classes] if spec.per_class else [-1]

    def _check_model(self, name: str, version: str) -> None:
        m = self._m
        if name != m.name:
            raise UnknownModel(
                f"Request for unknown model: '{name}' is not found; this server serves "
                f"'{m.name}'")
        if version not in ("", m.version):
            raise UnknownModel(
                f"Request for unknown model: '{name}' version {version} is not found; this "
                f"server serves version {m.version}")

    def _model_config(self) -> oip.ModelConfig:
        m = self._m
        b = self._images.batcher
        provider = self._images.runner.provider
        reshape_scalar = oip.ModelTensorReshape(shape=[])
        outputs = []
        for o in OUTPUTS:
            out = oip.ModelOutput(name=o.name, data_type=_CONFIG_TYPES[o.datatype],
                                  dims=[m.num_classes] if o.per_class else [1])
            if not o.per_class:  # a batched scalar: [N] on the wire, as Triton writes it
                out.reshape.CopyFrom(reshape_scalar)
            outputs.append(out)
        parameters = {
            "class_names": json.dumps(list(m.class_names)),
            "input_datatypes": json.dumps({
                "FP32": f"[N,{m.input_channels},{m.input_height},{m.input_width}] normalised",
                "UINT8": f"[N,{m.input_channels},{m.input_height},{m.input_width}] pixels",
                "BYTES": "[N] encoded images",
            }),
            "optional_inputs": json.dumps({LABEL_INPUT: "INT32 or INT64 [N], -1 = no label"}),
            "temperature": repr(m.temperature),
            "execution_provider": provider,
        }
        return oip.ModelConfig(
            name=m.name, platform=PLATFORM, backend=BACKEND, max_batch_size=b.max_batch_size,
            input=[oip.ModelInput(name=m.input_name, data_type=oip.TYPE_FP32,
                                  format=oip.ModelInput.FORMAT_NCHW, dims=list(self._chw))],
            output=outputs,
            instance_group=[oip.ModelInstanceGroup(
                name=m.name, count=b.instances,
                kind=(oip.ModelInstanceGroup.KIND_GPU if provider.startswith("CUDA")
                      else oip.ModelInstanceGroup.KIND_CPU))],
            dynamic_batching=oip.ModelDynamicBatching(
                preferred_batch_size=list(b.preferred_batch_sizes),
                max_queue_delay_microseconds=round(b.max_queue_delay_s * 1e6),
                preserve_ordering=True,
            ),
            parameters={k: oip.ModelParameter(string_value=v) for k, v in parameters.items()},
        )

    def _statistics(self) -> oip.ModelStatistics:
        stats = self._images.batcher.stats_snapshot()
        # list() copies under the GIL: the worker thread may add a batch size meanwhile.
        by_size = sorted(list(stats.by_batch_size.items()))
        samples = stats.samples
        compute_ns = sum(size * s.compute_ns for size, s in by_size)  # per sample, summed
        duration = oip.StatisticDuration
        return oip.ModelStatistics(
            name=self._m.name, version=self._m.version,
            last_inference=stats.last_batch_unix_ms,
            inference_count=samples, execution_count=stats.batches,
            inference_stats=oip.InferStatistics(
                success=duration(count=samples, ns=stats.queue_ns + compute_ns),
                fail=duration(),
                queue=duration(count=samples, ns=stats.queue_ns),
                # Clients (perf_analyzer) require the three compute counts to be equal; input
                # and output copies are not timed apart from the model run: 0 ns.
                compute_input=duration(count=samples),
                compute_infer=duration(count=samples, ns=compute_ns),
                compute_output=duration(count=samples),
            ),
            batch_stats=[
                oip.InferBatchStatistics(
                    batch_size=size, compute_input=duration(count=s.count),
                    compute_infer=duration(count=s.count, ns=s.compute_ns),
                    compute_output=duration(count=s.count))
                for size, s in by_size
            ],
        )


async def _done(value: T) -> T:
    return value


def _output_values(
    name: str, logits: np.ndarray, predicted: npt.NDArray[np.int64], batch: ScoreBatch
) -> np.ndarray:
    if name == "logits":
        return logits
    if name == "predicted_class":
        return predicted
    values = getattr(batch, name)
    assert values is not None, f"{name} needs labels"  # _parse fills labels in for them
    return np.asarray(values)
