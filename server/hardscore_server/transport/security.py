"""Transport security and authentication of the gRPC port.

- **TLS**: ``tls_cert_file`` + ``tls_key_file`` (PEM) serve the gRPC port over TLS; with
  ``tls_client_ca_file`` every client must present a certificate signed by that CA (mutual TLS).
  The files are checked at start-up (readable, key matching the certificate, CA bundle parsable)
  and a bad one stops the server with a configuration error (exit 2).
- **Bearer tokens**: with ``auth_tokens_file`` and/or ``HARDSCORE_AUTH_TOKENS`` set, every call
  must carry the metadata ``authorization: Bearer <token>`` with one of the tokens, or it fails
  with UNAUTHENTICATED before reaching any servicer. This covers every service on the port
  (hardscore.v1, the Open Inference Protocol, server reflection) except ``grpc.health.v1.Health``,
  which load balancers and Kubernetes probes call without credentials. Reflection is not exempt:
  it describes the whole API, so it is for the token holders too (``grpcurl -H``).
- Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every configured
  token (no early exit), so neither a token's content nor its length leaks through timing.
  The token file is re-read when it changes (checked at most once a second), so tokens rotate
  without a restart; a file that becomes unreadable or empty keeps the previous tokens (logged).
- **Model control**: loading and unloading models through the repository API
  (``model_control_mode=explicit``) needs its own credential, a token of
  ``repository_control_tokens_file`` / ``HARDSCORE_REPOSITORY_CONTROL_TOKENS`` in the header
  ``hardscore-control-token`` (gRPC metadata or HTTP header), besides the bearer token every call
  needs: inference tokens never allow it. Without control tokens, control is open on a
  loopback host only (config.py refuses explicit mode on another host without them).
- ``health_port`` serves ``grpc.health.v1.Health`` alone on a second, plaintext port, for probes
  that cannot do TLS (Kubernetes' native gRPC probes cannot).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from hardscore_server.config import ConfigError, ServerConfig, valid_token
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.errors import ControlDenied, ModelLoadFailed

log = logging.getLogger(__name__)

EXEMPT_SERVICES = frozenset({"grpc.health.v1.Health"})
"""Services callable without a token (health checking)."""

AUTHORIZATION = "authorization"
TOKEN_FILE_CHECK_INTERVAL_S = 1.0
CHALLENGE = (("www-authenticate", 'Bearer realm="hardscore"'),)

MISSING = ("missing bearer token: send the metadata 'authorization: Bearer <token>'")
MALFORMED = "malformed authorization metadata: expected 'Bearer <token>'"
INVALID = "invalid bearer token"


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name} {path!r}: cannot read: {exc.strerror or exc}") from None


def _encrypted_key() -> bytes:
    raise ConfigError("tls_key_file is encrypted: give the key unencrypted and protect the file "
                      "(permissions, a Kubernetes Secret)")


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC port from the configured PEM files; None without TLS."""
    if not config.tls_cert_file:
        return None
    cert = _read("tls_cert_file", config.tls_cert_file)
    key = _read("tls_key_file", config.tls_key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:  # OpenSSL checks what gRPC would only find at the first handshake
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file, password=_encrypted_key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert_file {config.tls_cert_file!r} / tls_key_file {config.tls_key_file!r}: "
            f"not a PEM certificate chain and its matching private key ({exc.reason or exc})"
        ) from None
    client_ca = None
    if config.tls_client_ca_file:
        client_ca = _read("tls_client_ca_file", config.tls_client_ca_file)
        try:
            context.load_verify_locations(cafile=config.tls_client_ca_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls_client_ca_file {config.tls_client_ca_file!r}: not a PEM CA "
                              f"bundle ({exc.reason or exc})") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def read_token_file(path: str) -> list[str]:
    """Tokens of a token file: one per line, surrounding blanks stripped, ``#`` comments skipped.

    Raises ConfigError naming the file (and line) without ever quoting a token.
    """
    try:
        text = Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"auth_tokens_file {path!r}: tokens must be ASCII") from None
    except OSError as exc:
        raise ConfigError(f"auth_tokens_file {path!r}: cannot read: {exc.strerror or exc}") \
            from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not valid_token(token):
            raise ConfigError(f"auth_tokens_file {path!r} line {number}: a token must be printable "
                              "ASCII without spaces or commas")
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"auth_tokens_file {path!r} holds no token")
    return tokens


class TokenStore:
    """The accepted bearer tokens (as digests): from the environment and a reloadable file."""

    def __init__(
        self, env_tokens: Sequence[str] = (), file: str = "",
        check_interval_s: float = TOKEN_FILE_CHECK_INTERVAL_S,
    ) -> None:
        self._env = [_digest(t) for t in env_tokens]
        self._file = file
        self._check_interval_s = check_interval_s
        self._file_digests: list[bytes] = []
        self._file_key: tuple[int, int, int] | None = None
        self._next_check = 0.0
        if file:
            self._file_key = self._stat()
            self._file_digests = [_digest(t) for t in read_token_file(file)]

    @property
    def enabled(self) -> bool:
        return bool(self._env) or bool(self._file)

    def __len__(self) -> int:
        return len(self._env) + len(self._file_digests)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self._file)  # follows symlinks: Kubernetes swaps a ..data link on update
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if not self._file or now < self._next_check:
            return
        self._next_check = now + self._check_interval_s
        try:
            key = self._stat()
            if key == self._file_key:
                return
            digests = [_digest(t) for t in read_token_file(self._file)]
        except (OSError, ConfigError) as exc:
            log.error("auth_tokens_file: keeping the previous %d token(s): %s",
                      len(self._file_digests), exc)
            return
        self._file_key = key
        self._file_digests = digests
        log.info("auth_tokens_file %s re-read: %d token(s)", self._file, len(digests))

    def accepts(self, token: str | bytes) -> bool:
        """True if ``token`` is one of the tokens; constant time in the token's content."""
        self._maybe_reload()
        candidate = _digest(token)
        found = False
        for known in (*self._env, *self._file_digests):
            found |= hmac.compare_digest(candidate, known)
        return found


def check_authorization(metadata: Sequence[tuple[str, Any]] | None, tokens: TokenStore) -> str:
    """'' when ``metadata`` carries an accepted bearer token, else why not (the status detail)."""
    values = [value for key, value in (metadata or ()) if key == AUTHORIZATION]
    if not values:
        return MISSING
    if len(values) > 1:
        return MALFORMED + " (sent more than once)"
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return MALFORMED
    return "" if tokens.accepts(token) else INVALID


def _service_and_method(path: str | bytes) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method'); ('', '') for anything else."""
    text = path.decode("latin-1") if isinstance(path, bytes) else path or ""
    parts = text.strip("/").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else ("", "")


def _rejection(detail: str) -> grpc.RpcMethodHandler:
    """A handler failing the call with UNAUTHENTICATED before reading any request message.

    Stream-stream without (de)serialisers: on the wire every call is a stream, so it answers
    unary and streaming calls alike, and no request byte is parsed for an unauthenticated caller.
    """

    async def reject(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail, trailing_metadata=CHALLENGE)

    return grpc.stream_stream_rpc_method_handler(reject)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with an accepted bearer token (health checks exempt)."""

    def __init__(self, tokens: TokenStore, metrics: ServerMetrics | None = None) -> None:
        self._tokens = tokens
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        service, method = _service_and_method(handler_call_details.method)
        if service in EXEMPT_SERVICES:
            return await continuation(handler_call_details)
        detail = check_authorization(
            handler_call_details.invocation_metadata,  # type: ignore[attr-defined]
            self._tokens)
        if not detail:
            return await continuation(handler_call_details)
        if self._metrics is not None:
            # only real method names as label values: unknown paths must not grow the series
            known = await continuation(handler_call_details) is not None
            self._metrics.requests.labels(method if known else "unknown",
                                          grpc.StatusCode.UNAUTHENTICATED.name).inc()
        return _rejection(detail)


class ServerSecurity:
    """What the configuration asks of the gRPC port: TLS credentials and/or bearer tokens."""

    def __init__(self, config: ServerConfig) -> None:
        self.credentials = server_credentials(config)
        self.mutual_tls = bool(config.tls_client_ca_file)
        self.tokens = TokenStore(config.auth_tokens, config.auth_tokens_file)

    def interceptors(self, metrics: ServerMetrics | None) -> list[grpc.aio.ServerInterceptor]:
        return [BearerTokenInterceptor(self.tokens, metrics)] if self.tokens.enabled else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Binds ``address`` with TLS when configured; returns the port (0 = failed, e.g. the
        port is in use: grpcio raises RuntimeError for that since 1.64, returned 0 before)."""
        try:
            if self.credentials is None:
                return server.add_insecure_port(address)
            return server.add_secure_port(address, self.credentials)
        except RuntimeError:
            return 0

    def describe(self) -> str:
        """For the start-up log line: 'plaintext', 'TLS' or 'mutual TLS', and token auth."""
        transport = "mutual TLS" if self.mutual_tls else "TLS" if self.credentials else "plaintext"
        auth = f"bearer tokens ({len(self.tokens)})" if self.tokens.enabled else "no auth"
        return f"{transport}, {auth}"


CONTROL_HEADER = "hardscore-control-token"
"""The header (gRPC metadata, HTTP header) carrying a model control token."""


class ControlGate:
    """Who may load and unload models (docs/security.md, "Model control"): nobody unless
    model_control_mode is explicit; then the holders of a control token when any is configured,
    else anyone who reaches the port (loopback only: config.py)."""

    def __init__(self, config: ServerConfig) -> None:
        self.mode = config.model_control_mode
        self.tokens = TokenStore(config.repository_control_tokens,
                                 config.repository_control_tokens_file)

    def check(self, headers: Sequence[tuple[str, Any]] | None, what: str) -> None:
        """Raises ModelLoadFailed when control is off, ControlDenied without an accepted control
        token; ``headers`` are the call's (lower-case keys)."""
        if self.mode != "explicit":
            raise ModelLoadFailed(
                f"{what} is off: model_control_mode is {self.mode} (explicit allows it)")
        if not self.tokens.enabled:
            return
        values = [v for k, v in (headers or ()) if k.lower() == CONTROL_HEADER]
        if len(values) != 1:
            raise ControlDenied(f"{what} needs a control token: send the header "
                                f"'{CONTROL_HEADER}: <token>' (once)")
        value = values[0]
        token = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip()
        if not token or not self.tokens.accepts(token):
            raise ControlDenied(f"{what}: invalid control token")
