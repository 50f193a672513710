"""The /metrics HTTP endpoint: Prometheus exposition at ``/metrics`` only, optionally over TLS.

``prometheus_client``'s own server answers every path with the metrics (a mistaken HTTP probe
always passes) and completes TLS handshakes in its accepting thread (one client that stalls
mid-handshake blocks every scrape). This one serves the same exposition on ``/metrics`` and 404
elsewhere, handshakes in the per-connection thread, and gives each connection
``CONNECTION_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from hardscore_server.config import ConfigError, ServerConfig

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
CONNECTION_TIMEOUT_S = 10.0
"""Longest a scrape connection may stay idle (handshake, request) before it is closed."""


@dataclass(frozen=True)
class MetricsTLS:
    """PEM files of the HTTPS metrics port; with ``client_ca_file``, scrapers must present a
    certificate that CA signed."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    def context(self) -> ssl.SSLContext:
        """The server-side TLS context (TLS 1.2 or newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            context.load_verify_locations(cafile=self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def metrics_tls(config: ServerConfig) -> MetricsTLS | None:
    """The metrics port's TLS settings, checked by loading them; None for plain HTTP.

    Raises ConfigError naming the settings when the files cannot be used.
    """
    if not config.metrics_tls_cert_file:
        return None
    tls = MetricsTLS(config.metrics_tls_cert_file, config.metrics_tls_key_file,
                     config.metrics_tls_client_ca_file)
    try:
        tls.context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "metrics_tls_cert_file, metrics_tls_key_file or metrics_tls_client_ca_file cannot "
            f"be used: {exc}") from None
    return tls


class _Handler(WSGIRequestHandler):
    """Completes the TLS handshake in the connection's own thread; logs nothing per request."""

    timeout = CONNECTION_TIMEOUT_S

    def setup(self) -> None:
        super().setup()  # applies the timeout to the connection
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    """One thread per connection (daemon threads: none outlives the server)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake (plain HTTP on the TLS port, no or an untrusted client
        # certificate), a reset or a timeout: the client's problem, not a server error.
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


def only_metrics(
    app: Callable[..., Iterable[bytes]],
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """``app`` on ``/metrics`` (HEAD answered as GET without the body, as load balancers and
    uptime checks ask); 404 Not Found on every other path."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == METRICS_PATH:
            if environ.get("REQUEST_METHOD") == "HEAD":
                for _ in app({**environ, "REQUEST_METHOD": "GET"}, start_response):
                    pass  # the same status and headers, no body
                return []
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found: metrics are served at {METRICS_PATH}\n".encode()]

    return serve


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, tls: MetricsTLS | None = None
) -> MetricsHTTPServer:
    """Serves ``registry`` at http(s)://host:port/metrics in a daemon thread; ``port`` 0 picks
    a free one (``server.server_address[1]``). Raises OSError when it cannot bind."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]

    class Server(MetricsHTTPServer):
        address_family = family

    httpd = make_server(host, port, only_metrics(make_wsgi_app(registry)), Server,
                        handler_class=_Handler)
    if tls is not None:
        httpd.socket = tls.context().wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd


class MetricsEndpoint:
    """The /metrics endpoint of one registry, in a daemon thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._http: MetricsHTTPServer | None = None

    def start(self, host: str, port: int, tls: MetricsTLS | None = None) -> int:
        """Binds ``host:port`` (0 = a free port; HTTPS with ``tls``); returns the bound port."""
        self._http = start_metrics_server(host, port, self._registry, tls)
        return int(self._http.server_address[1])

    def close(self) -> None:
        """Stops the endpoint and frees its port (no-op when it was never started)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
