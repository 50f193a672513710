"""The Open Inference Protocol over HTTP/REST (KServe V2, as Triton serves it), on its own port.

Translates HTTP requests to and from ``core.InferenceCore``, the same core the gRPC servicer
uses: same checks, same admission, same batcher, same statistics. Served with aiohttp on the
event loop the batcher runs on. JSON tensors and Triton's binary tensor data extension
(``Inference-Header-Content-Length``) are both accepted; outputs are binary when asked for
(``"binary_data": true`` on an output, or ``"binary_data_output": true`` on the request).

Errors are Triton's: ``{"error": "<message>"}`` with 400 for a bad request, 404 for an unknown
model or path, 401 without an accepted bearer token (when tokens are configured), 413 for a body
over ``max_message_bytes``, 503 when the queue is full, the decode budget stays busy or the
server is draining, 504 when a request's ``timeout`` parameter (microseconds) passes in the
queue (request errors take their status from ``transport.statuses``), 500 for anything unexpected
(logged). The bearer tokens and TLS files are the gRPC port's; ``/v2/health/live`` and
``/v2/health/ready`` answer without a token, as ``grpc.health.v1`` does on the gRPC port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import InvalidRequest
from hardscore_server.transport.inference_protocol.core import (
    InferenceCore,
    InferRequest,
    InferResult,
    RequestedOutput,
)
from hardscore_server.transport.inference_protocol.tensors import InputTensor
from hardscore_server.transport.security import CHALLENGE, TokenStore, check_authorization
from hardscore_server.transport.statuses import answer_to, http_code_name

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary tensor data extension's header: the JSON part's length in bytes."""

UNAUTHENTICATED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Paths answered without a bearer token (load balancers and Kubernetes probes)."""

JsonObject = dict[str, Any]

#: The protocol's name of each handler, for the ``method`` label of the request metrics.
_METHODS = {"_live": "ServerLive", "_ready": "ServerReady", "_server_metadata": "ServerMetadata",
            "_model_metadata": "ModelMetadata", "_model_ready": "ModelReady",
            "_model_config": "ModelConfig", "_statistics": "ModelStatistics",
            "_infer": "ModelInfer", "_repository_index": "RepositoryIndex",
            "_shm_status": "SystemSharedMemoryStatus",
            "_shm_register": "SystemSharedMemoryRegister",
            "_shm_unregister": "SystemSharedMemoryUnregister"}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None
                   ) -> web.Response:
    """Triton's error reply: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status, headers=headers)


def http_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of the REST port from the gRPC port's PEM files; None without TLS.
    (The files were checked at start-up by security.server_credentials.)"""
    if not config.tls_cert_file:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_client_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.tls_client_ca_file)
    return context


# -- the request body --------------------------------------------------------------------------


def _object(value: Any, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(value: Any, what: str) -> JsonObject:
    return {} if value is None else _object(value, f"'parameters' of {what}")


def _string(obj: JsonObject, key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} needs '{key}' as a string"
                             + ("" if value is None else f", got {type(value).__name__}"))
    return value


def parse_infer_body(
    body: bytes, header_length: str | None, model: str, version: str
) -> tuple[InferRequest, bool]:
    """The neutral request of an infer body (JSON, or JSON + binary tensor data), and whether
    outputs default to binary (``binary_data_output``)."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidRequest(
                f"{HEADER_LENGTH} must be an integer, got '{header_length[:40]}'") from None
        if not 0 <= length <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} is {length}, but the body holds {len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    try:
        request = _object(json.loads(header), "the request")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"failed to parse the request JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("failed to parse the request JSON: nested too deeply") from None
    params = _parameters(request.get("parameters"), "the request")
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list):
        raise InvalidRequest("the request needs 'inputs' as a JSON array")
    inputs: list[InputTensor] = []
    offset = 0
    for i, item in enumerate(inputs_json):
        tensor = _object(item, f"input {i}")
        name = _string(tensor, "name", f"input {i}")
        what = f"input '{name}'"
        datatype = _string(tensor, "datatype", what)
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidRequest(f"{what} needs 'shape' as an array of integers")
        tparams = _parameters(tensor.get("parameters"), what)
        parsed = InputTensor(name=name, datatype=datatype, shape=shape, parameters=tparams)
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(f"{what}: 'binary_data_size' must be an integer >= 0")
            if "data" in tensor:
                raise InvalidRequest(f"{what} has both 'data' and 'binary_data_size'")
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"{what} declares {size} bytes of binary data at offset {offset}, but only "
                    f"{len(binary) - offset} remain after the JSON header")
            parsed.raw = binary[offset:offset + size]
            offset += size
        elif "data" in tensor:
            parsed.values = tensor["data"]
            if not isinstance(parsed.values, list):
                raise InvalidRequest(f"{what}: 'data' must be a JSON array")
        elif not any(k.startswith("shared_memory_") for k in tparams):
            raise InvalidRequest(f"{what} has no data: give 'data' or 'binary_data_size'")
        inputs.append(parsed)
    if offset != len(binary):
        raise InvalidRequest(
            f"the body holds {len(binary) - offset} bytes of binary data after the last input's "
            f"({len(binary)} after the JSON header, {offset} claimed by binary_data_size)")
    outputs = []
    outputs_json = request.get("outputs", [])
    if not isinstance(outputs_json, list):
        raise InvalidRequest("'outputs' must be a JSON array")
    for i, item in enumerate(outputs_json):
        output = _object(item, f"output {i}")
        name = _string(output, "name", f"output {i}")
        outputs.append(RequestedOutput(name, _parameters(output.get("parameters"),
                                                         f"output '{name}'")))
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidRequest("'binary_data_output' must be true or false")
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                or timeout < 0):
        raise InvalidRequest("'timeout' must be an integer >= 0 (microseconds)")
    neutral = InferRequest(model_name=model, model_version=version, id=request_id,
                           inputs=inputs, outputs=outputs, timeout_us=timeout)
    return neutral, binary_default


def json_values(array: np.ndarray) -> list[Any]:
    """The array's values as a flat JSON list; NaN and infinity become null (bare ``NaN`` is
    not JSON: strict parsers such as KServe's client and JavaScript's reject the reply)."""
    values: list[Any] = array.ravel().tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        values = [v if math.isfinite(v) else None for v in values]
    return values


def infer_reply(result: InferResult, binary_default: bool) -> tuple[list[bytes], int | None]:
    """The reply body's parts and the JSON header's length (None: JSON only)."""
    outputs: list[JsonObject] = []
    blobs: list[bytes] = []
    for out in result.outputs:
        item: JsonObject = {"name": out.spec.name, "datatype": out.spec.datatype,
                            "shape": list(out.array.shape)}
        binary = out.parameters.get("binary_data", binary_default)
        if out.in_shared_memory:  # written there: no data in the reply (as Triton)
            pass
        elif binary is True:
            data = out.array.tobytes()
            item["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            item["data"] = json_values(out.array)
        outputs.append(item)
    reply: JsonObject = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        reply["id"] = result.id
    reply["outputs"] = outputs
    header = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
    return [header, *blobs], (len(header) if blobs else None)


# -- the server --------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestServer:
    """The KServe V2 REST API of one InferenceCore, on its own port."""

    def __init__(
        self, config: ServerConfig, metrics: ServerMetrics, core: InferenceCore,
        tokens: TokenStore,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._core = core
        self._tokens = tokens
        self._runner: web.AppRunner | None = None
        self._draining = False
        self.port = -1
        self.app = web.Application(
            client_max_size=config.max_message_bytes,
            middlewares=[self._errors_and_auth])
        self._routes()

    def _routes(self) -> None:
        add = self.app.router.add_route
        add("GET", "/v2/health/live", self._live)
        add("GET", "/v2/health/ready", self._ready)
        add("GET", "/v2", self._server_metadata)
        add("POST", "/v2/models/stats", self._statistics)  # Triton answers GET only; both ok
        add("GET", "/v2/models/stats", self._statistics)
        add("POST", "/v2/repository/index", self._repository_index)
        add("GET", "/v2/systemsharedmemory/status", self._shm_status)
        add("GET", "/v2/systemsharedmemory/region/{region}/status", self._shm_status)
        add("POST", "/v2/systemsharedmemory/region/{region}/register", self._shm_register)
        add("POST", "/v2/systemsharedmemory/unregister", self._shm_unregister)
        add("POST", "/v2/systemsharedmemory/region/{region}/unregister", self._shm_unregister)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", prefix, self._model_metadata)
            add("GET", prefix + "/ready", self._model_ready)
            add("GET", prefix + "/config", self._model_config)
            add("GET", prefix + "/stats", self._statistics)
            add("POST", prefix + "/infer", self._infer)

    async def start(self, host: str, port: int) -> int:
        """Binds ``host:port`` (0 = a free port), with TLS when configured; returns the port."""
        # handler_cancellation: a client that disconnects cancels its request's handler, so
        # its images stop being decoded (no further image starts), as a cancelled gRPC call's
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=self._config.grace_period_s,
                                     handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=http_ssl_context(self._config),
                           reuse_port=self._config.workers > 1)  # workers share the port
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    def begin_drain(self) -> None:
        """From now on new requests (except the two health probes) are answered 503, and
        readiness turns false; requests already started run to their end (stop)."""
        self._draining = True
        self._core.draining = True

    async def stop(self) -> None:
        """Stops accepting; requests in progress get up to grace_period_s to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middleware: errors, auth, metrics --------------------------------------------------

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler: Handler
                               ) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route
        method = _METHODS.get(getattr(route.handler, "__name__", ""), "unknown")
        label = f"http:{method}"
        try:
            response = await self._answer(request, handler)
        except asyncio.CancelledError:  # the client went away (handler_cancellation)
            self._metrics.requests.labels(label, "CANCELLED").inc()
            self._metrics.request_duration.labels(label).observe(time.perf_counter() - started)
            raise
        code = http_code_name(response.status)
        self._metrics.requests.labels(label, code).inc()
        self._metrics.request_duration.labels(label).observe(time.perf_counter() - started)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._draining and request.path not in UNAUTHENTICATED_PATHS:
            return error_response(
                503, "the server is shutting down and accepts no new requests; retry "
                "(another replica)", {"Retry-After": "1"})
        if self._tokens.enabled and request.path not in UNAUTHENTICATED_PATHS:
            detail = check_authorization(
                [("authorization", v) for v in request.headers.getall("Authorization", [])],
                self._tokens)
            if detail:
                return error_response(401, detail, {"WWW-Authenticate": CHALLENGE[0][1]})
        try:
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: unknown path, method, size limit
            if exc.status == 413 and request.path.endswith("/infer"):
                message = (f"request body exceeds {self._config.max_message_bytes} bytes "
                           "(max_message_bytes)")
            elif exc.status == 413:
                message = f"request body exceeds {SMALL_BODY_BYTES} bytes, the most this path takes"
            elif exc.status == 404:
                message = f"not found: {request.method} {request.path}"
            elif exc.status == 405:
                message = f"method {request.method} is not allowed on {request.path}"
            else:
                message = exc.text or exc.reason
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, message, headers)
        except Exception as exc:  # every failure gets a status, none takes the server down
            answer = answer_to(exc)
            if not answer.expected:
                log.exception("%s %s failed unexpectedly", request.method, request.path)
            return error_response(answer.http_status, answer.detail)

    # -- health and metadata ----------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})  # KServe's body; Triton's clients read status

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._core.ready
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self._core.server_metadata())

    async def _model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(self._core.model_metadata(name, version))

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = self._core.model_ready(name, version)
        return web.json_response({"name": name, "ready": ready}, status=200 if ready else 400)

    async def _model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(self._core.model_config(name, version))

    async def _statistics(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(self._core.model_statistics(name, version))

    async def _repository_index(self, request: web.Request) -> web.Response:
        ready = (await _json_body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("'ready' must be true or false")
        return web.json_response(self._core.repository_index("", ready))

    # -- system shared memory ---------------------------------------------------------------

    async def _shm_status(self, request: web.Request) -> web.Response:
        return web.json_response(
            self._core.shared_memory.status(request.match_info.get("region", "")))

    async def _shm_register(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        key = body.get("key")
        if not isinstance(key, str):
            raise InvalidRequest("registering a region needs 'key' as a string")
        await asyncio.to_thread(
            self._core.shared_memory.register, request.match_info["region"], key,
            body.get("offset", 0), body.get("byte_size"))
        return web.Response(status=200)

    async def _shm_unregister(self, request: web.Request) -> web.Response:
        self._core.shared_memory.unregister(request.match_info.get("region", ""))
        return web.Response(status=200)

    # -- inference --------------------------------------------------------------------------

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        binary_default = False

        async def parse() -> InferRequest:
            nonlocal binary_default
            try:  # gzip and deflate are inflated on the fly, bounded as well (413)
                body = await request.read()  # bounded by client_max_size (413 beyond it)
            except RequestPayloadError as exc:
                reason = exc.args[0] if exc.args else exc
                raise InvalidRequest(f"cannot read the request body: {reason}") from None
            neutral, binary_default = await asyncio.to_thread(
                parse_infer_body, body, request.headers.get(HEADER_LENGTH), name, version)
            return neutral

        def encode(result: InferResult) -> tuple[list[bytes], int | None]:
            return infer_reply(result, binary_default)

        parts, header_length = await self._core.infer(name, parse, encode)
        if header_length is None:
            return web.Response(body=parts[0], content_type="application/json")
        response = web.Response(body=b"".join(parts), content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(header_length)
        return response


SMALL_BODY_BYTES = 64 * 1024
"""Most bytes a repository or shared-memory request's JSON body may hold (413 beyond)."""


async def _json_body(request: web.Request) -> JsonObject:
    """A small request's JSON object body ({} when empty), at most SMALL_BODY_BYTES, parsed off
    the event loop."""
    if (request.content_length or 0) > SMALL_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=SMALL_BODY_BYTES,
                                            actual_size=request.content_length or 0)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(SMALL_BODY_BYTES):
            size += len(chunk)
            if size > SMALL_BODY_BYTES:
                raise web.HTTPRequestEntityTooLarge(max_size=SMALL_BODY_BYTES, actual_size=size)
            chunks.append(chunk)
    except RequestPayloadError as exc:  # e.g. a body that does not inflate as its encoding
        reason = exc.args[0] if exc.args else exc
        raise InvalidRequest(f"cannot read the request body: {reason}") from None
    body = b"".join(chunks)
    if not body.strip():
        return {}
    return await asyncio.to_thread(_parse_object, body)


def _parse_object(body: bytes) -> JsonObject:
    try:
        return _object(json.loads(body), "the request")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"failed to parse the request JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("failed to parse the request JSON: nested too deeply") from None


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info.get("model", ""), info.get("version", "")
