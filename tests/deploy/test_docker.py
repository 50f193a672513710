"""The Docker image, validated without a Docker engine:

- Dockerfile: hadolint clean (two documented inline ignores); its structure (stages, non-root
  user, exec-form entrypoint, ports); the HEALTHCHECK command run as written against a real
  server; .dockerignore lets through what the COPYs need; server/install.sh (shellcheck clean,
  the commands of both flavors) and the wheel it installs (default model inside)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artefacts import (
    DOCKERFILE,
    GRPC_PORT,
    HTTP_PORT,
    INSTALL,
    METRICS_PORT,
    REPO,
    tool,
)
from server_process import ServerProcess

# ---- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            name = rest.split()[-1]
            current = result.setdefault(name, [])
        elif current is not None:
            current.append((word, rest))
    return result


def test_hadolint_is_clean() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_ignores_are_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert len(ignores) == 1  # DL3006 (FROM a stage via an ARG)
    for i in ignores:
        code = lines[i].split("=", 1)[1]
        above = "\n".join(lines[max(0, i - 4):i])
        assert code in above, f"the ignore of {code} has no explanation above it"


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    named = stages()
    assert {"base-cpu", "base-gpu", "base", "builder", "runtime"} <= set(named)
    assert ("ARG", "FLAVOR=cpu") in instructions
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert froms[-1].endswith("AS runtime"), "the runtime stage is the default build target"
    assert any("base-${FLAVOR}" in f for f in froms)

    builder = dict(named["builder"])
    assert "server/install.sh" in builder["RUN"] and '--flavor "${FLAVOR}"' in builder["RUN"]

    runtime = named["runtime"]
    words = [w for w, _ in runtime]
    users = [rest for w, rest in runtime if w == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "numeric non-root user"
    assert words.index("USER") > words.index("COPY"), "files are copied as root, read-only"
    run = dict(runtime)
    assert set(run["EXPOSE"].split()) == {str(GRPC_PORT), str(HTTP_PORT), str(METRICS_PORT)}
    assert json.loads(run["ENTRYPOINT"]) == ["hardscore-server"], "exec form: SIGTERM reaches it"
    assert run["STOPSIGNAL"] == "SIGTERM"
    assert "--from=builder /opt/hardscore /opt/hardscore" in run["COPY"]
    assert "/opt/hardscore/bin" in run["ENV"]
    # a bare server listens on loopback only; the image opens every interface, as environment
    # so that arguments given to `docker run` keep it
    assert "HARDSCORE_HOST=0.0.0.0" in run["ENV"] and "HARDSCORE_METRICS_HOST=0.0.0.0" in run["ENV"]
    assert "CMD [" in run["HEALTHCHECK"]

    # Both flavors run the same Python image; the GPU one gets CUDA from the gpu extra's pip
    # packages (tests/deploy/test_gpu_install.py checks they match ONNX Runtime's build).
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    assert "python:3" in args["PYTHON_IMAGE"] and "CUDA_IMAGE" not in args
    assert [w for w, _ in named["base-gpu"]] == ["ENV"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in dict(named["base-gpu"])["ENV"]


def healthcheck_command() -> list[str]:
    rest = dict(stages()["runtime"])["HEALTHCHECK"]
    return list(json.loads(rest[rest.index("CMD") + 3:].strip()))


def test_healthcheck_command_reports_a_serving_server(logits_server: ServerProcess) -> None:
    command = healthcheck_command()
    assert command[:3] == ["python", "-m", "hardscore_server.tools.health_probe"]
    env = {**os.environ, "HARDSCORE_PORT": str(logits_server.port)}
    result = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stderr


def test_healthcheck_follows_the_port_given_on_the_servers_command_line() -> None:
    """The HEALTHCHECK probed 8001 whatever `docker run IMAGE --port N` said: it reads the
    server's own flags (PID 1 in the image; here the process HARDSCORE_SERVER_PID names)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARDSCORE_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "hardscore_server.main", "--no-model", "--port", str(port),
         "--http-port", "-1", "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "serving gRPC on" in line:
                break
        else:
            pytest.fail("the server did not start")
        command = healthcheck_command()
        probe_env = {**env, "HARDSCORE_SERVER_PID": str(server.pid)}
        result = subprocess.run([sys.executable, *command[1:]], env=probe_env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert f"health 127.0.0.1:{port}: SERVING" in result.stderr
    finally:
        server.terminate()
        server.wait(30)


def test_healthcheck_command_fails_without_a_server() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = healthcheck_command()
    env = {**os.environ, "HARDSCORE_PORT": str(port)}
    result = subprocess.run([sys.executable, *command[1:], "--timeout", "1"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "UNAVAILABLE" in result.stderr or "DEADLINE" in result.stderr


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` spans directories, `*` and `?` do not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = glob_regex(line.removeprefix("!").rstrip("/"))
        if any(regex.match(p) for p in prefixes):
            allowed = negate
    return allowed


def test_dockerignore_lets_through_what_the_image_copies() -> None:
    copied = []
    for word, rest in stages()["builder"]:
        if word == "COPY":
            copied += rest.split()[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        sample = source.rstrip("/")
        if (REPO / sample).is_dir():
            sample = next(p.relative_to(REPO).as_posix() for p in (REPO / sample).rglob("*.py"))
        assert dockerignore_allows(sample), f"{sample} is excluded by .dockerignore"
    for left_out in (".venv/bin/python", "tests/test_deploy.py", "helm/hardscore/Chart.yaml",
                     "bench/common.py", "server/hardscore_server/__pycache__/main.cpython.pyc"):
        assert not dockerignore_allows(left_out), left_out
    assert dockerignore_allows("server/hardscore_server/default_model/model.onnx")


def test_install_script_is_shellcheck_clean() -> None:
    result = subprocess.run([tool("shellcheck"), str(INSTALL)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(INSTALL, os.X_OK)


def install_commands(*args: str) -> list[str]:
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", *args], capture_output=True,
                            text=True, timeout=30, check=True)
    return [line for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_install_script_commands_per_flavor() -> None:
    cpu = install_commands("--python", "PY")
    assert "+ PY -m pip --quiet --disable-pip-version-check install -c constraints.txt .[server]" \
        in cpu
    assert not any("onnxruntime-gpu==" in c for c in cpu)
    gpu = install_commands("--python", "PY", "--flavor", "gpu", "--extras", "dev")
    assert any(c.endswith("install -c constraints.txt .[dev,gpu]") for c in gpu)
    uninstall = next(i for i, c in enumerate(gpu) if c.endswith("uninstall --yes onnxruntime"))
    reinstall = next(i for i, c in enumerate(gpu) if "--force-reinstall" in c)
    assert reinstall > uninstall and "onnxruntime-gpu==" in gpu[reinstall]
    assert gpu[-1] == "+ PY - gpu", "the environment is checked last"
    dev = install_commands("--editable", "--extras", "dev,export,demo")
    assert any(c.endswith("install -c constraints.txt -e .[dev,export,demo,server]") for c in dev)
    bad = subprocess.run(["bash", str(INSTALL), "--flavor", "tpu"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "cpu or gpu" in bad.stderr


def test_ci_installs_through_the_install_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("$(VENV)/.installed:"):].split("\n\n")[0]
    assert "server/install.sh" in recipe and "--editable" in recipe


def test_wheel_holds_the_default_model_and_the_health_check(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for tree in ("server", "client", "proto"):
        shutil.copytree(REPO / tree, source / tree,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=120)
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("hardscore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("hardscore_server/default_model/model.onnx",
                   "hardscore_server/default_model/manifest.json",
                   "hardscore_server/tools/health_probe.py", "hardscore_server/main.py",
                   "hardscore_wire/scoring_pb2.py", "hardscore_wire/scoring_pb2.pyi",
                   "hardscore_server/transport/inference_protocol/grpc_service_pb2.py",
                   "hardscore_server/transport/inference_protocol/grpc_service_pb2.pyi"):
        assert needed in names, needed
    # every module of every room is packaged (a room missing from pyproject's packages is not)
    package = REPO / "server" / "hardscore_server"
    for module in package.rglob("*.py"):
        assert f"hardscore_server/{module.relative_to(package).as_posix()}" in names, module


def test_health_check_flags() -> None:
    from hardscore_server.tools import health_probe as health

    parser = argparse.ArgumentParser()
    health.add_arguments(parser)
    assert health.tls_from_args(parser.parse_args([])) is None
    with pytest.raises(ValueError, match="go together"):
        health.tls_from_args(parser.parse_args(["--tls-cert-file", "c.pem"]))
    tls = health.tls_from_args(parser.parse_args(["--tls", "--tls-server-name", "x.svc"]))
    assert tls is not None and tls.server_name_override == "x.svc"
    assert tls.root_certificates is None
    assert health.default_target({}) == "127.0.0.1:8001"
    assert health.default_target({"HARDSCORE_PORT": "9000"}) == "127.0.0.1:9000"
    both = {"HARDSCORE_PORT": "9000", "HARDSCORE_HEALTH_PORT": "9001"}
    assert health.default_target(both) == "127.0.0.1:9001", "the plaintext health port first"
    off = {"HARDSCORE_PORT": "9000", "HARDSCORE_HEALTH_PORT": "-1"}
    assert health.default_target(off) == "127.0.0.1:9000"
    # the server's own flags (PID 1's command line) come first, over its environment
    assert health.default_target({}, ["--port", "9100"]) == "127.0.0.1:9100"
    assert health.default_target({"HARDSCORE_PORT": "9000"}, ["--port=9100"]) == "127.0.0.1:9100"
    assert health.default_target({"HARDSCORE_PORT": "9000"}, []) == "127.0.0.1:9000"
    assert health.default_target({}, ["--port", "9100", "--health-port", "9101"]) == \
        "127.0.0.1:9101"
    assert health.default_target({}, ["--port", "nope"]) == "127.0.0.1:8001", "unreadable: env"


