"""Why a channel does not connect: a short probe of the address with the standard library
(name resolution, TCP, HTTP/1.x, TLS with and without verification, the HTTP/2 preface), each
step bounded by ``PROBE_STEP_S``, turned into ``ConnectionFailed`` with the likely cause and
fix. Also ``TLSConfig``, the channel's TLS settings the probe repeats.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hardscore_client.errors import ConnectionFailed

PROBE_STEP_S = 2.5
"""Longest single step of the diagnosis probe, seconds (the probe takes a few steps)."""
PROBE_BOUND_S = 10 * PROBE_STEP_S
"""More than the longest a diagnosis can take, seconds."""
GRPC_PORT, REST_PORT, METRICS_PORT = 8001, 8000, 8002
"""The server's default ports (gRPC, KServe V2 REST, metrics)."""
DEFAULT_TARGET_PORT = 443
"""The port gRPC uses for a target without one."""

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
                    "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL")
_HOSTNAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH




@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel: PEM bytes of the CA roots, and for mutual TLS a key and chain."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name_override: str | None = None

    @classmethod
    def from_files(
        cls, ca: str | None = None, cert: str | None = None, key: str | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """From PEM files: ``ca`` (None = system roots), ``cert`` + ``key`` for mutual TLS."""
        if (cert is None) != (key is None):
            raise ValueError("a client certificate and its key go together (both or neither)")

        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(key), read(cert), server_name)



def split_target(target: str) -> tuple[str, int] | None:
    """(host, port) of a gRPC target ("host:port", "[v6]:port", "dns:///host:port",
    "ipv4:a.b.c.d:port"); None for those the probe cannot follow (unix sockets, bad ports)."""
    rest = target
    if rest.startswith("dns:"):
        rest = rest[4:]
        if rest.startswith("//"):  # dns://authority/host:port
            rest = rest[2:].partition("/")[2]
    elif rest.startswith(("ipv4:", "ipv6:")):
        rest = rest[5:].split(",")[0]
    elif rest.partition(":")[0] in ("unix", "unix-abstract", "vsock"):
        return None
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:  # no port, or a bare IPv6 address
        host, port = rest, ""
    try:
        number = int(port) if port else DEFAULT_TARGET_PORT
    except ValueError:
        return None
    return (host, number) if host and 0 < number < 65536 else None


def connection_failed(target: str, tls: TLSConfig | None, waited: float) -> ConnectionFailed:
    """The ConnectionFailed for a channel to ``target`` that did not connect within ``waited``
    seconds, its cause found by a probe of a few steps of at most PROBE_STEP_S seconds each."""
    address = split_target(target)
    if address is None:
        return ConnectionFailed(
            f"cannot connect to {target}: the channel did not become ready within {waited:g} s",
            target, "unknown")
    cause, detail = _Probe(*address, tls, waited).run()
    return ConnectionFailed(f"cannot connect to {target}: {detail}", target, cause)


class _Probe:
    """One diagnosis of ``host``:``port``; run() gives (cause token, one-line explanation)."""

    def __init__(self, host: str, port: int, tls: TLSConfig | None, waited: float) -> None:
        self.host, self.port, self.tls, self.waited = host, port, tls, waited
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def run(self) -> tuple[str, str]:
        unresolved = self._resolve()
        if unresolved:
            return "resolve", unresolved
        try:
            socket.create_connection((self.host, self.port), PROBE_STEP_S).close()
        except ConnectionRefusedError:
            return "refused", (f"nothing listens on {self.where} (is the server running? the "
                               f"default gRPC port is {GRPC_PORT})")
        except TimeoutError:
            return "timeout", (f"no answer from {self.where} within {self.waited:g} s "
                               "(firewall, wrong host?)")
        except OSError as exc:
            return "connect", f"cannot open a connection to {self.where}: {_reason(exc)}"
        return self._with_tls() if self.tls is not None else self._plaintext()

    def _resolve(self) -> str | None:
        """The explanation when the host name does not resolve within PROBE_STEP_S, else None."""
        outcome: list[BaseException | None] = []

        def lookup() -> None:
            try:
                socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                outcome.append(None)
            except OSError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout
        worker.start()
        worker.join(PROBE_STEP_S)
        if not outcome:
            return f"cannot resolve host {self.host} within {PROBE_STEP_S:g} s (DNS unreachable?)"
        error = outcome[0]
        return None if error is None else f"cannot resolve host {self.host} ({_reason(error)})"

    def _http1_line(self) -> str:
        return (f"{self.where} answers HTTP/1.x, not gRPC: this looks like the server's REST "
                f"({REST_PORT}) or metrics ({METRICS_PORT}) port; the gRPC port is {GRPC_PORT} "
                "by default")

    def _plaintext(self) -> tuple[str, str]:
        if _answers_http1(self._exchange(self._http1_request())):
            return "http1", self._http1_line()
        try:
            with self._tls_socket(ssl.CERT_NONE) as sock:
                alpn = sock.selected_alpn_protocol()
                https = alpn != "h2" and _answers_http1(self._exchange(self._http1_request(),
                                                                       sock))
        except (ssl.SSLError, OSError):
            pass
        else:
            if https:
                return "http1", self._http1_line().replace("HTTP/1.x", "HTTPS (HTTP/1.x)")
            return "tls_required", (f"the server at {self.where} uses TLS: pass --tls (and "
                                    "--tls-ca CA.pem when a private CA signed its certificate)")
        return self._unexplained()

    def _with_tls(self) -> tuple[str, str]:
        assert self.tls is not None
        name = self.tls.server_name_override or self.host
        try:
            with self._tls_socket(ssl.CERT_REQUIRED) as sock:
                if sock.selected_alpn_protocol() != "h2":
                    if _answers_http1(self._exchange(self._http1_request(), sock)):
                        return "http1", self._http1_line().replace("HTTP/1.x",
                                                                   "HTTPS (HTTP/1.x)")
                    return self._unexplained()
                try:
                    reply = self._exchange(_H2_PREFACE, sock, raise_ssl=True)
                except ssl.SSLError as exc:  # an alert after the handshake: a client certificate
                    fix = ("pass --tls-cert and --tls-key" if self.tls.certificate_chain is None
                           else "its CA does not trust --tls-cert")
                    return "client_certificate", (
                        f"the server at {self.where} refused this client's TLS connection "
                        f"({_reason(exc)}): {fix}")
                if _answers_h2(reply):
                    return "unknown", (
                        f"{self.where} answers HTTP/2 over TLS but the gRPC channel did not "
                        f"become ready within {self.waited:g} s (server overloaded?)")
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or _reason(exc)
            if exc.verify_code in _HOSTNAME_MISMATCH:
                return "hostname", (
                    f"the server's certificate is not valid for the name {name!r} ({reason}): "
                    "pass --tls-server-name with a name the certificate holds")
            return "untrusted", (
                f"the server's certificate is not trusted by this CA ({reason}): pass --tls-ca "
                "with the CA that signed it")
        except (ssl.SSLError, OSError) as exc:
            if _answers_http1(self._exchange(self._http1_request())):
                return "http1", self._http1_line()
            if _answers_h2(self._exchange(_H2_PREFACE)) or any(
                    r in str(exc).upper() for r in _NOT_TLS_REASONS):
                return "not_tls", (f"the server at {self.where} does not use TLS: drop --tls "
                                   f"(TLS handshake: {_reason(exc)})")
            return "tls", f"the TLS handshake with {self.where} failed: {_reason(exc)}"
        return self._unexplained()

    def _unexplained(self) -> tuple[str, str]:
        if _answers_h2(self._exchange(_H2_PREFACE)):
            return "unknown", (f"{self.where} answers HTTP/2 but the gRPC channel did not become "
                               f"ready within {self.waited:g} s (server overloaded?)")
        return "unknown", (f"{self.where} accepts connections but does not answer like a gRPC "
                           f"server within {self.waited:g} s (another service on that port?)")

    def _http1_request(self) -> bytes:
        return f"GET / HTTP/1.1\r\nHost: {self.where}\r\nConnection: close\r\n\r\n".encode()

    @contextlib.contextmanager
    def _tls_socket(self, verify: ssl.VerifyMode) -> Iterator[ssl.SSLSocket]:
        """A TLS connection (ALPN h2, http/1.1) checking the certificate when ``verify`` is
        CERT_REQUIRED (against the configured CA, or the system's), with the client's
        certificate when one is configured."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.set_alpn_protocols(["h2", "http/1.1"])
        tls = self.tls
        if verify == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif tls is not None and tls.root_certificates:
            context.load_verify_locations(cadata=tls.root_certificates.decode())
        else:
            context.load_default_certs()
        if tls is not None and tls.certificate_chain and tls.private_key:
            with tempfile.TemporaryDirectory() as folder:  # ssl loads key pairs from files only
                cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
                cert.write_bytes(tls.certificate_chain)
                key.write_bytes(tls.private_key)
                context.load_cert_chain(cert, key)
        name = (tls.server_name_override if tls is not None else None) or self.host
        raw = socket.create_connection((self.host, self.port), PROBE_STEP_S)
        try:
            sock = context.wrap_socket(raw, server_hostname=name)
        except BaseException:
            raw.close()
            raise
        with sock:
            yield sock

    def _exchange(self, data: bytes, sock: socket.socket | None = None,
                  raise_ssl: bool = False) -> bytes:
        """Sends ``data`` (on ``sock``, else on a new plain connection) and returns the first
        bytes of the answer (b"" when none comes within PROBE_STEP_S or the peer closes)."""
        try:
            with contextlib.ExitStack() as stack:
                if sock is None:
                    sock = stack.enter_context(
                        socket.create_connection((self.host, self.port), PROBE_STEP_S))
                sock.settimeout(PROBE_STEP_S)
                sock.sendall(data)
                return sock.recv(64)
        except ssl.SSLError:
            if raise_ssl:
                raise
            return b""
        except OSError:
            return b""


def _answers_http1(reply: bytes) -> bool:
    return reply.startswith(b"HTTP/1.")


def _answers_h2(reply: bytes) -> bool:
    """Whether ``reply`` starts with an HTTP/2 SETTINGS frame (a plaintext HTTP/2 server)."""
    return len(reply) >= 9 and reply[3] == _H2_SETTINGS and reply[5:9] == b"\x00\x00\x00\x00"


def _reason(exc: BaseException) -> str:
    """A short reason: the ssl library's reason code, or the OS error text."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
