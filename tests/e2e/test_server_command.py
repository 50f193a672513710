"""The server as a command: exit codes and messages at start-up, and what its modules import."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys


def test_server_exits_2_with_the_message_on_bad_config():
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_server.main", "--max-batch-size", "-3"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "configuration error: max_batch_size must be an integer >= 1, got -3" in proc.stderr



def test_server_exits_3_on_a_bad_model_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_server.main", "--model-dir", str(tmp_path),
         "--port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "cannot serve the model: manifest.json not found in model directory" in proc.stderr



def test_server_exits_4_with_one_line_when_its_port_is_in_use():
    """A busy gRPC port gave a grpcio traceback and exit 1, not the documented 4."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "hardscore_server.main", "--host", "127.0.0.1", "--port",
             str(port), "--metrics-port", "-1", "--http-port", "-1"],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert f"cannot start: cannot bind gRPC port 127.0.0.1:{port}: in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "loading the model from" in proc.stderr  # said before the warm-up, not after


def test_the_serving_line_says_metrics_off():
    from hardscore_server.tools.local_server import ServerProcess

    server = ServerProcess("--metrics-port", "-1", "--http-port", "-1")
    try:
        server.start()
        assert server.metrics_port == -1
        assert ", metrics off (plaintext, no auth)" in server.output()
    finally:
        server.stop()


def start_bare(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """The log lines of ``hardscore-server ARGS`` (free ports, no host unless ARGS give one)
    up to one line past its serving line; then it is stopped."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HARDSCORE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hardscore_server.main", "--port", "0", "--http-port", "0",
         "--metrics-port", "0", "--grace-period-s", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**clean, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "serving gRPC on" in line:
                break
        assert any("serving gRPC on" in line for line in lines), "\n".join(lines)
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    return lines + rest.splitlines()


def test_a_bare_server_listens_on_loopback_only_and_says_so_when_it_does_not():
    """It bound 0.0.0.0 with no authentication; now 127.0.0.1 unless a host is given, and one
    WARNING line when it listens beyond loopback with neither tokens nor TLS."""
    lines = start_bare()
    text = "\n".join(lines)
    assert re.search(r"serving HTTP \(KServe V2 REST\) on 127\.0\.0\.1:\d+", text), text
    assert re.search(r"serving gRPC on 127\.0\.0\.1:\d+, metrics on 127\.0\.0\.1:\d+", text)
    assert "WARNING" not in text
    # the warm-up is announced before it runs, with what it runs
    assert "warming it up: 2 batch size(s) (1, 32) per instance, 1 instance(s)" in text

    lines = start_bare("--host", "0.0.0.0", "--metrics-host", "0.0.0.0")
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines
    assert "listening on 0.0.0.0, beyond loopback, with neither bearer tokens nor TLS" in \
        warnings[0]

    quiet = start_bare(env={"HARDSCORE_HOST": "0.0.0.0", "HARDSCORE_AUTH_TOKENS": "s3cret"})
    assert any("serving gRPC on 0.0.0.0:" in line for line in quiet)
    assert not any(" WARNING " in line for line in quiet), quiet


def test_server_modules_do_not_import_torch() -> None:
    code = (
        "import sys, hardscore_server.model.model_dir, hardscore_server.tools.export\n"
        "import hardscore_server.tools.digits\n"
        "bad = [m for m in ('torch', 'torchvision', 'onnx', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

