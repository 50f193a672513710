"""The collection verdicts against FiftyOne Brain live: tests/fixtures/make_collection_reference.py
runs in the FiftyOne venv (``make fiftyone-venv``; FiftyOne's bundled mongod, stopped after),
calls Brain's compute_uniqueness / compute_representativeness / compute_near_duplicates /
compute_leaky_splits / compute_exact_duplicates on a real dataset, and our fiftyone variants
must give the same numbers (1e-9) and sets; the committed fixture must be what Brain gives now."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, load_script

FIFTYONE_PYTHON = REPO / ".venv-fiftyone" / "bin" / "python"
MAKER = REPO / "tests" / "fixtures" / "make_collection_reference.py"
FIXTURE = REPO / "tests" / "fixtures" / "fiftyone_brain_collection_reference.npz"


def test_brain_live_equals_fixture_and_ours(tmp_path: Path) -> None:
    if not FIFTYONE_PYTHON.exists():
        pytest.fail("the FiftyOne venv is missing: make fiftyone-venv (make test makes it)")
    from test_fiftyone import mongod_pids

    db_dir = tmp_path / "db"
    env = {**os.environ, "HOME": str(tmp_path), "FIFTYONE_DATABASE_DIR": str(db_dir),
           "FIFTYONE_DO_NOT_TRACK": "true"}
    out = tmp_path / "live.npz"
    proc = subprocess.run([str(FIFTYONE_PYTHON), str(MAKER), str(out), str(tmp_path / "files")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 30  # FiftyOne stops its mongod when its last client exits
    while mongod_pids(db_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = mongod_pids(db_dir)
    for pid in leftover:
        os.kill(pid, 15)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not leftover, f"mongod still running after the check: {leftover}"
    with np.load(out) as live_data, np.load(FIXTURE) as fixed_data:
        live, fixed = dict(live_data), dict(fixed_data)
    for name, value in fixed.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(live[name], value, rtol=0, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(live[name], value, err_msg=name)
    unit = load_script(REPO / "tests" / "unit" / "test_verdicts.py")
    unit.assert_matches_brain(live, unit.ours_fiftyone(live))
