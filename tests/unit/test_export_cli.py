"""``hardscore-export --help``: it prints every option and exits 0, without torch.

argparse %-formats help strings, so a bare percent sign in one (``1% of ...``) used to crash
``--help`` with ``TypeError``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from hardscore_server.tools.export import add_export_arguments

from conftest import REPO


def _options() -> list[str]:
    parser = argparse.ArgumentParser(prog="hardscore-export")
    add_export_arguments(parser)
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def test_help_lists_every_option_and_exits_0() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_server.tools.export", "--help"],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hardscore-export")
    options = _options()
    assert {"--num-classes", "--fp16", "--checkpoint", "--out"} <= set(options)
    missing = [option for option in options if option not in proc.stdout]
    assert not missing, missing
    assert "within 1% of the logit scale" in proc.stdout


def test_num_classes_named_by_errors_is_documented() -> None:
    assert "--num-classes" in _options()
    assert "`--num-classes" in (REPO / "docs" / "models.md").read_text(encoding="utf-8")
