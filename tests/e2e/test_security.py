"""TLS, mutual TLS and bearer-token auth on real servers, with certificates made in the test run.

Every method of every service on the port (discovered from the descriptors, so a new method is
covered without editing this file) answers UNAUTHENTICATED without a valid token, health checks
excepted; after each refused call the next good call is served.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as oip  # wire-identical; see test_inference_protocol

from hardscore_client import ScoringClient, TLSConfig
from hardscore_server.config import ConfigError, ServerConfig, load_config
from hardscore_server.transport.security import (
    INVALID,
    MALFORMED,
    MISSING,
    ServerSecurity,
    TokenStore,
    check_authorization,
)
from hardscore_wire import scoring_pb2 as pb

from conftest import metric, scrape, served_oip_methods
from pki import Pki, make_pki
from server_process import ServerProcess, start_server

FILE_TOKEN = "file-token-0123456789abcdef"
ENV_TOKEN = "env-token-fedcba9876543210"
LOGITS = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], dtype=np.float32)


# -- a throwaway PKI (tests/pki.py) ------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- servers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_file(pki: Pki) -> Path:
    path = pki.dir / "tokens"
    path.write_text(f"# tokens of the test clients\n\n  {FILE_TOKEN}  \n")
    return path


@pytest.fixture(scope="module")
def secure_server(pki: Pki, token_file: Path) -> Iterator[ServerProcess]:
    """The embedded model over TLS, bearer tokens from a file and the environment."""
    server = start_server(
        ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--auth-tokens-file", str(token_file), "--health-port", "0"],
        env={"HARDSCORE_AUTH_TOKENS": f"{ENV_TOKEN}, another-token-xyz"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[ServerProcess]:
    server = start_server(
        ["--no-model", "--tls-cert-file", str(pki.server_cert), "--tls-key-file",
         str(pki.server_key), "--tls-client-ca-file", str(pki.ca)])
    yield server
    server.stop()


def _channel(server: ServerProcess, tls: TLSConfig) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key,
                                         tls.certificate_chain)
    options = [("grpc.ssl_target_name_override", tls.server_name_override)] if (
        tls.server_name_override) else []
    return grpc.secure_channel(server.target, creds, options=options)


def _good_call(server: ServerProcess, pki: Pki, token: str = FILE_TOKEN) -> None:
    with ScoringClient(server.target, tls=pki.tls(), token=token, timeout=20) as client:
        result = client.score_logits(LOGITS, [0, 2])
    assert result.predicted_class.tolist() == [0, 1]


def _health_port(server: ServerProcess) -> int:
    line = next(x for x in server.lines if "health checks (plaintext" in x)
    return int(line.rsplit(":", 1)[1])


# -- every method of every service -----------------------------------------------------------

def _methods() -> list[tuple[str, Any]]:
    services = [
        pb.DESCRIPTOR.services_by_name["ScoringService"],
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    served = served_oip_methods()
    return [(f"{s.name}.{m.name}", m) for s in services for m in s.methods
            if s.name != "GRPCInferenceService" or m.name in served]


METHODS = dict(_methods())


def _invoke(channel: grpc.Channel, method: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    """Calls ``method`` (a MethodDescriptor) with an empty request of its input type."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    kinds: dict[tuple[bool, bool], Callable[..., Any]] = {
        (False, False): channel.unary_unary, (False, True): channel.unary_stream,
        (True, False): channel.stream_unary, (True, True): channel.stream_stream,
    }
    call = kinds[(method.client_streaming, method.server_streaming)](
        path, request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString)
    request = request_class()
    if method.name == "ServerReflectionInfo":
        request = reflection_pb2.ServerReflectionRequest(list_services="")
    argument = iter([request]) if method.client_streaming else request
    reply = call(argument, metadata=metadata, timeout=20)
    return list(reply) if method.server_streaming else reply


BAD_AUTH = {
    "missing": ((), MISSING),
    "wrong token": ((("authorization", "Bearer not-a-token"),), INVALID),
    "prefix of a token": ((("authorization", f"Bearer {FILE_TOKEN[:-1]}"),), INVALID),
    "token plus a character": ((("authorization", f"Bearer {FILE_TOKEN}x"),), INVALID),
    "basic scheme": ((("authorization", f"Basic {FILE_TOKEN}"),), MALFORMED),
    "no token": ((("authorization", "Bearer "),), MALFORMED),
    "twice": ((("authorization", f"Bearer {FILE_TOKEN}"),
               ("authorization", f"Bearer {FILE_TOKEN}")), MALFORMED),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_refuses_calls_without_a_valid_token(name, secure_server, pki):
    method = METHODS[name]
    with _channel(secure_server, pki.tls()) as channel:
        for case, (metadata, detail) in BAD_AUTH.items():
            with pytest.raises(grpc.RpcError) as info:
                _invoke(channel, method, metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
            assert info.value.details().startswith(detail), case
            trailers = dict(info.value.trailing_metadata() or ())
            assert trailers.get("www-authenticate") == 'Bearer realm="hardscore"'
        # with a token the call reaches the servicer: answered, or refused for its content only
        for token in (FILE_TOKEN, ENV_TOKEN):
            try:
                _invoke(channel, method, (("authorization", f"Bearer {token}"),))
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                      grpc.StatusCode.NOT_FOUND), (exc.code(), exc.details())
    _good_call(secure_server, pki)


def test_scheme_is_case_insensitive_and_lowercase_bearer_works(secure_server, pki):
    with ScoringClient(secure_server.target, tls=pki.tls(), timeout=20,
                       metadata=[("authorization", f"bearer {ENV_TOKEN}")]) as client:
        assert client.get_model_info().name == "digits-resnet"


def test_tls_client_with_token_scores_logits_and_images(secure_server, pki):
    from hardscore_server.pipeline.preprocess import encode_png
    from hardscore_server.tools.digits import heldout_split

    _, _, images, labels = heldout_split()
    with ScoringClient(secure_server.target, tls=pki.tls(), token=ENV_TOKEN,
                       timeout=30) as client:
        client.wait_ready(10)
        result = client.score_images([encode_png(img) for img in images[:8]])
        assert (result.predicted_class == labels[:8]).mean() >= 0.75
        assert len(client.score_logits(LOGITS)) == 2


def test_client_without_token_gets_unauthenticated(secure_server, pki):
    with ScoringClient(secure_server.target, tls=pki.tls(), timeout=20) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.score_logits(LOGITS)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == MISSING
        client.wait_ready(10)  # health checks are exempt
    _good_call(secure_server, pki)


def test_health_is_exempt_on_the_tls_port_and_served_alone_on_the_health_port(
        secure_server, pki):
    with _channel(secure_server, pki.tls()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="hardscore.v1.ScoringService"),
                           timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
    with grpc.insecure_channel(f"127.0.0.1:{_health_port(secure_server)}") as plain:
        stub = health_pb2_grpc.HealthStub(plain)
        for service in ("", "hardscore.v1.ScoringService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # nothing else is served there, token or not
        with pytest.raises(grpc.RpcError) as info:
            _invoke(plain, METHODS["ScoringService.GetModelInfo"],
                    (("authorization", f"Bearer {FILE_TOKEN}"),))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_needs_the_token_and_lists_services_with_it(secure_server, pki):
    with _channel(secure_server, pki.tls()) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = stub.ServerReflectionInfo(iter([request]), timeout=10,
                                            metadata=(("authorization", f"Bearer {ENV_TOKEN}"),))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"hardscore.v1.ScoringService", "inference.GRPCInferenceService",
            "grpc.health.v1.Health"} <= names


def test_plaintext_and_untrusted_clients_cannot_connect_to_the_tls_port(secure_server, pki):
    attempts = {
        "plaintext": grpc.insecure_channel(secure_server.target),
        "unknown CA": _channel(secure_server, pki.tls(ca=pki.rogue_ca)),
        "wrong server name": _channel(secure_server, pki.tls(name="scoring.example.com")),
    }
    for case, channel in attempts.items():
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, case
    _good_call(secure_server, pki)


def test_refused_calls_are_counted_by_method(secure_server, pki):
    before = scrape(secure_server.metrics_url)
    with _channel(secure_server, pki.tls()) as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                _invoke(channel, METHODS["ScoringService.ScoreLogits"], ())
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/no.Such/Method")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = scrape(secure_server.metrics_url)

    def delta(method: str) -> float:
        labels = {"method": method, "code": "UNAUTHENTICATED"}
        return (metric(after, "hardscore_requests_total", **labels)
                - metric(before, "hardscore_requests_total", **labels))

    assert delta("ScoreLogits") == 3
    assert delta("unknown") == 1  # unknown paths do not become label values


def test_token_file_is_reread_when_it_changes(secure_server, pki, token_file):
    original = token_file.read_text()
    try:
        token_file.write_text("rotated-token-0000000000\n")
        deadline = time.monotonic() + 15
        while True:  # the file is checked at most once a second
            try:
                _good_call(secure_server, pki, "rotated-token-0000000000")
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "new token never accepted"
                time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as info:
            _good_call(secure_server, pki, FILE_TOKEN)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        _good_call(secure_server, pki, ENV_TOKEN)  # environment tokens stay
        token_file.write_text("# emptied by mistake\n")  # keeps the previous tokens
        time.sleep(1.5)
        _good_call(secure_server, pki, "rotated-token-0000000000")
        assert any("keeping the previous 1 token(s)" in line for line in secure_server.lines)
    finally:
        token_file.write_text(original)
    deadline = time.monotonic() + 15
    while True:
        try:
            _good_call(secure_server, pki, FILE_TOKEN)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert not any(FILE_TOKEN in line or ENV_TOKEN in line for line in secure_server.lines)


# -- mutual TLS ----------------------------------------------------------------------------------

def test_mutual_tls_accepts_only_clients_with_a_certificate_from_the_ca(mtls_server, pki):
    assert "(mutual TLS, no auth)" in mtls_server.output()
    for case in ("", "rogue"):
        with _channel(mtls_server, pki.tls(client=case)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, case or "no certificate"
        with ScoringClient(mtls_server.target, tls=pki.tls(client="good"), timeout=20) as client:
            assert client.score_logits(LOGITS).predicted_class.tolist() == [0, 1]


def test_cli_speaks_tls_and_tokens(secure_server, pki):
    def info(*extra: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"HARDSCORE_TOKEN": token} if token else {}
        import os

        return subprocess.run(
            [sys.executable, "-m", "hardscore_client.cli", "info", "--server",
             secure_server.target, "--timeout", "20", "--tls-ca", str(pki.ca), *extra],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "HARDSCORE_TOKEN"} | env)

    ok = info("--token", FILE_TOKEN)
    assert ok.returncode == 0, ok.stderr
    assert 'name: "digits-resnet"' in ok.stdout
    assert info(token=ENV_TOKEN).returncode == 0
    refused = info()
    assert refused.returncode == 1
    assert f"hardscore: UNAUTHENTICATED: {MISSING}" in refused.stderr


# -- configuration -------------------------------------------------------------------------------

def _config(**env: str) -> ServerConfig:
    return load_config(environ={f"HARDSCORE_{k.upper()}": v for k, v in env.items()})


def test_config_errors_name_the_setting(pki, tmp_path):
    cert, key, ca = str(pki.server_cert), str(pki.server_key), str(pki.ca)
    cases = {
        "tls_cert_file and tls_key_file must be set together": {"tls_cert_file": cert},
        "tls_cert_file and tls_key_file must be set together ": {"tls_key_file": key},
        "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file": {
            "tls_client_ca_file": ca},
        f"tls_key_file '{tmp_path}/nope.key' is not a file": {
            "tls_cert_file": cert, "tls_key_file": str(tmp_path / "nope.key")},
        f"auth_tokens_file '{tmp_path}' is not a file": {"auth_tokens_file": str(tmp_path)},
        "auth_tokens: a token must be 1 or more printable ASCII characters": {
            "auth_tokens": "good-token,bad token"},
        "health_port must be in -1..65535, got 70000": {"health_port": "70000"},
    }
    for message, env in cases.items():
        with pytest.raises(ConfigError) as info:
            _config(**env)
        assert message.strip() in str(info.value)
        assert "bad token" not in str(info.value)
    config = _config(auth_tokens=" a-token , , b-token ")
    assert config.auth_tokens == ("a-token", "b-token")
    assert "a-token" not in repr(config)


def test_tokens_are_not_taken_from_files_or_flags(tmp_path):
    toml = tmp_path / "hardscore.toml"
    toml.write_text('auth_tokens = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(environ={"HARDSCORE_CONFIG": str(toml)})
    assert "auth_tokens is read only from the environment (HARDSCORE_AUTH_TOKENS)" in str(
        info.value)
    import argparse

    from hardscore_server.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {s for action in parser._actions for s in action.option_strings}
    assert "--auth-tokens-file" in flags and "--auth-tokens" not in flags


def test_bad_tls_and_token_files_are_configuration_errors(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(
        pki.server_key.read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    empty, bad = tmp_path / "empty-tokens", tmp_path / "bad-tokens"
    empty.write_text("# nothing yet\n\n")
    bad.write_text("ok-token\nsecret with spaces\n")
    cert, key = str(pki.server_cert), str(pki.server_key)
    cases = {
        "does not match": ({"tls_cert_file": cert, "tls_key_file": str(pki.other_key)},
                           "not a PEM certificate chain and its matching private key"),
        "garbage cert": ({"tls_cert_file": str(garbage), "tls_key_file": key},
                         "not a PEM certificate chain and its matching private key"),
        "encrypted key": ({"tls_cert_file": cert, "tls_key_file": str(encrypted)},
                          "tls_key_file is encrypted"),
        "garbage CA": ({"tls_cert_file": cert, "tls_key_file": key,
                        "tls_client_ca_file": str(garbage)}, "not a PEM CA bundle"),
        "empty tokens": ({"auth_tokens_file": str(empty)}, "holds no token"),
        "bad token line": ({"auth_tokens_file": str(bad)}, "line 2: a token must be printable"),
    }
    for case, (env, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            ServerSecurity(_config(**env))
        assert message in str(info.value), case
        assert "secret" not in str(info.value)
    # as the server reports it: exit 2 before the model is loaded
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_server.main", "--port", "0", "--metrics-port", "-1",
         "--tls-cert-file", cert, "--tls-key-file", str(pki.other_key)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "hardscore-server: configuration error: tls_cert_file" in proc.stderr
    assert "model digits-resnet" not in proc.stderr


def test_token_checks():
    tokens = TokenStore(["alpha-token", "beta-token"])
    assert tokens.enabled and len(tokens) == 2
    assert tokens.accepts("beta-token") and tokens.accepts(b"alpha-token")
    for wrong in ("", "alpha", "alpha-token ", "ALPHA-TOKEN", "beta-tokenx", "gamma-token"):
        assert not tokens.accepts(wrong), wrong
    assert not TokenStore().enabled
    assert check_authorization([("authorization", "Bearer alpha-token")], tokens) == ""
    assert check_authorization([("authorization", "  Bearer   alpha-token ")], tokens) == ""
    assert check_authorization([("x-other", "1")], tokens) == MISSING
    assert check_authorization(None, tokens) == MISSING
    assert check_authorization([("authorization", "Token alpha-token")], tokens) == MALFORMED
    assert check_authorization([("authorization", b"Bearer beta-token")], tokens) == ""


# -- the REST port (KServe V2 over HTTP) ---------------------------------------------------------


def _https(server: ServerProcess, pki: Pki, path: str, token: str | None = None,
           body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki.ca))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://localhost:{server.http_port}{path}", data=body,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_rest_port_speaks_tls_and_needs_the_token_except_for_health(secure_server, pki):
    import json
    import urllib.error
    import urllib.request

    assert _https(secure_server, pki, "/v2/health/ready")[0] == 200  # exempt, as gRPC health
    assert _https(secure_server, pki, "/v2/health/live")[0] == 200
    infer = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                    "shape": [1, 3, 32, 32], "data": [0.0] * 3072}]}).encode()
    for path, body in [("/v2", None), ("/v2/models/digits-resnet/ready", None),
                       ("/v2/models/digits-resnet/infer", infer)]:
        for token, detail in [(None, MISSING), ("wrong-token", INVALID)]:
            status, headers, reply = _https(secure_server, pki, path, token, body)
            assert (status, json.loads(reply)) == (401, {"error": detail}), path
            assert headers["WWW-Authenticate"] == 'Bearer realm="hardscore"'
        status, _, reply = _https(secure_server, pki, path, FILE_TOKEN, body)
        assert status == 200, reply
    status, _, reply = _https(secure_server, pki, "/v2/models/digits-resnet/infer", ENV_TOKEN,
                              infer)
    assert json.loads(reply)["outputs"][0]["name"] == "logits"
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext to the TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{secure_server.http_port}/v2/health/live",
                               timeout=10)
