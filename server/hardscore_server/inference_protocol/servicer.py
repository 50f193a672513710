"""The Open Inference Protocol servicer (``inference.GRPCInferenceService``): translates the
protocol's messages to and from ``core.InferenceCore``; see the package docstring for the
inputs, outputs and errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from hardscore_server.errors import InvalidRequest
from hardscore_server.inference_protocol import grpc_service_pb2 as oip
from hardscore_server.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.inference_protocol.core import (
    InferenceCore,
    InferRequest,
    InferResult,
    RequestedOutput,
)
from hardscore_server.inference_protocol.tensors import InputTensor
from hardscore_server.metrics import ServerMetrics
from hardscore_server.servicer import CallRecorder, deadline_of

T = TypeVar("T")
M = TypeVar("M", bound=Message)

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

#: The ``InferTensorContents`` field holding each datatype's typed values.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(dict.fromkeys(CONTENTS_FIELDS.values()))


def to_message(values: dict[str, Any], message: M) -> M:
    """Fills ``message`` from the core's JSON-like dict (Triton's REST form of the message)."""
    return json_format.ParseDict(values, message)


def _parameters(params: Any) -> dict[str, Any]:
    """InferParameter map -> plain values."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


def _typed_values(tensor: oip.ModelInferRequest.InferInputTensor) -> tuple[str, Any]:
    """The contents field of the tensor's datatype and its values; refuses any other field."""
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise InvalidRequest(
            f"input '{tensor.name}' of datatype {tensor.datatype} has no typed contents field "
            "in the protocol; send it in raw_input_contents")
    for other in _ALL_CONTENTS_FIELDS:
        if other != field and len(getattr(tensor.contents, other)):
            raise InvalidRequest(
                f"input '{tensor.name}' has datatype {tensor.datatype}, whose typed data "
                f"belongs in contents.{field}, but contents.{other} is set")
    return field, getattr(tensor.contents, field)


def infer_request(request: oip.ModelInferRequest) -> tuple[InferRequest, bool]:
    """The neutral request of a ModelInferRequest, and whether its data was raw."""
    raw = len(request.raw_input_contents) > 0
    if raw and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidRequest(
            f"expected {len(request.inputs)} raw input contents (one per input, in input "
            f"order) for model '{request.model_name}', got {len(request.raw_input_contents)}")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise InvalidRequest(
                f"contents field must not be specified when using raw_input_contents for "
                f"'{tensor.name}' for model '{request.model_name}'")
        item = InputTensor(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape),
                           parameters=_parameters(tensor.parameters))
        if raw:
            item.raw = request.raw_input_contents[i]
        elif tensor.datatype in CONTENTS_FIELDS:  # others: the core refuses the datatype
            field, item.values = _typed_values(tensor)
            item.source = f"contents.{field}"
        inputs.append(item)
    outputs = [RequestedOutput(o.name, _parameters(o.parameters)) for o in request.outputs]
    return InferRequest(model_name=request.model_name, model_version=request.model_version,
                        id=request.id, inputs=inputs, outputs=outputs), raw


def infer_response(result: InferResult, raw: bool) -> oip.ModelInferResponse:
    """The ModelInferResponse of a result: raw outputs when the request was raw, else typed."""
    response = oip.ModelInferResponse(model_name=result.model_name,
                                      model_version=result.model_version, id=result.id)
    for out in result.outputs:
        datatype = out.spec.datatype
        tensor = response.outputs.add(name=out.spec.name, datatype=datatype,
                                      shape=out.array.shape)
        if raw:
            response.raw_output_contents.append(out.array.tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(
                out.array.ravel().tolist())
    return response


class InferenceProtocolServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves ``inference.GRPCInferenceService`` for the one model of an InferenceCore."""

    def __init__(self, metrics: ServerMetrics, core: InferenceCore) -> None:
        self._calls = CallRecorder(metrics)
        self._core = core

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
        ready = self._core.ready
        return await self._calls.unary("ServerReady", context,
                                       lambda: _done(oip.ServerReadyResponse(ready=ready)))

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = self._core.model_ready(request.name, request.version)
        return await self._calls.unary("ModelReady", context,
                                       lambda: _done(oip.ModelReadyResponse(ready=ready)))

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        response = to_message(self._core.server_metadata(), oip.ServerMetadataResponse())
        return await self._calls.unary("ServerMetadata", context, lambda: _done(response))

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        async def work() -> oip.ModelMetadataResponse:
            return to_message(self._core.model_metadata(request.name, request.version),
                              oip.ModelMetadataResponse())

        return await self._calls.unary("ModelMetadata", context, work)

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        async def work() -> oip.ModelConfigResponse:
            config = self._core.model_config(request.name, request.version)
            return to_message({"config": config}, oip.ModelConfigResponse())

        return await self._calls.unary("ModelConfig", context, work)

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        async def work() -> oip.ModelStatisticsResponse:
            stats = self._core.model_statistics(request.name, request.version)
            return to_message(stats, oip.ModelStatisticsResponse())

        return await self._calls.unary("ModelStatistics", context, work)

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        async def work() -> oip.ModelInferResponse:
            return await self.infer(request, deadline_of(context))

        return await self._calls.unary("ModelInfer", context, work)

    async def infer(
        self, request: oip.ModelInferRequest, deadline: float | None
    ) -> oip.ModelInferResponse:
        """One ModelInfer request through the core (also one message of ModelStreamInfer)."""
        try:
            neutral, raw = infer_request(request)
        except InvalidRequest:
            self._core.record_failure()
            raise
        result = await self._core.infer(neutral, deadline)
        started = time.perf_counter_ns()
        response = await asyncio.to_thread(infer_response, result, raw)
        self._core.record_output_time(time.perf_counter_ns() - started)
        return response


async def _done(value: T) -> T:
    return value
