"""The Open Inference Protocol servicer (``inference.GRPCInferenceService``): translates the
protocol's messages to and from ``core.InferenceCore``; see the package docstring for the
inputs, outputs and errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.byte_budget import ByteBudget
from hardscore_server.pipeline.errors import InvalidRequest, check_reply_fits
from hardscore_server.transport.call_gate import UnparseableMessage, release_when_done
from hardscore_server.transport.calls import CallRecorder, deadline_of
from hardscore_server.transport.inference_protocol import grpc_service_pb2 as oip
from hardscore_server.transport.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_server.transport.inference_protocol.core import (
    SHM_BYTE_SIZE,
    SHM_REGION,
    InferenceCore,
    InferRequest,
    InferResult,
    RequestedOutput,
)
from hardscore_server.transport.inference_protocol.tensors import InputTensor
from hardscore_server.transport.statuses import answer_to

log = logging.getLogger(__name__)
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

STREAM_WINDOW = 64
"""Most requests of one ModelStreamInfer stream in progress at once."""
STREAM_WINDOW_BYTES = 64 * 1024 * 1024
"""Most request bytes (serialized) of one ModelStreamInfer stream in progress at once; one
request is always admitted, however large. The stream's next request is read only when the
window has room for it (gRPC's flow control then holds the client back), so a stream holds
about one message over this at most, not STREAM_WINDOW whole messages."""


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
    """The neutral request of a ModelInferRequest, and whether to answer raw (unless the data
    came in typed contents; inputs all in shared memory are answered raw)."""
    raw = len(request.raw_input_contents) > 0
    in_request = [t for t in request.inputs if SHM_REGION not in t.parameters]
    if raw and len(request.raw_input_contents) != len(in_request):
        raise InvalidRequest(
            f"expected {len(in_request)} raw input contents (one per input not in shared "
            f"memory, in input order) for model '{request.model_name}', got "
            f"{len(request.raw_input_contents)}")
    inputs = []
    raw_contents = iter(request.raw_input_contents)
    for tensor in request.inputs:
        if raw and tensor.HasField("contents"):
            raise InvalidRequest(
                f"contents field must not be specified when using raw_input_contents for "
                f"'{tensor.name}' for model '{request.model_name}'")
        item = InputTensor(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape),
                           parameters=_parameters(tensor.parameters))
        if SHM_REGION in item.parameters:
            if tensor.HasField("contents"):
                item.values = []  # refused by the core: data and a region
        elif raw:
            item.raw = next(raw_contents)
        elif tensor.datatype in CONTENTS_FIELDS:  # others: the core refuses the datatype
            field, item.values = _typed_values(tensor)
            item.source = f"contents.{field}"
        inputs.append(item)
    outputs = [RequestedOutput(o.name, _parameters(o.parameters)) for o in request.outputs]
    typed = any(t.HasField("contents") for t in request.inputs)
    return InferRequest(model_name=request.model_name, model_version=request.model_version,
                        id=request.id, inputs=inputs, outputs=outputs), not typed


def infer_response(result: InferResult, raw: bool) -> oip.ModelInferResponse:
    """The ModelInferResponse of a result: raw outputs when the request was raw, else typed."""
    response = oip.ModelInferResponse(model_name=result.model_name,
                                      model_version=result.model_version, id=result.id)
    for out in result.outputs:
        datatype = out.spec.datatype
        tensor = response.outputs.add(name=out.spec.name, datatype=datatype,
                                      shape=out.array.shape)
        if out.in_shared_memory:  # written there: the reply says where, with no data
            tensor.parameters[SHM_REGION].string_param = out.parameters[SHM_REGION]
            tensor.parameters[SHM_BYTE_SIZE].int64_param = out.array.nbytes
            if raw:
                response.raw_output_contents.append(b"")
        elif raw:
            response.raw_output_contents.append(out.array.tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELDS[datatype]).extend(
                out.array.ravel().tolist())
    return response


class InferenceProtocolServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Serves ``inference.GRPCInferenceService`` for the models of an InferenceCore."""

    def __init__(
        self, metrics: ServerMetrics, core: InferenceCore, max_reply_bytes: int | None = None,
    ) -> None:
        """``max_reply_bytes``: the gRPC send limit; a ModelInfer whose reply would exceed it
        is refused (INVALID_ARGUMENT; the core refuses before decoding when the outputs'
        values alone cannot fit) instead of failing in gRPC once computed."""
        self._calls = CallRecorder(metrics)
        self._core = core
        self._max_reply_bytes = max_reply_bytes

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

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[oip.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        """Answers each request in order, up to STREAM_WINDOW requests and STREAM_WINDOW_BYTES
        of them scored concurrently; a failed request is answered in-band (``error_message``)
        and the stream goes on."""
        deadline = deadline_of(context)
        window = asyncio.Semaphore(STREAM_WINDOW)
        in_progress = ByteBudget(STREAM_WINDOW_BYTES)
        pending: asyncio.Queue[
            tuple[asyncio.Future[oip.ModelStreamInferResponse], int] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    # one request always fits, however large: what it takes is capped
                    size = min(request.ByteSize(), STREAM_WINDOW_BYTES)
                    await window.acquire()
                    await in_progress.take(size, None)
                    answer = asyncio.ensure_future(self._stream_one(request, deadline))
                    # its request budget comes back once it is answered (call_gate)
                    answer.add_done_callback(release_when_done(request_iterator, request))
                    pending.put_nowait((answer, size))
                    del request  # held by its task only: freed once answered
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                answer, size = item
                response = await answer
                window.release()
                in_progress.release(size)
                yield response
            await reader  # a request the stream could not read ends the call with its status
        except UnparseableMessage:
            raise  # the call gate answers it (INVALID_ARGUMENT, one quiet line)
        except Exception as exc:
            failed = answer_to(exc)
            if not failed.expected:
                log.exception("ModelStreamInfer failed unexpectedly", exc_info=exc)
            await context.abort(failed.grpc_code, failed.detail)
        finally:
            reader.cancel()
            while not pending.empty():
                if (left := pending.get_nowait()) is not None:
                    left[0].cancel()

    async def _stream_one(
        self, request: oip.ModelInferRequest, deadline: float | None
    ) -> oip.ModelStreamInferResponse:
        started = time.perf_counter()
        try:
            response = await self.infer(request, deadline)
        except Exception as exc:  # in-band, as Triton answers: the stream goes on
            failed = answer_to(exc)
            if not failed.expected:
                log.exception("ModelStreamInfer request failed unexpectedly", exc_info=exc)
            self._calls.record("ModelStreamInfer", failed.grpc_code, started)
            return oip.ModelStreamInferResponse(
                error_message=failed.detail,
                infer_response=oip.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version,
                    id=request.id))
        self._calls.record("ModelStreamInfer", grpc.StatusCode.OK, started)
        return oip.ModelStreamInferResponse(infer_response=response)

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        async def work() -> oip.RepositoryIndexResponse:
            models = await self._core.repository_index(request.repository_name, request.ready)
            return to_message({"models": models}, oip.RepositoryIndexResponse())

        return await self._calls.unary("RepositoryIndex", context, work)

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        async def work() -> oip.RepositoryModelLoadResponse:
            await self._core.load(request.repository_name, request.model_name,
                                  list(context.invocation_metadata() or ()),
                                  _parameters(request.parameters))
            return oip.RepositoryModelLoadResponse()

        return await self._calls.unary("RepositoryModelLoad", context, work)

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        async def work() -> oip.RepositoryModelUnloadResponse:
            await self._core.unload(request.repository_name, request.model_name,
                                    list(context.invocation_metadata() or ()))
            return oip.RepositoryModelUnloadResponse()

        return await self._calls.unary("RepositoryModelUnload", context, work)

    # -- system shared memory -----------------------------------------------------------------

    async def SystemSharedMemoryStatus(
        self, request: oip.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryStatusResponse:
        async def work() -> oip.SystemSharedMemoryStatusResponse:
            regions = self._core.shared_memory.status(request.name)
            return to_message({"regions": {r["name"]: r for r in regions}},
                              oip.SystemSharedMemoryStatusResponse())

        return await self._calls.unary("SystemSharedMemoryStatus", context, work)

    async def SystemSharedMemoryRegister(
        self, request: oip.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryRegisterResponse:
        async def work() -> oip.SystemSharedMemoryRegisterResponse:
            await asyncio.to_thread(self._core.shared_memory.register, request.name,
                                    request.key, request.offset, request.byte_size)
            return oip.SystemSharedMemoryRegisterResponse()

        return await self._calls.unary("SystemSharedMemoryRegister", context, work)

    async def SystemSharedMemoryUnregister(
        self, request: oip.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryUnregisterResponse:
        async def work() -> oip.SystemSharedMemoryUnregisterResponse:
            self._core.shared_memory.unregister(request.name)
            return oip.SystemSharedMemoryUnregisterResponse()

        return await self._calls.unary("SystemSharedMemoryUnregister", context, work)

    # -- one inference ------------------------------------------------------------------------

    async def infer(
        self, request: oip.ModelInferRequest, deadline: float | None
    ) -> oip.ModelInferResponse:
        """One ModelInfer request through the core (also one message of ModelStreamInfer)."""
        raw = True

        async def parse() -> InferRequest:
            nonlocal raw
            neutral, raw = infer_request(request)
            return neutral

        def encode(result: InferResult) -> oip.ModelInferResponse:
            response = infer_response(result, raw)
            if self._max_reply_bytes is not None:
                check_reply_fits(response.ByteSize(), self._max_reply_bytes, result.samples,
                                 None, "images", "requests")
            return response

        return await self._core.infer(request.model_name, parse, encode, deadline,
                                      self._max_reply_bytes)


async def _done(value: T) -> T:
    return value
