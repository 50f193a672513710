"""``hardscore-server`` on a client-only install: one line that says what to install."""

from __future__ import annotations

import importlib.util

import pytest

from hardscore_server import commands


def test_server_command_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def without_onnxruntime(name: str, *args: object) -> object:
        return None if name in ("onnxruntime", "PIL") else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    assert commands.server(["--help"]) == 2
    err = capsys.readouterr().err
    assert err == ("hardscore-server needs the server extra: pip install 'hardscore[server]' "
                   "(or 'hardscore[gpu]'); missing: onnxruntime, PIL\n")


def test_server_extra_modules_are_installed_here() -> None:
    assert commands.missing_server_modules() == []
