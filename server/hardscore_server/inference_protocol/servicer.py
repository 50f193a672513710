"""The Open Inference Protocol servicer (``inference.GRPCInferenceService``): translates the
protocol's messages to and from the image pipeline; see the package docstring for the inputs,
outputs and errors."""

from __future__ import annotations

import asyncio
import importlib.metadata
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from hardscore_server.errors import InvalidRequest, UnknownModel, check_reply_fits
from hardscore_server.image_pipeline import ImageBatch, ImagePipeline, ImageScores, SampleFailed
from hardscore_server.inference_protocol import grpc_service_pb2 as oip
from hardscore_server.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.inference_protocol.model_config import (
    EXTENSIONS,
    IMAGE_DATATYPES,
    LABEL_DATATYPES,
    LABEL_INPUT,
    OUTPUTS,
    OUTPUTS_BY_NAME,
    SERVER_NAME,
    OutputSpec,
    input_dims,
    model_config,
    model_metadata,
    model_statistics,
)
from hardscore_server.inference_protocol.tensors import (
    InputTensor,
    TensorReader,
    shape_text,
    write_output,
)
from hardscore_server.metrics import ServerMetrics
from hardscore_server.scores import NO_LABEL
from hardscore_server.servicer import CallRecorder, deadline_of

T = TypeVar("T")

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass
class ParsedRequest:
    """A validated ModelInfer request, before the images are decoded."""

    images: np.ndarray | list[bytes]
    labels: npt.NDArray[np.int64] | None
    outputs: list[OutputSpec]
    raw: bool
    n: int


class InferenceProtocolServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves ``inference.GRPCInferenceService`` for the one model of an ImagePipeline."""

    def __init__(
        self, metrics: ServerMetrics, pipeline: ImagePipeline,
        max_reply_bytes: int | None = None,
    ) -> None:
        """``max_reply_bytes``: the gRPC send limit; a ModelInfer whose reply would exceed it
        is refused (INVALID_ARGUMENT) instead of failing in gRPC once computed."""
        self._max_reply_bytes = max_reply_bytes
        self._calls = CallRecorder(metrics)
        self._pipeline = pipeline
        self._m = pipeline.manifest
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
        ready = self._pipeline.batcher.accepting
        return await self._calls.unary("ServerReady", context,
                                lambda: _done(oip.ServerReadyResponse(ready=ready)))

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = (request.name == self._m.name and request.version in ("", self._m.version)
                 and self._pipeline.batcher.accepting)
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
            return model_metadata(self._pipeline)

        return await self._calls.unary("ModelMetadata", context, work)

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        async def work() -> oip.ModelConfigResponse:
            self._check_model(request.name, request.version)
            return oip.ModelConfigResponse(config=model_config(self._pipeline))

        return await self._calls.unary("ModelConfig", context, work)

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        async def work() -> oip.ModelStatisticsResponse:
            if request.name or request.version:  # empty name: every model (the one)
                self._check_model(request.name, request.version)
            return oip.ModelStatisticsResponse(model_stats=[model_statistics(self._pipeline)])

        return await self._calls.unary("ModelStatistics", context, work)

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        async def work() -> oip.ModelInferResponse:
            self._check_model(request.model_name, request.model_version)
            parsed = await asyncio.to_thread(self._parse, request)
            self._check_reply(self._reply_floor(parsed), parsed.n)  # before decoding
            batch = ImageBatch(images=parsed.images, labels=parsed.labels,
                               on_sample_error="raise")
            try:
                result = await self._pipeline.score(batch, deadline_of(context))
            except SampleFailed as exc:
                raise InvalidRequest(
                    f"input '{self._m.input_name}' element {exc.index} cannot be used: "
                    f"{exc.error}") from None
            response = await asyncio.to_thread(self._respond, request, parsed, result)
            self._check_reply(response.ByteSize(), parsed.n)
            return response

        return await self._calls.unary("ModelInfer", context, work)

    def _reply_floor(self, parsed: ParsedRequest) -> int:
        """Bytes of the requested outputs' values alone: no reply to ``parsed`` is smaller
        (typed INT64 contents take at least 1 byte a value, raw ones 8)."""
        itemsize = {"FP32": 4, "FP64": 8, "INT64": 8 if parsed.raw else 1}
        return sum(parsed.n * (self._m.num_classes if o.per_class else 1) * itemsize[o.datatype]
                   for o in parsed.outputs)

    def _check_reply(self, size: int, n: int) -> None:
        if self._max_reply_bytes is not None:
            check_reply_fits(size, self._max_reply_bytes, n, None, "images", "requests")

    def _parse(self, request: oip.ModelInferRequest) -> ParsedRequest:
        """Checks the request's inputs and outputs and reads the tensors' data (worker thread)."""
        m = self._m
        raw = len(request.raw_input_contents) > 0
        if raw and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidRequest(
                f"expected {len(request.inputs)} raw input contents (one per input, in input "
                f"order) for model '{m.name}', got {len(request.raw_input_contents)}")
        by_name: dict[str, InputTensor] = {}
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
            raw_data = request.raw_input_contents[i] if raw else None
            by_name[tensor.name] = InputTensor(tensor, raw_data)
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

    def _read_images(
        self, reader: TensorReader, item: InputTensor
    ) -> tuple[np.ndarray | list[bytes], int]:
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
                    f"or [-1,1] (one encoded image per element), got {shape_text(shape)}")
        elif len(shape) != 4 or shape[1:] != input_dims(self._pipeline):
            raise InvalidRequest(
                f"unexpected shape for input '{t.name}' for model '{m.name}'. Expected "
                f"{shape_text([-1, *input_dims(self._pipeline)])}, got {shape_text(shape)}")
        n = shape[0]
        limit = self._pipeline.max_samples
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
        self, reader: TensorReader, item: InputTensor, n: int
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
                f"(one label per image, -1 = none), got {shape_text(shape)}")
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

    def _respond(
        self, request: oip.ModelInferRequest, parsed: ParsedRequest, result: ImageScores
    ) -> oip.ModelInferResponse:
        """Packs the requested outputs (worker thread)."""
        m = self._m
        response = oip.ModelInferResponse(model_name=m.name, model_version=m.version,
                                          id=request.id)
        scores = result.scores
        for spec in parsed.outputs:
            values = result.logits if spec.name == "logits" else getattr(scores, spec.name)
            assert values is not None, f"{spec.name} needs labels"  # _parse fills labels in
            write_output(response, spec.name, spec.datatype, values, parsed.raw)
        return response

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


async def _done(value: T) -> T:
    return value
