"""Python SDK: ``ScoringClient`` (blocking) and ``AsyncScoringClient`` (asyncio).

Both take numpy arrays and return ``ScoreResult`` objects with one array per score. Inputs too
large for one message are cut into chunks and sent over the streaming RPCs automatically.
Calls that fail with UNAVAILABLE (server restarting, connection refused) are retried by gRPC
itself with exponential backoff, as configured by the channel's service config. Until the
channel has connected once, a call first waits at most ``connect_timeout`` seconds for it, then
raises ConnectionFailed: a probe of the address with the standard library (name resolution, a TCP
connection, an HTTP/1.1 request, TLS handshakes, an HTTP/2 preface; each step bounded by
PROBE_STEP_S seconds) names the likely cause and the fix in its one-line message.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

import hardscore_client.health_check as health_check
from hardscore_client.connection import TLSConfig, connection_failed
from hardscore_client.errors import InputError
from hardscore_client.messages import (
    ScoreResult,
    chunk_rows_for,
    decode_scores,
    image_sample,
    logits_chunks,
    options_message,
)
from hardscore_client.probabilities import checked_probabilities
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.scores import looks_like_probabilities

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
IMAGE_CHUNK = 64
Progress = Callable[[int], None]
"""Called with the number of rows just completed."""

ImageInput = bytes | npt.NDArray[np.generic]

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds the first call waits for the channel to connect before ConnectionFailed."""
TOKEN_ENV = "HARDSCORE_TOKEN"
"""The environment variable the command line reads the bearer token from."""
TOKEN_HINT = f"pass --token, --token-file or set {TOKEN_ENV}"
"""What a message about a missing or refused bearer token suggests."""

LOAD_BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")
"""Targets that name a fleet: a DNS name resolved to every address ("dns:///scorer:8001", e.g.
the Helm chart's headless Service), or a list ("ipv4:10.0.0.1:8001,10.0.0.2:8001")."""
ROUND_ROBIN = "round_robin"


def load_balanced(target: str) -> bool:
    """Whether ``target`` names a fleet (LOAD_BALANCED_SCHEMES): its channel spreads calls over
    every resolved address with gRPC's round_robin policy."""
    return target.startswith(LOAD_BALANCED_SCHEMES)


def channel_options(max_message_bytes: int, retries: int,
                    load_balancing: str | None = None) -> list[tuple[str, object]]:
    """Channel options: message limits and a retry policy for UNAVAILABLE on every method;
    ``load_balancing`` names gRPC's policy over the target's addresses (None: gRPC's default,
    pick_first; "round_robin": every call to the next ready address)."""
    service_config: dict[str, object] = {
        "methodConfig": [{
            "name": [{"service": "hardscore.v1.ScoringService"}],
            "retryPolicy": {
                "maxAttempts": max(2, retries + 1),
                "initialBackoff": "0.1s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    }
    if load_balancing:
        service_config["loadBalancingConfig"] = [{load_balancing: {}}]
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        ("grpc.service_config", json.dumps(service_config)),
        # Keep whole requests for replay, so large messages are retried too.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", 4 * max_message_bytes),
    ]
    return options


def _credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


class ProbabilitiesAsLogitsWarning(UserWarning):
    """An array passed as logits looks like predicted probabilities (see warn_if_probabilities)."""


PROBABILITIES_AS_LOGITS = (
    "the array passed as logits looks like predicted probabilities (every value in [0, 1], "
    "every row summing to 1): scored as logits, softmax is applied on top of it and the "
    "scores are wrong; pass it to score_probabilities() instead (CLI: --pred-probs)"
)


def warn_if_probabilities(logits: npt.NDArray[np.generic], stacklevel: int = 4) -> bool:
    """Warns (ProbabilitiesAsLogitsWarning) when ``logits`` look like probabilities; True then."""
    if not looks_like_probabilities(logits):
        return False
    warnings.warn(PROBABILITIES_AS_LOGITS, ProbabilitiesAsLogitsWarning, stacklevel=stacklevel)
    return True


def _prepare_logits(
    logits: npt.ArrayLike, labels: npt.ArrayLike | Sequence[str] | None,
    ids: Sequence[str] | None,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.generic] | None]:
    """The rows as float32 (float64 kept) and the labels as an array; InputError when the
    labels or ids are not one per row."""
    arr = np.asarray(logits)
    if arr.dtype != np.float64:
        arr = arr.astype(np.float32, copy=False)
    label_arr = None if labels is None else np.asarray(labels)
    if arr.ndim == 2:
        if label_arr is not None and (label_arr.ndim != 1 or len(label_arr) != len(arr)):
            raise InputError(f"labels has shape {list(label_arr.shape)}, expected "
                             f"[{len(arr)}]: one label per row (-1 or \"\" = none)")
        if ids is not None and len(ids) != len(arr):
            raise InputError(f"ids has {len(ids)} entries, expected {len(arr)} (one per row)")
    return arr, label_arr


def _image_requests(
    images: Sequence[ImageInput],
    labels: Sequence[int | str | None] | None,
    ids: Sequence[str] | None,
    options: pb.ScoringOptions,
    chunk: int,
) -> list[pb.ScoreImagesRequest]:
    for name, given in (("labels", labels), ("ids", ids)):
        if given is not None and len(given) != len(images):
            raise InputError(f"{name} has {len(given)} entries for {len(images)} images "
                             "(one per image)")
    requests = []
    for start in range(0, max(len(images), 1), chunk):
        stop = min(start + chunk, len(images))
        samples = [
            image_sample(
                images[i],
                None if labels is None else labels[i],
                "" if ids is None else ids[i],
            )
            for i in range(start, stop)
        ]
        requests.append(pb.ScoreImagesRequest(samples=samples, options=options))
    return requests


class _ClientCore:
    """Channel set-up and request planning shared by the blocking and asyncio clients."""

    def __init__(
        self,
        target: str,
        *,
        tls: TLSConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 4,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        wait_for_ready: bool = True,
        load_balancing: str | None = None,
        _aio: bool = False,
    ) -> None:
        if connect_timeout is not None and connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0 seconds or None, got {connect_timeout}")
        grpc_api: Any = grpc.aio if _aio else grpc
        self._target = target
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._connected = False
        self._thread_lock = threading.Lock()  # one first-connection wait at a time
        policy = load_balancing or (ROUND_ROBIN if load_balanced(target) else None)
        options = channel_options(max_message_bytes, retries, policy)
        if tls is not None:
            if tls.server_name_override:
                options.append(("grpc.ssl_target_name_override", tls.server_name_override))
            self._channel = grpc_api.secure_channel(target, _credentials(tls), options=options)
        else:
            self._channel = grpc_api.insecure_channel(target, options=options)
        self._stub = pb_grpc.ScoringServiceStub(self._channel)
        self._health = self._channel.unary_unary(health_check.METHOD)
        self._max_message_bytes = max_message_bytes
        # By default every call waits for the channel to connect (bounded by the timeout)
        # instead of failing at once while the server restarts; the first connection is
        # bounded by connect_timeout too (_first_wait).
        self._call: dict[str, Any] = {
            "timeout": timeout, "metadata": tuple(metadata), "wait_for_ready": wait_for_ready,
        }
        if token:  # bearer-token auth (servers with auth_tokens): every call but health checks
            self._call["metadata"] += (("authorization", f"Bearer {token}"),)

    def _first_wait(self) -> float | None:
        """Seconds to wait for the first connection before ConnectionFailed: connect_timeout,
        or the per-call timeout when shorter; None = connected already, or no bound asked."""
        if self._connected or self._connect_timeout is None:
            return None
        timeout = self._call["timeout"]
        return self._connect_timeout if timeout is None else min(self._connect_timeout, timeout)

    def _logits_plan(
        self,
        logits: npt.ArrayLike,
        labels: npt.ArrayLike | Sequence[str] | None,
        ids: Sequence[str] | None,
        class_names: Sequence[str] | None,
        temperature: float | None,
        include_probabilities: bool,
        chunk_rows: int | None,
        probabilities: bool = False,
    ) -> tuple[int, Iterator[pb.ScoreLogitsRequest]]:
        """(number of messages, the messages) for a score_logits (or, with ``probabilities``,
        score_probabilities) call. Logits that look like probabilities get a warning;
        probabilities are checked, and renormalised where their dtype explains their row sums
        (hardscore_client.probabilities)."""
        if probabilities:
            logits = checked_probabilities(logits, stacklevel=3)
        arr, label_arr = _prepare_logits(logits, labels, ids)
        if not probabilities:
            warn_if_probabilities(arr, stacklevel=4)
        options = options_message(class_names, temperature, include_probabilities)
        rows = chunk_rows or chunk_rows_for(
            arr.shape[-1] if arr.ndim == 2 else 2, self._max_message_bytes, include_probabilities,
            logits_itemsize=arr.dtype.itemsize, labels=label_arr, ids=ids,
            class_names=class_names)
        chunks = logits_chunks(arr, label_arr, ids, options, rows, probabilities)
        return max(1, -(-len(arr) // rows)), chunks

    @staticmethod
    def _images_plan(
        images: Sequence[ImageInput],
        labels: Sequence[int | str | None] | None,
        ids: Sequence[str] | None,
        temperature: float | None,
        include_probabilities: bool,
        include_logits: bool,
        chunk_size: int,
        include_embeddings: bool = False,
        model_name: str = "",
        model_version: str = "",
    ) -> list[pb.ScoreImagesRequest]:
        options = options_message(None, temperature, include_probabilities, include_logits,
                                  include_embeddings)
        requests = _image_requests(images, labels, ids, options, chunk_size)
        for request in requests:  # a model repository: which model and version (docs/models.md)
            request.model_name = model_name
            request.model_version = model_version
        return requests


def _decode_images(reply: pb.ScoreImagesResponse) -> ScoreResult:
    """One ScoreImages reply (or stream chunk), tagged with the model version that computed
    it: each chunk of a stream is routed on its own, so a swap can change it mid-call."""
    return decode_scores(reply.scores, reply.errors, reply.model_name, reply.model_version)


def _finish(parts: Iterable[ScoreResult], progress: Progress | None) -> ScoreResult:
    """Joins the per-message results, reporting each to ``progress`` as it arrives."""
    collected = []
    for part in parts:
        collected.append(part)
        if progress:
            progress(len(part))
    return ScoreResult.concat(collected)


async def _finish_async(
    parts: AsyncIterator[ScoreResult], progress: Progress | None
) -> ScoreResult:
    collected = []
    async for part in parts:
        collected.append(part)
        if progress:
            progress(len(part))
    return ScoreResult.concat(collected)


class ScoringClient(_ClientCore):
    """Blocking client of a hardscore server at ``target`` ("host:port"), or of a fleet
    (``dns:///name:port``, ``ipv4:host:port,host:port``).

    Keyword options: ``tls`` (TLSConfig), ``max_message_bytes`` (both directions),
    ``retries`` (attempts after the first on UNAVAILABLE), ``timeout`` (seconds per call,
    default None: no deadline), ``metadata`` (sent with every call), ``token`` (bearer token,
    sent as ``authorization``), ``connect_timeout`` (seconds, default 10: how long the first
    call waits for the channel to connect, at most ``timeout``, before raising ConnectionFailed;
    None = wait within the call's deadline only), ``wait_for_ready`` (default True: a call made
    while the server is away waits for it within its deadline, as through a restart; False: it
    fails UNAVAILABLE at once, which a caller with other servers to turn to wants),
    ``load_balancing`` (gRPC's policy over the target's addresses; default: "round_robin" for a
    fleet, a ``dns:///name:port`` or ``ipv4:a:p,b:p`` target (load_balanced), every call to the
    next ready address; gRPC's pick_first otherwise).
    """

    def _ensure_connected(self) -> None:
        """Waits for the first connection (see _first_wait); raises ConnectionFailed."""
        if self._first_wait() is None:
            return
        with self._thread_lock:
            wait = self._first_wait()
            if wait is None:
                return
            ready = grpc.channel_ready_future(self._channel)
            try:
                ready.result(timeout=wait)
            except grpc.FutureTimeoutError:
                ready.cancel()
                raise connection_failed(self._target, self._tls, wait) from None
            self._connected = True

    def __enter__(self) -> ScoringClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the server's health check says SERVING (or raises grpc.RpcError)."""
        reply = self._health(health_check.request(), timeout=timeout, wait_for_ready=True)
        health_check.check_serving(health_check.status_of(reply))
        self._connected = True

    def score_logits(
        self,
        logits: npt.ArrayLike,
        labels: npt.ArrayLike | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        temperature: float | None = None,
        include_probabilities: bool = False,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
    ) -> ScoreResult:
        """Scores ``logits`` [N, C] with optional ``labels`` (indices, -1 = none; or names).

        Inputs of more than ``chunk_rows`` rows (default: what fits the message limit) travel
        over ScoreLogitsStream; the result is the same. An array that looks like predicted
        probabilities (all in [0, 1], rows summing to 1) is still scored as logits, with a
        ProbabilitiesAsLogitsWarning: use score_probabilities for those.
        """
        n, requests = self._logits_plan(logits, labels, ids, class_names, temperature,
                                        include_probabilities, chunk_rows)
        return self._score_rows(n, requests, progress)

    def score_probabilities(
        self,
        probabilities: npt.ArrayLike,
        labels: npt.ArrayLike | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        include_probabilities: bool = False,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
    ) -> ScoreResult:
        """Scores predicted ``probabilities`` [N, C] (cleanlab's ``pred_probs``: values in
        [0, 1], rows summing to 1 within 1e-3; zeros allowed) with optional ``labels``.

        The server scores them as given (no softmax, no renormalisation): the label scores
        equal cleanlab's on the same array. Rows further off than 1e-3 but within what the
        dtype's rounding explains (float16, 10 classes: 0.0234; rounding_sum_tolerance) are
        divided by their sums in float64 first, with a ProbabilitiesRenormalisedWarning. A bad
        row raises InputError naming it and the fix, before anything is sent.
        """
        n, requests = self._logits_plan(probabilities, labels, ids, class_names, None,
                                        include_probabilities, chunk_rows, probabilities=True)
        return self._score_rows(n, requests, progress)

    def _score_rows(
        self, n: int, requests: Iterator[pb.ScoreLogitsRequest], progress: Progress | None
    ) -> ScoreResult:
        self._ensure_connected()
        if n == 1:
            reply = self._stub.ScoreLogits(next(requests), **self._call)
            return _finish([decode_scores(reply.scores)], progress)
        stream = self._stub.ScoreLogitsStream(
            (pb.ScoreLogitsStreamRequest(chunk=c) for c in requests), **self._call)
        return _finish((decode_scores(r.scores) for r in stream), progress)

    def score_images(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int | str | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        temperature: float | None = None,
        include_probabilities: bool = False,
        include_logits: bool = False,
        chunk_size: int = IMAGE_CHUNK,
        progress: Progress | None = None,
        include_embeddings: bool = False,
        model_name: str = "",
        model_version: str = "",
    ) -> ScoreResult:
        """Runs the served model on ``images`` (encoded bytes or pixel arrays) and scores them.

        Failed samples are listed in ``result.errors``; the others are scored. More than
        ``chunk_size`` images travel over ScoreImagesStream. ``include_embeddings``: also
        return ``result.embeddings``, float32 [N, D] (``get_model_info().embedding_dim``); a
        model without embeddings answers INVALID_ARGUMENT. ``model_name`` and
        ``model_version`` pick a model of a server with several (empty: the only one loaded,
        its highest loaded version).
        """
        requests = self._images_plan(images, labels, ids, temperature, include_probabilities,
                                     include_logits, chunk_size, include_embeddings,
                                     model_name, model_version)
        self._ensure_connected()
        if len(requests) == 1:
            reply = self._stub.ScoreImages(requests[0], **self._call)
            return _finish([_decode_images(reply)], progress)
        stream = self._stub.ScoreImagesStream(
            (pb.ScoreImagesStreamRequest(chunk=r) for r in requests), **self._call)
        return _finish(
            (_decode_images(r.result) for r in stream), progress)

    def get_model_info(self, model_name: str = "", model_version: str = ""
                       ) -> pb.GetModelInfoResponse:
        """The served model's description (classes, input, normalisation, provider, batching)."""
        self._ensure_connected()
        return self._stub.GetModelInfo(
            pb.GetModelInfoRequest(model_name=model_name, model_version=model_version),
            **self._call)

    def list_models(self, ready_only: bool = False) -> pb.ListModelsResponse:
        """Every model version the server knows (name, version, state, reason): ListModels."""
        self._ensure_connected()
        return self._stub.ListModels(pb.ListModelsRequest(ready_only=ready_only), **self._call)


class AsyncScoringClient(_ClientCore):
    """asyncio client of a hardscore server; same options and methods as ScoringClient."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, _aio=True, **options)
        self._connect_lock = asyncio.Lock()

    async def _ensure_connected(self) -> None:
        """Waits for the first connection (see _first_wait); raises ConnectionFailed."""
        if self._first_wait() is None:
            return
        async with self._connect_lock:
            wait = self._first_wait()
            if wait is None:
                return
            try:
                await asyncio.wait_for(self._channel.channel_ready(), wait)
            except TimeoutError:
                raise await asyncio.to_thread(
                    connection_failed, self._target, self._tls, wait) from None
            self._connected = True

    async def __aenter__(self) -> AsyncScoringClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        reply = await self._health(health_check.request(), timeout=timeout, wait_for_ready=True)
        health_check.check_serving(health_check.status_of(reply))
        self._connected = True

    async def score_logits(
        self,
        logits: npt.ArrayLike,
        labels: npt.ArrayLike | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        temperature: float | None = None,
        include_probabilities: bool = False,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
    ) -> ScoreResult:
        """See ScoringClient.score_logits."""
        n, requests = self._logits_plan(logits, labels, ids, class_names, temperature,
                                        include_probabilities, chunk_rows)
        return await self._score_rows(n, requests, progress)

    async def score_probabilities(
        self,
        probabilities: npt.ArrayLike,
        labels: npt.ArrayLike | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        include_probabilities: bool = False,
        chunk_rows: int | None = None,
        progress: Progress | None = None,
    ) -> ScoreResult:
        """See ScoringClient.score_probabilities."""
        n, requests = self._logits_plan(probabilities, labels, ids, class_names, None,
                                        include_probabilities, chunk_rows, probabilities=True)
        return await self._score_rows(n, requests, progress)

    async def _score_rows(
        self, n: int, requests: Iterator[pb.ScoreLogitsRequest], progress: Progress | None
    ) -> ScoreResult:
        await self._ensure_connected()
        if n == 1:
            reply = await self._stub.ScoreLogits(next(requests), **self._call)
            return _finish([decode_scores(reply.scores)], progress)
        call = self._stub.ScoreLogitsStream(
            (pb.ScoreLogitsStreamRequest(chunk=c) for c in requests), **self._call)
        return await _finish_async((decode_scores(r.scores) async for r in call), progress)

    async def score_images(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int | str | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        temperature: float | None = None,
        include_probabilities: bool = False,
        include_logits: bool = False,
        chunk_size: int = IMAGE_CHUNK,
        progress: Progress | None = None,
        include_embeddings: bool = False,
        model_name: str = "",
        model_version: str = "",
    ) -> ScoreResult:
        """See ScoringClient.score_images."""
        requests = self._images_plan(images, labels, ids, temperature, include_probabilities,
                                     include_logits, chunk_size, include_embeddings,
                                     model_name, model_version)
        await self._ensure_connected()
        if len(requests) == 1:
            reply = await self._stub.ScoreImages(requests[0], **self._call)
            return _finish([_decode_images(reply)], progress)
        call = self._stub.ScoreImagesStream(
            (pb.ScoreImagesStreamRequest(chunk=r) for r in requests), **self._call)
        return await _finish_async(
            (_decode_images(r.result) async for r in call), progress)

    async def get_model_info(self, model_name: str = "", model_version: str = ""
                             ) -> pb.GetModelInfoResponse:
        await self._ensure_connected()
        return await self._stub.GetModelInfo(
            pb.GetModelInfoRequest(model_name=model_name, model_version=model_version),
            **self._call)

    async def list_models(self, ready_only: bool = False) -> pb.ListModelsResponse:
        await self._ensure_connected()
        return await self._stub.ListModels(pb.ListModelsRequest(ready_only=ready_only),
                                           **self._call)
