"""bench/label_quality_methods.py on its quick setting: every scenario gets a figure for every
ranking, and its rankings equal cleanlab 2.9's on the data it generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hardscore_client.label_quality import METHODS

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_ranks_every_scenario_with_every_method(tmp_path):
    pytest.importorskip("cleanlab")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "label_quality_methods.py"),
                           "--quick", "--output", str(tmp_path / "t.md")],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (tmp_path / "t.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[2:] == [*METHODS, *(f"{m}+adjusted" for m in METHODS)]
    rows = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 6
    for row in rows:
        values = [float(v) for v in row[2:]]
        assert all(0.1 < v <= 1.0 for v in values), row
    deviation = re.search(r"cleanlab 2\.9\| over every ranking and data set: (\S+)", proc.stdout)
    assert deviation is not None and float(deviation.group(1)) <= 1e-12
