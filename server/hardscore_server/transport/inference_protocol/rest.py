"""The Open Inference Protocol over HTTP/REST (KServe V2, as Triton serves it), on its own port.

Translates HTTP requests to and from ``core.InferenceCore``, the same core the gRPC servicer
uses: same checks, same admission, same batcher, same statistics. Served with aiohttp on the
event loop the batcher runs on. JSON tensors and Triton's binary tensor data extension
(``Inference-Header-Content-Length``) are both accepted; outputs are binary when asked for
(``"binary_data": true`` on an output, or ``"binary_data_output": true`` on the request).

Errors are Triton's: ``{"error": "<message>"}`` with 400 for a bad request, 404 for an unknown
model or path, 401 without an accepted bearer token (when tokens are configured), 408 for a body
that stops arriving, 413 for a body over ``max_message_bytes`` or one that could never fit the
request budget, 503 when the queue is full, the decode or request budget stays busy or the
server is draining, 504 when a request's ``timeout`` parameter (microseconds) passes in the
queue (request errors take their status from ``transport.statuses``), 500 for anything
unexpected (logged). The bearer tokens and TLS files are the gRPC port's; ``/v2/health/live``
and ``/v2/health/ready`` answer without a token, as ``grpc.health.v1`` does on the gRPC port.

Bodies are bounded before they are parsed (docs/security.md, "REST bounds"): every body is read
in chunks against its route's size limit (after gzip or deflate inflation) while it holds its
estimated memory in the server's one budget of request bytes (``BodyBudget``: the gRPC port's
``RequestBudget``, ``request_budget_bytes``); a connection gets
``http_header_timeout_s`` for its headers and a body ``http_body_timeout_s`` between bytes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.decode_budget import mib
from hardscore_server.pipeline.errors import InvalidRequest, RequestBudgetBusy
from hardscore_server.pipeline.request_budget import RequestBudget
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

JSON_PARSE_FACTOR = 10
"""Bytes of memory a byte of JSON body is taken to cost once parsed, before its content is
counted (``parse_cost``): typical tensor data in JSON costs 4x (long floats) to 15x (short
ones)."""
BINARY_PARSE_FACTOR = 1
"""The same for binary tensor data: one copy, into the tensor."""
INLINE_BYTES = 1024 * 1024
"""Bodies up to this size are counted on the event loop; larger ones in a worker thread, and
their JSON parsed in the one JSON thread (small ones in any worker thread)."""
MAX_JSON_BYTES = 8 * 1024 * 1024
"""Most bytes of JSON an infer body may hold (its JSON header with binary tensor data), 413
before the body is read. Larger tensors go as binary data (~11x smaller than their JSON)."""
MAX_JSON_PARSE_COST = 32 * 1024 * 1024
"""Most estimated parsing memory (``parse_cost``, less the body itself) of an infer body's
JSON, 413 beyond, before it is parsed. ``json`` holds the interpreter while it parses, every
other request waiting, for about 1.3 ns per byte of that estimate at most, whatever the JSON
(short numbers, empty lists, strings): 32 MiB keeps each pause near 50 ms (short numbers up
to ~2.4 MB of JSON, 17-digit ones ~5 MB, hostile ``[[],[],...]`` ~0.5 MB)."""
LINGER_S = 10.0
"""Longest the rest of a body left unread (a refused request) is received and dropped so that a
client still sending reads the reply, before the connection closes (aiohttp's lingering time;
at most http_body_timeout_s)."""
IDLE_CLOSE_S = 0.1
"""At the end of a drain, seconds between closing the idle keep-alive connections and closing
the listener: a client that finds its connection closed reconnects and is answered 503."""

#: The protocol's name of each handler, for the ``method`` label of the request metrics.
_METHODS = {"_live": "ServerLive", "_ready": "ServerReady", "_server_metadata": "ServerMetadata",
            "_model_metadata": "ModelMetadata", "_model_ready": "ModelReady",
            "_model_config": "ModelConfig", "_statistics": "ModelStatistics",
            "_infer": "ModelInfer", "_repository_index": "RepositoryIndex",
            "_repository_load": "RepositoryModelLoad",
            "_repository_unload": "RepositoryModelUnload",
            "_shm_status": "SystemSharedMemoryStatus",
            "_shm_register": "SystemSharedMemoryRegister",
            "_shm_unregister": "SystemSharedMemoryUnregister"}


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    """A JSON reply as Triton sends it: strict JSON (no bare NaN), ``Content-Type:
    application/json`` with no charset parameter (JSON has none): KServe's REST client reads an
    error reply's ``error`` only when the content type is exactly that."""
    body = json.dumps(value, allow_nan=False).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None
                   ) -> web.Response:
    """Triton's error reply: ``{"error": message}``."""
    return json_response({"error": message}, status=status, headers=headers)


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


# -- bounds on request bodies -------------------------------------------------------------------


class BodyRefused(Exception):
    """A request refused for its body, before or while it is read: the reply's HTTP status (408
    stopped arriving, 413 too large, 503 request budget busy) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_cost(size: int, header_length: int | None) -> int:
    """Estimated memory (bytes) of a body's first ``size`` bytes once read and parsed, before
    their content is seen: the bytes, plus JSON_PARSE_FACTOR per byte of JSON and
    BINARY_PARSE_FACTOR per byte of binary tensor data, which follows ``header_length`` bytes of
    JSON (None: the body is JSON)."""
    json_bytes = size if header_length is None else min(size, header_length)
    return size + JSON_PARSE_FACTOR * json_bytes + BINARY_PARSE_FACTOR * (size - json_bytes)


# What parsing JSON costs, counted from its text (parse_cost). Measured peaks: short floats
# ("0.5,") 57 bytes per value, 3-digit integers 61, "[0.5]," 176, '"ab",' 142, "[]," 108.
VALUE_BYTES = 64
"""Per value (a separator or an opening bracket before it): its object, the list's pointer to
it, the tensor's copies."""
CONTAINER_BYTES = 80
"""Per list or object, beyond its values."""
QUOTE_BYTES = 48
"""Per double quote (two per string): the string object, and its bytes for a BYTES tensor."""


def parse_cost(body: bytes | bytearray, header_length: int | None) -> int:
    """Estimated peak memory (bytes) of ``body`` once parsed, from its content (an upper bound
    for what json and the tensor reader make of it): the body; for its JSON part the text
    decoded (4 bytes a character when not ASCII) and each value, list, object and string,
    counted from its commas, brackets and quotes; one copy of the binary tensor data after
    ``header_length`` bytes of JSON (None: the body is JSON)."""
    end = len(body) if header_length is None else max(0, min(header_length, len(body)))
    opens = body.count(b"[", 0, end) + body.count(b"{", 0, end)
    values = body.count(b",", 0, end) + opens + 1
    ascii_text = body.isascii() if end == len(body) else body[:end].isascii()
    text = (2 if ascii_text else 6) * end  # decoded text, a copy of the JSON part, strings
    json_cost = (text + VALUE_BYTES * values + CONTAINER_BYTES * opens
                 + QUOTE_BYTES * body.count(b'"', 0, end))
    return len(body) + json_cost + BINARY_PARSE_FACTOR * (len(body) - end)


class BodyBudget:
    """REST bodies in progress, in the server's one budget of request bytes (``RequestBudget``,
    ``request_budget_bytes``) beside the gRPC messages: what each holds read plus what parsing
    it is estimated to cost.

    A request that does not fit now waits until others (gRPC calls and streams, other bodies)
    give budget back, first fit (a small request passes a large one that does not fit yet), for
    at most its wait; then 503. One that could never fit, even alone (over ``capacity``, the
    most one request may hold of the budget), is refused at once (413). Event loop only.
    """

    def __init__(self, shared: RequestBudget) -> None:
        self.shared = shared

    @property
    def capacity(self) -> int:
        """The most one body may hold: the budget less a small message's share."""
        return self.shared.largest

    def try_take(self, need: int) -> bool:
        return self.shared.try_take(need)

    def release(self, amount: int) -> None:
        self.shared.release(amount)

    async def acquire(self, need: int, wait_s: float, held: int = 0) -> None:
        """Takes ``need`` more bytes for a request already holding ``held``, waiting up to
        ``wait_s`` seconds; BodyRefused (413 or 503) when it cannot. Cancelled while waiting,
        it takes nothing."""
        if held + need > self.capacity:
            raise BodyRefused(
                413, f"the request body needs an estimated {mib(held + need)} of memory to be "
                f"read and parsed, more than one request may hold of this server's request "
                f"budget ({mib(self.capacity)} of {mib(self.shared.capacity)}, "
                "request_budget_bytes); send the tensors as binary data (JSON takes 4 to 20 "
                "times its size to parse) or in smaller requests")
        try:
            await self.shared.take_body(need, wait_s)
        except RequestBudgetBusy as exc:
            raise BodyRefused(503, str(exc)) from None


class BodyHold:
    """The part of the body budget one request holds, all given back when it ends
    (``async with``)."""

    def __init__(self, budget: BodyBudget, wait_s: float) -> None:
        self._budget = budget
        self._wait_s = wait_s
        self.held = 0

    async def reach(self, total: int, keep: int = 0) -> None:
        """Holds ``total`` bytes from now on: gives the excess back, or takes the difference.
        When that is not free now, the request holds only ``keep`` (the bytes it has read)
        while it waits for the rest, so that requests waiting for more never keep each other
        waiting. BodyRefused (413, 503) when it cannot."""
        if total <= self.held:
            self._budget.release(self.held - total)
            self.held = total
        elif self._budget.try_take(total - self.held):
            self.held = total
        else:
            if self.held > keep:
                self._budget.release(self.held - keep)
                self.held = keep
            await self._budget.acquire(total - self.held, self._wait_s, self.held)
            self.held = total

    async def __aenter__(self) -> BodyHold:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._budget.release(self.held)
        self.held = 0


def header_length_of(request: web.Request) -> int | None:
    """The binary tensor data extension's JSON length when the header holds one (else None:
    the body is taken as JSON; parse_infer_body refuses a bad header)."""
    value = request.headers.get(HEADER_LENGTH)
    if value is None or not (value.isascii() and value.isdigit() and len(value) <= 20):
        return None
    return int(value)


CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError, ConnectionError)
"""Errors a client causes in aiohttp's own code: a malformed request, a body that does not
decode or ends early, a connection that goes away."""


class ClientErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, where an error a client caused is one DEBUG line, without its
    traceback: anyone who reaches the port could otherwise fill the log at ERROR. Everything
    else passes through as it is."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if level >= logging.ERROR and isinstance(error, CLIENT_ERRORS):
            self.logger.debug("%s: %s: %s", str(msg) % args if args else msg,
                              type(error).__name__, str(error).replace("\n", " "))
            return
        super().log(level, msg, *args, **kwargs)


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
    body: bytes | bytearray, header_length: str | None, model: str, version: str
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
    request = _parse_object(header)
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
        tokens: TokenStore, requests: RequestBudget,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._core = core
        self._tokens = tokens
        self._runner: web.AppRunner | None = None
        self._draining = False
        self._drain_started = 0.0
        self._last_activity = 0.0  # time.monotonic() of the last request's start or end
        self._budget = BodyBudget(requests)  # the gRPC port's: one budget of request bytes
        self._body_timeout = config.http_body_timeout_s
        # Large JSON bodies are parsed one at a time: each holds the interpreter while parsed,
        # so that at most one such pause stands before another caller's request at a time.
        self._json_thread = ThreadPoolExecutor(1, thread_name_prefix="hardscore-json")
        self.port = -1
        self.app = web.Application(
            client_max_size=config.max_message_bytes,
            middlewares=[self._errors_and_auth])
        self._routes()

    def _routes(self) -> None:
        def add(method: str, path: str, handler: Handler) -> None:
            expect = self._expect if method == "POST" else None  # GET: aiohttp's own
            self.app.router.add_route(method, path, handler, expect_handler=expect)

        add("GET", "/v2/health/live", self._live)
        add("GET", "/v2/health/ready", self._ready)
        add("GET", "/v2", self._server_metadata)
        add("POST", "/v2/models/stats", self._statistics)  # Triton answers GET only; both ok
        add("GET", "/v2/models/stats", self._statistics)
        add("POST", "/v2/repository/index", self._repository_index)
        add("POST", "/v2/repository/models/{model}/load", self._repository_load)
        add("POST", "/v2/repository/models/{model}/unload", self._repository_unload)
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
        c = self._config
        # handler_cancellation: a client that disconnects cancels its request's handler, so
        # its images stop being decoded (no further image starts), as a cancelled gRPC call's.
        # keepalive_timeout: aiohttp closes a connection still without complete headers this
        # long after it opened or its last reply ended (idle keep-alive ones included).
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=c.grace_period_s,
            handler_cancellation=True, keepalive_timeout=c.http_header_timeout_s,
            lingering_time=min(LINGER_S, c.http_body_timeout_s),
            logger=ClientErrorLog(logging.getLogger("aiohttp.server")))
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=http_ssl_context(c),
                           reuse_port=c.workers > 1)  # workers share the port
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    def begin_drain(self) -> None:
        """From now on new requests (except the two health probes) are answered 503, every reply
        carries ``Connection: close`` and readiness turns false; requests already started run to
        their end (stop)."""
        self._draining = True
        self._core.draining = True
        self._drain_started = time.monotonic()

    async def stop(self, window_s: float = 0.0, quiet_s: float = 0.0) -> None:
        """Closes the port, after a drain.

        First, for up to ``window_s`` seconds from the drain's start, it waits until no request
        has started or ended for ``quiet_s``: clients sending on keep-alive connections are
        answered (503, ``Connection: close``) rather than cut off. Then it closes the idle
        keep-alive connections (a FIN, not a reset: their clients' next request goes to a new
        connection), then the listener. Requests in progress get up to grace_period_s to
        finish; their connections close after the reply.
        """
        if self._runner is None:
            self._json_thread.shutdown(wait=False)
            return
        until = self._drain_started + window_s
        while (now := time.monotonic()) < until and now - self._last_activity < quiet_s:
            await asyncio.sleep(min(until - now, quiet_s - (now - self._last_activity)))
        server = self._runner.server
        idle = [c for c in server.connections if _idle(c)] if server is not None else []
        for connection in idle:
            connection.force_close()
        if idle:
            await asyncio.sleep(IDLE_CLOSE_S)
        await self._runner.cleanup()  # the requests in progress end first (or time out)
        self._runner = None
        self._json_thread.shutdown(wait=False)

    # -- middleware: errors, auth, metrics --------------------------------------------------

    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler: Handler
                               ) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route
        method = _METHODS.get(getattr(route.handler, "__name__", ""), "unknown")
        label = f"http:{method}"
        self._last_activity = time.monotonic()
        try:
            response = await self._answer(request, handler)
        except asyncio.CancelledError:  # the client went away (handler_cancellation)
            self._metrics.requests.labels(label, "CANCELLED").inc()
            self._metrics.request_duration.labels(label).observe(time.perf_counter() - started)
            raise
        finally:
            self._last_activity = time.monotonic()
        if self._draining:  # the client's next request goes to a new connection
            response.force_close()
        if not request.content.is_eof():  # a body left unread: refused, or stopped at an error
            response.force_close()
            # The rest is dropped as it arrives, never parsed nor inflated, for up to
            # LINGER_S (a client still sending reads the reply); then the connection closes.
            request.protocol.close()
        code = http_code_name(response.status)
        self._metrics.requests.labels(label, code).inc()
        self._metrics.request_duration.labels(label).observe(time.perf_counter() - started)
        return response

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The reply to a request refused on its headers alone (draining, no accepted token),
        else None."""
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
        return None

    async def _expect(self, request: web.Request) -> None:
        """``Expect: 100-continue``: the client is asked for its body only when the request would
        be read; otherwise the refusal (401, 413, 503) comes without it."""
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect[:40]}")
        if request.version != HttpVersion11 or self._refusal(request) is not None:
            return
        limit = _body_limit(request, self._config)
        length = request.content_length
        header_length = header_length_of(request)
        if (header_length or 0) > MAX_JSON_BYTES or (length is not None and (
                length > limit[0] or read_cost(length, header_length) > self._budget.capacity)):
            return
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own: the reply has not started

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except BodyRefused as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return error_response(exc.status, str(exc), headers)
        except web.HTTPException as exc:  # aiohttp's own: unknown path, method
            if exc.status == 404:
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
        return json_response({"live": True})  # KServe's body; Triton's clients read status

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._core.ready
        return json_response({"ready": ready}, status=200 if ready else 400)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return json_response(self._core.server_metadata())

    async def _model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return json_response(self._core.model_metadata(name, version))

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = self._core.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, status=200 if ready else 400)

    async def _model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return json_response(self._core.model_config(name, version))

    async def _statistics(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return json_response(self._core.model_statistics(name, version))

    async def _repository_index(self, request: web.Request) -> web.Response:
        ready = (await self._json_body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequest("'ready' must be true or false")
        return json_response(await self._core.repository_index("", ready))

    async def _repository_load(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        parameters = _parameters(body.get("parameters"), "the request")
        await self._core.load("", request.match_info["model"], _headers(request), parameters)
        return web.Response(status=200)

    async def _repository_unload(self, request: web.Request) -> web.Response:
        await self._json_body(request)  # its parameters (unload_dependents) change nothing
        await self._core.unload("", request.match_info["model"], _headers(request))
        return web.Response(status=200)

    # -- system shared memory ---------------------------------------------------------------

    async def _shm_status(self, request: web.Request) -> web.Response:
        return json_response(
            self._core.shared_memory.status(request.match_info.get("region", "")))

    async def _shm_register(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
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

    # -- request bodies ---------------------------------------------------------------------

    async def _read_body(self, request: web.Request, hold: BodyHold,
                         header_length: int | None) -> bytearray:
        """The whole body, at most its route's limit (after gzip or deflate inflation), with its
        estimated memory (read_cost) taken into ``hold`` first: all of it before the first byte
        when the Content-Length gives the size, else as the chunks come.

        BodyRefused: 413 over the limit (at once when the Content-Length says so) or over the
        whole body budget, 408 when no byte arrives for http_body_timeout_s, 503 when the budget
        stays busy as long; InvalidRequest when the body does not decode or ends early.
        """
        limit, too_large = _body_limit(request, self._config)
        length = request.content_length
        if length is not None and length > limit:
            raise BodyRefused(413, too_large)
        # Inflated, a body's size is unknown until it is read: it is counted as it comes.
        identity = request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() in (
            "", "identity")
        sized = length is not None and identity
        if length is not None and identity:
            await hold.reach(read_cost(length, header_length))
        body = bytearray(length if length is not None and identity else 0)
        size = 0
        while True:
            try:
                async with asyncio.timeout(self._body_timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise BodyRefused(
                    408, f"the request body stopped arriving: no byte for "
                    f"{self._body_timeout:g} s (http_body_timeout_s) after {size} bytes") from None
            except RequestPayloadError as exc:  # e.g. a body that does not inflate as encoded
                reason = exc.args[0] if exc.args else exc
                raise InvalidRequest(f"cannot read the request body: {reason}") from None
            if not chunk:
                break
            end = size + len(chunk)
            if end > limit:
                raise BodyRefused(413, too_large)
            if sized:
                body[size:end] = chunk
            else:
                await hold.reach(read_cost(end, header_length), keep=size)
                body += chunk
            size = end
        del body[size:]  # (aiohttp holds a sized body to its length: nothing to cut)
        return body

    async def _json_body(self, request: web.Request) -> JsonObject:
        """A small request's JSON object body ({} when empty), at most SMALL_BODY_BYTES, held in
        the body budget while it is read and parsed (off the event loop)."""
        async with BodyHold(self._budget, self._body_timeout) as hold:
            body = await self._read_body(request, hold, None)
            if not body.strip():
                return {}
            await hold.reach(parse_cost(body, None), keep=len(body))
            return await asyncio.to_thread(_parse_object, body)

    # -- inference --------------------------------------------------------------------------

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        binary_default = False
        header_length = header_length_of(request)

        async def parse(hold: BodyHold) -> InferRequest:
            nonlocal binary_default
            if header_length is not None and header_length > MAX_JSON_BYTES:
                raise BodyRefused(413, _json_too_large(
                    f"its {HEADER_LENGTH} is {header_length}, over {MAX_JSON_BYTES} bytes"))
            body = await self._read_body(request, hold, header_length)
            # What parsing will take, counted from the text: held (or 413, 503) before it starts
            if len(body) <= INLINE_BYTES:
                cost = parse_cost(body, header_length)
            else:
                cost = await asyncio.to_thread(parse_cost, body, header_length)
            end = len(body) if header_length is None else min(header_length, len(body))
            json_cost = cost - len(body) - BINARY_PARSE_FACTOR * (len(body) - end)
            if json_cost > MAX_JSON_PARSE_COST:
                raise BodyRefused(413, _json_too_large(
                    f"its {end} bytes of JSON would take an estimated {mib(json_cost)} to parse, "
                    f"more than {mib(MAX_JSON_PARSE_COST)}"))
            await hold.reach(cost, keep=len(body))
            work = functools.partial(parse_infer_body, body, request.headers.get(HEADER_LENGTH),
                                     name, version)
            if len(body) <= INLINE_BYTES:
                neutral, binary_default = await asyncio.to_thread(work)
            else:
                neutral, binary_default = await asyncio.get_running_loop().run_in_executor(
                    self._json_thread, work)
            return neutral

        def encode(result: InferResult) -> tuple[list[bytes], int | None]:
            return infer_reply(result, binary_default)

        # The body's memory is held until the request ends: its tensors live as long.
        async with BodyHold(self._budget, self._body_timeout) as hold:
            parts, reply_header = await self._core.infer(name, lambda: parse(hold), encode)
        if reply_header is None:
            return web.Response(body=parts[0], content_type="application/json")
        response = web.Response(body=b"".join(parts), content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(reply_header)
        return response


SMALL_BODY_BYTES = 64 * 1024
"""Most bytes a repository or shared-memory request's JSON body may hold (413 beyond)."""


def _json_too_large(what: str) -> str:
    """The 413 message of a body whose JSON is too large to parse: ``what`` says how large."""
    return (f"the request's JSON is too large for this server ({what}): JSON holds the server "
            "while it is parsed; send the tensors as binary data (the binary tensor data "
            f"extension: {HEADER_LENGTH}) or in smaller requests")


def _body_limit(request: web.Request, config: ServerConfig) -> tuple[int, str]:
    """The most bytes the request's route reads from a body, and the 413 message beyond it."""
    if request.match_info.route.handler.__name__ == "_infer":
        if header_length_of(request) is None and config.max_message_bytes > MAX_JSON_BYTES:
            return MAX_JSON_BYTES, _json_too_large(f"a JSON body over {MAX_JSON_BYTES} bytes")
        return config.max_message_bytes, (
            f"request body exceeds {config.max_message_bytes} bytes (max_message_bytes)")
    return SMALL_BODY_BYTES, (
        f"request body exceeds {SMALL_BODY_BYTES} bytes, the most this path takes")


def _idle(connection: RequestHandler) -> bool:
    """Whether the connection waits for its next request (none being answered or queued):
    the test aiohttp's own keep-alive timer makes before it closes one."""
    waiter = getattr(connection, "_waiter", None)
    return waiter is not None and not waiter.done()


def _parse_object(body: bytes | bytearray) -> JsonObject:
    """The JSON object ``body`` holds; InvalidRequest saying why it is not one."""
    try:
        return _object(json.loads(body), "the request")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"failed to parse the request JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("failed to parse the request JSON: nested too deeply") from None


def _headers(request: web.Request) -> list[tuple[str, str]]:
    """The request's headers as (lower-case name, value) pairs."""
    return [(k.lower(), v) for k, v in request.headers.items()]


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info.get("model", ""), info.get("version", "")
