"""The model repository on disk: version policies, version order, the folders scanned, and the
configuration checks of the repository settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from hardscore_server.config import ConfigError, ServerConfig
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.model.repository_layout import (
    RepositoryError,
    RepositoryLayout,
    VersionPolicy,
    version_key,
)


@pytest.mark.parametrize(("text", "versions", "selected"), [
    ("latest", ["1", "10", "2"], ["10"]),
    ("latest:2", ["1", "10", "2"], ["2", "10"]),
    ("all", ["3", "1"], ["1", "3"]),
    ("specific:1,3", ["1", "2", "3"], ["1", "3"]),
    ("specific:7", ["1"], []),
])
def test_a_policy_selects_versions_in_numeric_order(text, versions, selected):
    policy = VersionPolicy.parse(text)
    assert policy.select(versions) == selected
    assert str(policy) == text


@pytest.mark.parametrize("text", ["latest:0", "latest:x", "newest", "all:1", "specific:",
                                  "specific:a"])
def test_a_bad_policy_is_refused_by_the_layout_and_the_configuration(text):
    with pytest.raises(RepositoryError, match="version_policy"):
        VersionPolicy.parse(text)
    with pytest.raises(ConfigError, match="version_policy"):
        dataclasses.replace(ServerConfig(), version_policy=text).validate()


def test_integer_versions_sort_numerically_and_after_other_strings():
    assert sorted(["10", "9", "b", "1"], key=version_key) == ["b", "1", "9", "10"]


def test_scan_finds_models_and_integer_versions_only(tmp_path):
    for folder in ("digits/1", "digits/02", "digits/notes", "empty/x", ".hidden/1"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL_DIR / "manifest.json", tmp_path / "digits" / "1")
    found = RepositoryLayout(root=tmp_path).scan()
    assert {n: sorted(v) for n, v in found.items()} == {"digits": ["1", "2"]}
    assert found["digits"]["2"].path == tmp_path / "digits" / "02"
    assert found["digits"]["1"].model_bytes == 0  # no model.onnx: its load says so
    with pytest.raises(RepositoryError, match="cannot read"):
        RepositoryLayout(root=tmp_path / "missing").scan()


def test_a_model_directory_is_a_repository_of_one():
    found = RepositoryLayout(single=DEFAULT_MODEL_DIR).scan()
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    assert list(found) == [manifest["name"]]
    assert list(found[manifest["name"]]) == [manifest["version"]]


@pytest.mark.parametrize(("changes", "message"), [
    ({"model_dir": ".", "model_repository": "."}, "exclude each other"),
    ({"model_control_mode": "poll"}, "needs model_repository"),
    ({"model_control_mode": "lazy"}, "model_control_mode must be one of"),
    ({"load_model": ("a",)}, "load_model is for model_control_mode=explicit"),
    ({"model_repository": ".", "model_control_mode": "explicit", "workers": 2},
     "workers > 1"),
    ({"model_repository": ".", "model_control_mode": "explicit", "host": "0.0.0.0"},
     "needs control tokens"),
    ({"max_loaded_models": -1}, "max_loaded_models must be >= 0"),
])
def test_repository_settings_are_checked_at_start(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ServerConfig(), **changes).validate()
    if "host" in changes:  # with control tokens, explicit mode may listen beyond loopback
        dataclasses.replace(ServerConfig(), **changes,
                            repository_control_tokens=("t",)).validate()


def test_a_repository_folder_must_exist(tmp_path: Path):
    with pytest.raises(ConfigError, match="is not a directory"):
        dataclasses.replace(ServerConfig(), model_repository=str(tmp_path / "no")).validate()
