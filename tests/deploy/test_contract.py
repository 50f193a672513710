"""The contract: buf lint (STANDARD rules) and generated stubs that match the .proto files."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import PROTOC_PYTHON, REPO


def test_proto_passes_buf_lint():
    buf = shutil.which("buf")
    assert buf, "buf is not on PATH: `make test` installs it (npm @bufbuild/buf)"
    proc = subprocess.run([buf, "lint"], cwd=REPO / "proto", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_stubs_are_up_to_date():
    assert PROTOC_PYTHON.is_file(), "the protoc venv is missing: run `make protos-check`"
    proc = subprocess.run([str(PROTOC_PYTHON), str(REPO / "proto" / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_ruff_and_mypy_are_clean():
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    # a cache of its own: mypy's incremental cache can go stale when runs over different file
    # sets share it, and report false errors
    mypy = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir",
                           str(REPO / ".mypy_cache" / "contract-test")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
