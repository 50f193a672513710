"""The metrics port over real HTTP: /metrics only (404 elsewhere), and HTTPS with client
certificates, with certificates made in the test run (tests/pki.py)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from hardscore_client import ScoringClient
from hardscore_server.config import ConfigError, ServerConfig, load_config
from hardscore_server.metrics import ServerMetrics
from hardscore_server.transport.metrics_endpoint import MetricsEndpoint, MetricsTLS, metrics_tls

from pki import Pki, make_pki
from server_process import ServerProcess, start_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ServerProcess]:
    server = start_server(["--no-model"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_metrics_server(pki: Pki) -> Iterator[ServerProcess]:
    """gRPC in plaintext, /metrics over HTTPS for scrapers with a certificate from the CA."""
    server = start_server(
        ["--no-model", "--metrics-tls-cert-file", str(pki.server_cert),
         "--metrics-tls-key-file", str(pki.server_key),
         "--metrics-tls-client-ca-file", str(pki.ca)])
    yield server
    server.stop()


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _refused(url: str, context: ssl.SSLContext | None = None) -> OSError:
    """The connection-level error of a GET that must get no HTTP answer at all."""
    with pytest.raises(OSError) as info:
        _get(url, context)
    assert not isinstance(info.value, urllib.error.HTTPError), info.value
    return info.value


def _scraper(pki: Pki, cert: str = "good") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert == "good":
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    elif cert == "rogue":
        context.load_cert_chain(str(pki.rogue_client_cert), str(pki.rogue_client_key))
    return context


def _score_one(server: ServerProcess) -> None:
    with ScoringClient(server.target) as client:
        assert len(client.score_logits(np.zeros((1, 3), dtype=np.float32))) == 1


def test_metrics_is_served_on_metrics_only(plain_server):
    base = f"http://127.0.0.1:{plain_server.metrics_port}"
    status, body = _get(base + "/metrics")
    assert status == 200 and "# TYPE hardscore_requests_total counter" in body
    for path in ("/", "/healthz", "/metrics/", "/metricsx", "/favicon.ico", "/other/metrics"):
        status, body = _get(base + path)
        assert (status, body) == (404, "not found: metrics are served at /metrics\n"), path
    assert _get(base + "/metrics?name[]=hardscore_requests_total")[0] == 200
    _score_one(plain_server)  # normal calls and scrapes go on
    status, body = _get(base + "/metrics")
    assert status == 200
    assert 'hardscore_requests_total{code="OK",method="ScoreLogits"} 1.0' in body


def test_https_metrics_need_a_client_certificate_from_the_ca(mtls_metrics_server, pki):
    port = mtls_metrics_server.metrics_port
    https = f"https://127.0.0.1:{port}/metrics"
    status, body = _get(https, _scraper(pki))
    assert status == 200 and "hardscore_requests_total" in body
    assert _get(f"https://127.0.0.1:{port}/other", _scraper(pki))[0] == 404
    _refused(f"http://127.0.0.1:{port}/metrics")  # plain HTTP on the TLS port
    _refused(https, _scraper(pki, cert="none"))  # no client certificate
    _refused(https, _scraper(pki, cert="rogue"))  # a certificate from another CA
    untrusting = ssl.create_default_context()  # the system roots: the server is not trusted
    untrusting.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert isinstance(_refused(https, untrusting).reason, ssl.SSLCertVerificationError)
    # a client that opens a connection and never handshakes holds no one else up
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert _get(https, _scraper(pki))[0] == 200
    _score_one(mtls_metrics_server)
    assert "Traceback" not in mtls_metrics_server.output()


def test_https_metrics_without_client_certificates(pki):
    endpoint = MetricsEndpoint(ServerMetrics().registry)
    port = endpoint.start("127.0.0.1", 0, MetricsTLS(str(pki.server_cert), str(pki.server_key)))
    try:
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        assert _get(f"https://127.0.0.1:{port}/metrics", anonymous)[0] == 200
        assert _get(f"https://127.0.0.1:{port}/", anonymous)[0] == 404
        _refused(f"http://127.0.0.1:{port}/metrics")
        # many concurrent scrapes, each on its own connection thread
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(
            _get(f"https://127.0.0.1:{port}/metrics", anonymous)[0])) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert statuses == [200] * 8
    finally:
        endpoint.close()


def test_metrics_tls_settings_are_checked(pki):
    cert, ca = str(pki.server_cert), str(pki.ca)

    def config(**env: str) -> ServerConfig:
        return load_config(environ={f"HARDSCORE_{k.upper()}": v for k, v in env.items()})

    cases = {
        "metrics_tls_cert_file and metrics_tls_key_file must be set together":
            {"metrics_tls_cert_file": cert},
        "metrics_tls_client_ca_file (client certificates) needs metrics_tls_cert_file":
            {"metrics_tls_client_ca_file": ca},
        "metrics_tls_key_file '/nonexistent.key' is not a file":
            {"metrics_tls_cert_file": cert, "metrics_tls_key_file": "/nonexistent.key"},
    }
    for message, env in cases.items():
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")
                           .replace(")", r"\)")):
            config(**env)
    assert metrics_tls(config()) is None
    with pytest.raises(ConfigError, match="metrics_tls_cert_file, metrics_tls_key_file or "
                       "metrics_tls_client_ca_file cannot be used"):
        metrics_tls(config(metrics_tls_cert_file=cert, metrics_tls_key_file=str(pki.other_key)))
    # as the server reports it: exit 2 before the model is loaded
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_server.main", "--port", "0", "--metrics-port", "0",
         "--metrics-tls-cert-file", cert, "--metrics-tls-key-file", str(pki.other_key)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "hardscore-server: configuration error: metrics_tls_cert_file" in proc.stderr
    assert "model digits-resnet" not in proc.stderr
