"""Configuration: precedence of flags > environment > file > defaults, and precise errors."""

from __future__ import annotations

import dataclasses
import re

import pytest

from hardscore_server.config import ConfigError, ServerConfig, load_config, parse_args


def test_defaults_are_the_documented_ports():
    config = load_config(environ={})
    assert (config.port, config.metrics_port) == (8001, 8002)
    assert config == ServerConfig()


def test_flags_override_environment_override_file(tmp_path):
    file = tmp_path / "hardscore.toml"
    file.write_text("port = 9000\nmax_batch_size = 8\npreferred_batch_sizes = [2, 4]\n"
                    "allow_spinning = true\n")
    env = {"HARDSCORE_CONFIG": str(file), "HARDSCORE_PORT": "9100",
           "HARDSCORE_MAX_QUEUE_DELAY_MS": "7.5"}
    import argparse

    from hardscore_server.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = load_config(parser.parse_args(["--port", "9200", "--instances", "2"]), environ=env)
    assert config.port == 9200  # flag beats environment and file
    assert config.max_queue_delay_ms == 7.5  # environment
    assert config.max_batch_size == 8  # file
    assert config.preferred_batch_sizes == (2, 4)
    assert config.allow_spinning is True
    assert config.instances == 2


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "70000"], {}, "port must be in 0..65535, got 70000"),
        (["--max-batch-size", "0"], {}, "max_batch_size must be an integer >= 1, got 0"),
        (["--max-queue-size", "4", "--max-batch-size", "8"], {},
         "max_queue_size (4) must be >= max_batch_size (8)"),
        (["--preferred-batch-sizes", "4,64", "--max-batch-size", "32"], {},
         "preferred_batch_sizes must lie in 1..max_batch_size (32), got [4, 64]"),
        (["--execution-provider", "tpu"], {},
         "execution_provider must be one of auto, cpu, cuda, tensorrt, got 'tpu'"),
        ([], {"HARDSCORE_MAX_BATCH_SIZE": "lots"},
         "max_batch_size from environment HARDSCORE_MAX_BATCH_SIZE: cannot read 'lots'"),
        ([], {"HARDSCORE_NO_MODEL": "maybe"}, "no_model from environment HARDSCORE_NO_MODEL"),
        (["--workers", "0"], {}, "workers must be in 1..256, got 0"),
        (["--model-dir", "/nonexistent/model"], {},
         "model_dir '/nonexistent/model' is not a directory"),
    ],
)
def test_bad_settings_name_the_setting(argv, env, message, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("HARDSCORE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        parse_args(argv)
    assert message in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("max_batch = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_batch'"):
        load_config(environ={"HARDSCORE_CONFIG": str(file)})


def test_a_bare_server_listens_on_loopback_and_warns_when_open_beyond_it() -> None:
    from hardscore_server.config import exposure_warning, is_loopback

    default = ServerConfig()
    assert (default.host, default.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert exposure_warning(default) == ""
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.4", "example.internal"):
        assert not is_loopback(host), host
    open_ = dataclasses.replace(default, host="0.0.0.0")
    assert "beyond loopback, with neither bearer tokens nor TLS" in exposure_warning(open_)
    assert exposure_warning(dataclasses.replace(open_, auth_tokens=("t",))) == ""
    assert exposure_warning(dataclasses.replace(open_, auth_tokens_file="/t")) == ""
    assert exposure_warning(dataclasses.replace(open_, tls_cert_file="/c")) == ""


def test_text_lists_from_a_file_take_toml_arrays_and_comma_text(tmp_path):
    """A TOML array of names was read as the text of the list ("['a', 'b']") and split at its
    commas: load_model = ["a", "b"] asked for models named "['a'" and "'b']"."""
    file = tmp_path / "c.toml"
    mode = f'model_control_mode = "explicit"\nmodel_repository = "{tmp_path}"\n'
    file.write_text(mode + 'load_model = ["digits", "cifar"]\n')
    assert load_config(environ={"HARDSCORE_CONFIG": str(file)}).load_model == ("digits",
                                                                               "cifar")
    file.write_text(mode + 'load_model = "digits, cifar"\n')
    assert load_config(environ={"HARDSCORE_CONFIG": str(file)}).load_model == ("digits",
                                                                               "cifar")
    file.write_text(mode + "load_model = [1, 2]\n")
    with pytest.raises(ConfigError, match="expected a list of text values"):
        load_config(environ={"HARDSCORE_CONFIG": str(file)})


def test_the_removed_http_body_budget_says_what_replaced_it(tmp_path):
    """http_body_budget_bytes was REST's own budget; REST bodies draw on request_budget_bytes
    now. Set anywhere, it stops the server saying so (not 'unknown setting', never ignored)."""
    file = tmp_path / "c.toml"
    file.write_text("http_body_budget_bytes = 536870912\n")
    said = "http_body_budget_bytes was removed: REST bodies draw on request_budget_bytes now"
    with pytest.raises(ConfigError, match=r"^--http-body-budget-bytes was removed: REST"):
        parse_args(["--http-body-budget-bytes", "536870912"])
    env = "HARDSCORE_HTTP_BODY_BUDGET_BYTES"
    with pytest.raises(ConfigError, match=f"^environment {env}: {said}"):
        load_config(environ={env: "536870912"})
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(file))}: {said}"):
        load_config(environ={"HARDSCORE_CONFIG": str(file)})
    assert not hasattr(ServerConfig(), "http_body_budget_bytes")
