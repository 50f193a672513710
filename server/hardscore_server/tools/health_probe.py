"""One gRPC health check (``grpc.health.v1.Health/Check``) of a hardscore server, as a command.

    python -m hardscore_server.tools.health_probe [--server HOST:PORT] [--service NAME]
        [--timeout S] [--tls-ca-file F [--tls-cert-file F --tls-key-file F]
        [--tls-server-name NAME]]

It is the container's health check (the Dockerfile's HEALTHCHECK) and the Helm chart's exec
probe (probes.mode exec; over TLS when TLS is on). Exit status 0 when
the server answers SERVING, 1 otherwise (not serving, unreachable, timed out, TLS failure), with
the reason on stderr: 0 and 1 are the only codes Docker's HEALTHCHECK gives a meaning to.

The default server is 127.0.0.1 at the port the server itself was configured with: its
plaintext health-only port when that is on (so the check works whatever TLS the gRPC port
requires), else its gRPC port. The server is the container's PID 1 (``$HARDSCORE_SERVER_PID``
names another process) when that runs ``hardscore-server``: its flags, environment and
``--config`` file are read as the server reads them, so ``docker run IMAGE --port 9001`` is
checked on 9001. Otherwise ``$HARDSCORE_HEALTH_PORT``, else ``$HARDSCORE_PORT``, else 8001.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTHY = 0
UNHEALTHY = 1
DEFAULT_PORT = 8001


@dataclass(frozen=True)
class ProbeTLS:
    """TLS of the probe's channel: PEM bytes of the CA roots (None = the system's), for mutual
    TLS a key and chain, and the name expected in the server certificate (None = the host)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name_override: str | None = None


def server_arguments(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The flags of the ``hardscore-server`` this probe checks: the command line of PID 1 (or
    of ``$HARDSCORE_SERVER_PID``) after ``hardscore-server`` or ``-m hardscore_server.main``;
    None when that process is no hardscore server or cannot be read (not Linux, not a
    container)."""
    environ = os.environ if environ is None else environ
    pid = environ.get("HARDSCORE_SERVER_PID", "").strip() or "1"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
    for i, arg in enumerate(argv):
        if Path(arg).name == "hardscore-server" or arg == "hardscore_server.main":
            return [a for a in argv[i + 1:] if a]
    return None


def configured_target(server_args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """127.0.0.1 at the health port, else the gRPC port, that a server started with these flags
    and this environment (and its --config file) listens on; None when they cannot be read."""
    from hardscore_server.config import ConfigError, add_arguments, load_config

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_arguments(parser)
    try:
        args, _ = parser.parse_known_args(list(server_args))
        config = load_config(args, environ)
    except (argparse.ArgumentError, ConfigError, OSError, SystemExit):
        return None
    port = config.health_port if config.health_port > 0 else config.port
    return f"127.0.0.1:{port}" if port > 0 else None


def default_target(environ: Mapping[str, str] | None = None,
                   server_args: Sequence[str] | None = None) -> str:
    """The server of this container: ``127.0.0.1`` at the port its command line, environment
    and configuration file give (``server_args``: its flags, default read from PID 1), the
    plaintext health port first (it answers whatever TLS the gRPC port requires); else at
    ``HARDSCORE_HEALTH_PORT``, else ``HARDSCORE_PORT``, else 8001."""
    environ = os.environ if environ is None else environ
    if server_args is None:
        server_args = server_arguments(environ)
    if server_args is not None:
        target = configured_target(server_args, environ)
        if target is not None:
            return target
    health_port = environ.get("HARDSCORE_HEALTH_PORT", "").strip()
    if health_port.isdigit() and int(health_port) > 0:
        return f"127.0.0.1:{health_port}"
    port = environ.get("HARDSCORE_PORT", "").strip() or str(DEFAULT_PORT)
    return f"127.0.0.1:{port}"


def check(
    target: str, service: str = "", timeout: float = 3.0, tls: ProbeTLS | None = None
) -> str:
    """The serving status of ``service`` ("" = the whole server) as its enum name.

    Raises ``grpc.RpcError`` when the call fails (unreachable, deadline, TLS handshake).
    """
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        options: list[tuple[str, object]] = []
        if tls.server_name_override:
            options.append(("grpc.ssl_target_name_override", tls.server_name_override))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def tls_from_args(args: argparse.Namespace) -> ProbeTLS | None:
    """The TLS settings the flags ask for, or None for plaintext."""
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    if not (args.tls or args.tls_ca_file or args.tls_cert_file):
        return None
    return ProbeTLS(
        root_certificates=Path(args.tls_ca_file).read_bytes() if args.tls_ca_file else None,
        private_key=Path(args.tls_key_file).read_bytes() if args.tls_key_file else None,
        certificate_chain=Path(args.tls_cert_file).read_bytes() if args.tls_cert_file else None,
        server_name_override=args.tls_server_name or None,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The health check's flags (this module's ``main``; the Helm chart's exec probe sets them)."""
    parser.add_argument("--server", default=None,
                        help="HOST:PORT (default: 127.0.0.1 at the port PID 1's "
                             "hardscore-server was configured with, health port first; else "
                             "$HARDSCORE_HEALTH_PORT, else $HARDSCORE_PORT, else 8001)")
    parser.add_argument("--service", default="",
                        help="service to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    parser.add_argument("--tls", action="store_true",
                        help="use TLS with the system's CA roots")
    parser.add_argument("--tls-ca-file", help="PEM CA roots that verify the server (implies TLS)")
    parser.add_argument("--tls-cert-file", help="PEM client certificate chain (mutual TLS)")
    parser.add_argument("--tls-key-file", help="PEM client private key (mutual TLS)")
    parser.add_argument("--tls-server-name",
                        help="name expected in the server certificate (default: the host)")


def run(args: argparse.Namespace) -> int:
    """Runs the check the parsed flags describe; prints the outcome; returns the exit status."""
    target = args.server or default_target()
    try:
        tls = tls_from_args(args)
        status = check(target, args.service, args.timeout, tls)
    except (OSError, ValueError) as exc:
        print(f"health {target}: {exc}", file=sys.stderr)
        return UNHEALTHY
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "ERROR"
        print(f"health {target}: {name}: {details}", file=sys.stderr)
        return UNHEALTHY
    print(f"health {target}: {status}", file=sys.stderr)
    return HEALTHY if status == "SERVING" else UNHEALTHY


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardscore_server.tools.health_probe",
        description="gRPC health check of a hardscore server: exit 0 if SERVING, else 1.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
