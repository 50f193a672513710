"""The server as a command: exit codes and messages at start-up, and what its modules import."""

from __future__ import annotations

import os
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



def test_server_modules_do_not_import_torch() -> None:
    code = (
        "import sys, hardscore_server.model.model_dir, hardscore_server.tools.export\n"
        "import hardscore_server.tools.digits\n"
        "bad = [m for m in ('torch', 'torchvision', 'onnx', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

