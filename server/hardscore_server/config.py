"""The server's configuration: one object, loaded from defaults, a TOML file, environment, flags.

Precedence, lowest to highest: built-in defaults < ``--config FILE`` (or ``HARDSCORE_CONFIG``)
< ``HARDSCORE_<NAME>`` environment variables < command-line flags. Every value is validated at
start-up and a bad one stops the server with a message naming the setting and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "HARDSCORE_"
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
CONV_ALGO_SEARCHES = ("exhaustive", "heuristic", "default")
ARENA_EXTEND_STRATEGIES = ("next_power_of_two", "same_as_requested")
JPEG_DECODE_DEVICES = ("cpu", "cuda", "torch_cpu")  # torch_cpu: tests only (torch_decode.py)
CONTROL_MODES = ("none", "explicit", "poll")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


@dataclass(frozen=True)
class ServerConfig:
    """Every knob of the server. Units are in the names (``_bytes``, ``_ms``, ``_s``)."""

    host: str = field(
        default="127.0.0.1", metadata={"help": "listen address of the gRPC and REST ports "
                                       "(0.0.0.0 = every IPv4 interface: containers, other "
                                       "machines; then set tokens or TLS)"}
    )
    port: int = field(default=8001, metadata={"help": "gRPC port (0 = pick a free one)"})
    http_port: int = field(
        default=8000, metadata={"help": "KServe V2 REST port on host (0 = free one, -1 = off)"}
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata={"help": "bind address of the /metrics port (0.0.0.0 = "
                                       "every IPv4 interface, so that Prometheus can scrape "
                                       "a pod)"}
    )
    metrics_port: int = field(
        default=8002, metadata={"help": "Prometheus /metrics port (0 = free one, -1 = off)"}
    )
    metrics_tls_cert_file: str = field(
        default="", metadata={"help": "PEM certificate chain: serve /metrics over HTTPS"}
    )
    metrics_tls_key_file: str = field(
        default="", metadata={"help": "PEM private key of metrics_tls_cert_file (unencrypted)"}
    )
    metrics_tls_client_ca_file: str = field(
        default="", metadata={"help": "PEM CA bundle: scrapers must present a client "
                              "certificate it signed"}
    )
    model_dir: str = field(
        default="", metadata={"help": "model directory (model.onnx + manifest.json); "
                              "empty = the embedded default model"}
    )
    no_model: bool = field(
        default=False, metadata={"help": "serve logits scoring only; load no model"}
    )
    # The model repository (pipeline/model_repository.py; docs/models.md, "Model repository").
    model_repository: str = field(
        default="", metadata={"help": "folder of models, <model>/<version>/{model.onnx,"
                              "manifest.json}: several models and versions (instead of "
                              "model_dir)"}
    )
    model_control_mode: str = field(
        default="none", metadata={"help": "none (load every model at start), explicit (load "
                                  "and unload through the repository API; load_model at "
                                  "start) or poll (reload what changes on disk)"}
    )
    load_model: tuple[str, ...] = field(
        default=(), metadata={"help": "models loaded at start in explicit mode (comma list; "
                              "* = every model)"}
    )
    repository_poll_s: float = field(
        default=15.0, metadata={"help": "poll mode: seconds between looks at the repository"}
    )
    version_policy: str = field(
        default="latest", metadata={"help": "versions of each model served: latest, latest:N, "
                                    "all, or specific:1,3"}
    )
    max_loaded_models: int = field(
        default=0, metadata={"help": "most model versions loaded at once (0 = no limit)"}
    )
    model_memory_limit_bytes: int = field(
        default=0, metadata={"help": "most estimated memory of the loaded model versions "
                             "(instances x (2 x model.onnx + 16 MiB) each; 0 = no limit)"}
    )
    repository_control_tokens_file: str = field(
        default="", metadata={"help": "file of the tokens that may load and unload models "
                              "(header hardscore-control-token), one per line"}
    )
    repository_control_tokens: tuple[str, ...] = field(
        default=(), repr=False,
        metadata={"help": "tokens that may load and unload models (comma list)",
                  "env_only": True},
    )
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest gRPC message, either direction"}
    )
    max_rows_per_request: int = field(
        default=1_000_000, metadata={"help": "most rows (logits) or samples (images) per message"}
    )
    max_batch_size: int = field(default=32, metadata={"help": "largest inference batch"})
    max_queue_delay_ms: float = field(
        default=2.0, metadata={"help": "longest a partial batch waits for more samples"}
    )
    preferred_batch_sizes: tuple[int, ...] = field(
        default=(), metadata={"help": "batch sizes to cut at when more are queued (comma list)"}
    )
    max_queue_size: int = field(
        default=1024, metadata={"help": "most samples waiting; beyond it RESOURCE_EXHAUSTED"}
    )
    instances: int = field(default=1, metadata={"help": "model instances (ORT sessions)"})
    workers: int = field(
        default=1, metadata={"help": "server processes sharing the gRPC port (SO_REUSEPORT), "
                             "each with its own batcher and model; > 1 adds a supervisor"}
    )
    intra_op_threads: int = field(
        default=0, metadata={"help": "ORT threads per instance (0 = cores / instances)"}
    )
    allow_spinning: bool = field(
        default=False, metadata={"help": "let ORT threads spin-wait (fast only on idle cores)"}
    )
    execution_provider: str = field(
        default="auto", metadata={"help": "auto (CUDA when it loads, else CPU), cpu, cuda or "
                                  "tensorrt (TensorRT, then CUDA for what it cannot take)"}
    )
    # GPU settings (docs/configuration.md, "GPU"): used by the cuda and tensorrt providers.
    cuda_device_id: int = field(default=0, metadata={"help": "CUDA device ordinal"})
    cudnn_conv_algo_search: str = field(
        default="exhaustive", metadata={"help": "cuDNN convolution algorithm choice: exhaustive "
                                        "(time each once per shape), heuristic or default"}
    )
    cuda_mem_limit_bytes: int = field(
        default=0, metadata={"help": "cap of the CUDA memory arena (0 = no cap)"}
    )
    cuda_arena_extend_strategy: str = field(
        default="next_power_of_two", metadata={"help": "CUDA arena growth: next_power_of_two "
                                               "or same_as_requested"}
    )
    io_binding: bool = field(
        default=False, metadata={"help": "run through ORT IOBinding: logits written straight "
                                 "into the host array the scores read"}
    )
    tensorrt_engine_cache_dir: str = field(
        default="", metadata={"help": "directory keeping TensorRT engines across restarts "
                              "(empty = rebuild at every start)"}
    )
    tensorrt_fp16: bool = field(
        default=False, metadata={"help": "let TensorRT run layers in float16"}
    )
    jpeg_decode_device: str = field(
        default="cpu", metadata={"help": "where JPEGs are decoded: cpu (Pillow) or cuda "
                                 "(torchvision's nvJPEG, in batches; needs torch with CUDA); "
                                 "torch_cpu is for tests only"}
    )
    preprocess_threads: int = field(
        default=2, metadata={"help": "threads decoding and resizing images"}
    )
    decode_budget_bytes: int = field(
        default=512 * 1024 * 1024,
        metadata={"help": "estimated image-decoding memory in use at once, all calls together "
                  "(bytes); an image over it gets a size error"}
    )
    request_budget_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={"help": "request bytes in progress at once, every gRPC call and stream and "
                  "every REST body together (bytes; gRPC messages at 3x their size, REST "
                  "bodies with their estimated parsing memory): a message waits for room "
                  "(first fit), half as much again may wait, beyond that RESOURCE_EXHAUSTED; "
                  "a REST body that could never fit is 413, one that waits past "
                  "http_body_timeout_s 503"}
    )
    message_read_timeout_s: float = field(
        default=10.0,
        metadata={"help": "longest a gRPC request message may take to arrive once the server "
                  "reads it within a read slot (a unary request, a stream's first message; "
                  "RESOURCE_EXHAUSTED beyond), and longest an idle stream keeps room reserved "
                  "for its next message"}
    )
    http_header_timeout_s: float = field(
        default=65.0,
        metadata={"help": "longest a REST connection may take to send a request's complete "
                  "headers, counted from its opening or its previous reply (idle keep-alive "
                  "connections close after it too)"}
    )
    http_body_timeout_s: float = field(
        default=30.0,
        metadata={"help": "longest a REST request body may stop arriving (408), and longest a "
                  "body waits for request_budget_bytes (503)"}
    )
    grace_period_s: float = field(
        default=30.0, metadata={"help": "on SIGTERM, longest wait for accepted calls to finish"}
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    # Security (server/hardscore_server/transport/security.py; README "Security").
    tls_cert_file: str = field(
        default="", metadata={"help": "PEM server certificate chain: serve gRPC over TLS"}
    )
    tls_key_file: str = field(
        default="", metadata={"help": "PEM private key of tls_cert_file (unencrypted)"}
    )
    tls_client_ca_file: str = field(
        default="", metadata={"help": "PEM CA bundle: require client certificates it signed "
                              "(mutual TLS)"}
    )
    auth_tokens_file: str = field(
        default="", metadata={"help": "file of bearer tokens, one per line (# comments); "
                              "re-read when it changes"}
    )
    auth_tokens: tuple[str, ...] = field(
        default=(), repr=False,
        metadata={"help": "bearer tokens (comma list)", "env_only": True},
    )
    health_port: int = field(
        default=-1, metadata={"help": "plaintext port serving only grpc.health.v1 on host, for "
                              "probes that cannot do TLS (-1 = off, 0 = free one)"}
    )

    def validate(self) -> ServerConfig:
        """Returns self, or raises ConfigError naming the first bad setting."""
        checks: list[tuple[bool, str]] = [
            (0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}"),
            (-1 <= self.http_port <= 65535,
             f"http_port must be in -1..65535, got {self.http_port}"),
            (-1 <= self.metrics_port <= 65535,
             f"metrics_port must be in -1..65535, got {self.metrics_port}"),
            (self.max_message_bytes >= 1024,
             f"max_message_bytes must be >= 1024, got {self.max_message_bytes}"),
            (self.max_rows_per_request >= 1,
             f"max_rows_per_request must be >= 1, got {self.max_rows_per_request}"),
            (self.max_batch_size >= 1,
             f"max_batch_size must be an integer >= 1, got {self.max_batch_size}"),
            (self.max_queue_delay_ms >= 0,
             f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}"),
            (all(1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes),
             f"preferred_batch_sizes must lie in 1..max_batch_size ({self.max_batch_size}), "
             f"got {list(self.preferred_batch_sizes)}"),
            (self.max_queue_size >= self.max_batch_size,
             f"max_queue_size ({self.max_queue_size}) must be >= max_batch_size "
             f"({self.max_batch_size})"),
            (self.instances >= 1, f"instances must be >= 1, got {self.instances}"),
            (1 <= self.workers <= 256, f"workers must be in 1..256, got {self.workers}"),
            (self.intra_op_threads >= 0,
             f"intra_op_threads must be >= 0, got {self.intra_op_threads}"),
            (self.execution_provider in PROVIDERS,
             f"execution_provider must be one of {', '.join(PROVIDERS)}, "
             f"got {self.execution_provider!r}"),
            (self.cuda_device_id >= 0,
             f"cuda_device_id must be >= 0, got {self.cuda_device_id}"),
            (self.cudnn_conv_algo_search in CONV_ALGO_SEARCHES,
             f"cudnn_conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCHES)}, "
             f"got {self.cudnn_conv_algo_search!r}"),
            (self.cuda_mem_limit_bytes >= 0,
             f"cuda_mem_limit_bytes must be >= 0, got {self.cuda_mem_limit_bytes}"),
            (self.cuda_arena_extend_strategy in ARENA_EXTEND_STRATEGIES,
             f"cuda_arena_extend_strategy must be one of {', '.join(ARENA_EXTEND_STRATEGIES)}, "
             f"got {self.cuda_arena_extend_strategy!r}"),
            (self.jpeg_decode_device in JPEG_DECODE_DEVICES,
             f"jpeg_decode_device must be one of {', '.join(JPEG_DECODE_DEVICES)}, "
             f"got {self.jpeg_decode_device!r}"),
            (self.preprocess_threads >= 1,
             f"preprocess_threads must be >= 1, got {self.preprocess_threads}"),
            (self.decode_budget_bytes >= 16 * 1024 * 1024,
             f"decode_budget_bytes must be >= 16777216 (16 MiB), got {self.decode_budget_bytes}"),
            (self.request_budget_bytes >= 16 * 1024 * 1024,
             "request_budget_bytes must be >= 16777216 (16 MiB), got "
             f"{self.request_budget_bytes}"),
            (self.message_read_timeout_s > 0,
             f"message_read_timeout_s must be > 0, got {self.message_read_timeout_s}"),
            (self.http_header_timeout_s > 0,
             f"http_header_timeout_s must be > 0, got {self.http_header_timeout_s}"),
            (self.http_body_timeout_s > 0,
             f"http_body_timeout_s must be > 0, got {self.http_body_timeout_s}"),
            (self.grace_period_s >= 0, f"grace_period_s must be >= 0, got {self.grace_period_s}"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
             f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}"),
            (not self.model_dir or Path(self.model_dir).is_dir(),
             f"model_dir {self.model_dir!r} is not a directory"),
            *self._repository_checks(),
            *self._security_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def _repository_checks(self) -> list[tuple[bool, str]]:
        """The model repository's settings (docs/models.md, "Model repository")."""
        repo = self.model_repository
        return [
            (not (repo and self.model_dir),
             "model_dir and model_repository exclude each other: a model directory is served "
             "as a repository of one; give one of them"),
            (not repo or Path(repo).is_dir(), f"model_repository {repo!r} is not a directory"),
            (self.model_control_mode in CONTROL_MODES,
             f"model_control_mode must be one of {', '.join(CONTROL_MODES)}, got "
             f"{self.model_control_mode!r}"),
            (self.model_control_mode == "none" or bool(repo),
             f"model_control_mode={self.model_control_mode} needs model_repository"),
            (not self.load_model or self.model_control_mode == "explicit",
             "load_model is for model_control_mode=explicit (the other modes load every "
             "model)"),
            (not (self.model_control_mode == "explicit" and self.workers > 1),
             "model_control_mode=explicit with workers > 1: a load or unload would reach one "
             "worker only; use poll, or workers = 1"),
            (self.model_control_mode != "explicit" or is_loopback(self.host)
             or bool(self.repository_control_tokens or self.repository_control_tokens_file),
             "model_control_mode=explicit on a host beyond loopback needs control tokens: set "
             "repository_control_tokens_file (or HARDSCORE_REPOSITORY_CONTROL_TOKENS), or "
             "--host 127.0.0.1 (docs/security.md, \"Model control\")"),
            (self.repository_poll_s > 0,
             f"repository_poll_s must be > 0, got {self.repository_poll_s}"),
            (valid_version_policy(self.version_policy),
             f"version_policy must be latest, latest:N (N >= 1), all or specific:V1,V2 "
             f"(integer versions), got {self.version_policy!r}"),
            (self.max_loaded_models >= 0,
             f"max_loaded_models must be >= 0, got {self.max_loaded_models}"),
            (self.model_memory_limit_bytes >= 0,
             f"model_memory_limit_bytes must be >= 0, got {self.model_memory_limit_bytes}"),
            (all(valid_token(t) for t in self.repository_control_tokens),
             "repository_control_tokens: a token must be 1 or more printable ASCII characters "
             "without spaces or commas"),
            (not self.repository_control_tokens_file
             or Path(self.repository_control_tokens_file).is_file(),
             f"repository_control_tokens_file {self.repository_control_tokens_file!r} is not "
             "a file"),
        ]

    def _security_checks(self) -> list[tuple[bool, str]]:
        """TLS files set together and present, tokens usable as metadata (never printed)."""
        files = [(name, getattr(self, name)) for name in
                 ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file",
                  "metrics_tls_cert_file", "metrics_tls_key_file", "metrics_tls_client_ca_file")]
        return [
            (-1 <= self.health_port <= 65535,
             f"health_port must be in -1..65535, got {self.health_port}"),
            (bool(self.tls_cert_file) == bool(self.tls_key_file),
             "tls_cert_file and tls_key_file must be set together (both or neither)"),
            (not self.tls_client_ca_file or bool(self.tls_cert_file),
             "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file"),
            (bool(self.metrics_tls_cert_file) == bool(self.metrics_tls_key_file),
             "metrics_tls_cert_file and metrics_tls_key_file must be set together "
             "(both or neither)"),
            (not self.metrics_tls_client_ca_file or bool(self.metrics_tls_cert_file),
             "metrics_tls_client_ca_file (client certificates) needs metrics_tls_cert_file and "
             "metrics_tls_key_file"),
            *[(not value or Path(value).is_file(), f"{name} {value!r} is not a file")
              for name, value in files],
            (all(valid_token(t) for t in self.auth_tokens),
             "auth_tokens: a token must be 1 or more printable ASCII characters without "
             "spaces or commas"),
        ]


def is_loopback(host: str) -> bool:
    """True if ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def exposure_warning(config: ServerConfig) -> str:
    """The start-up warning when the gRPC and REST ports listen beyond loopback with neither
    bearer tokens nor TLS ("" when they do not)."""
    if is_loopback(config.host) or config.tls_cert_file or config.auth_tokens_file \
            or config.auth_tokens:
        return ""
    return (f"listening on {config.host or 'every interface'}, beyond loopback, with neither "
            "bearer tokens nor TLS: anyone who reaches these ports can call them; set "
            "auth_tokens_file (or HARDSCORE_AUTH_TOKENS) or tls_cert_file, or --host "
            "127.0.0.1 (docs/security.md)")


def valid_version_policy(text: str) -> bool:
    """True if ``text`` is a version policy (model/repository_layout.py reads it)."""
    kind, _, rest = text.partition(":")
    if kind == "latest":
        return not rest or (rest.isdigit() and int(rest) >= 1)
    if kind == "specific":
        versions = [v.strip() for v in rest.split(",") if v.strip()]
        return bool(versions) and all(v.isdigit() for v in versions)
    return text == "all"


def valid_token(token: str) -> bool:
    """True if ``token`` can travel as a bearer token in gRPC metadata."""
    return bool(token) and all("!" <= ch <= "~" for ch in token) and "," not in token


def _parse(name: str, kind: Any, raw: Any, source: str) -> Any:
    """Converts a raw value (str from env/flags, or a TOML value) to the field's type."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == tuple[int, ...]:
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s.strip()]
            return tuple(int(x) for x in items)
        if kind == tuple[str, ...]:
            items = raw if isinstance(raw, list) else str(raw).split(",")
            if not all(isinstance(x, str) for x in items):
                raise ValueError("expected a list of text values")
            return tuple(s.strip() for s in items if s.strip())
        if kind is int and isinstance(raw, float):
            raise ValueError("expected an integer")
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} from {source}: cannot read {raw!r}: {exc}") from None


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "tuple[int, ...]": tuple[int, ...],
          "tuple[str, ...]": tuple[str, ...]}


def _fields() -> list[tuple[str, Any]]:
    return [(f.name, _TYPES[str(f.type)]) for f in fields(ServerConfig)]


REMOVED = {
    "http_body_budget_bytes": "REST bodies draw on request_budget_bytes now, one budget for "
    "the request bytes of gRPC and REST together: remove http_body_budget_bytes and size "
    "request_budget_bytes for both (a REST body over it less 3 MiB is 413, one that waits "
    "past http_body_timeout_s 503)",
}
"""Settings no longer read, and what to do instead: set anywhere, they stop the server."""

ENV_ONLY = frozenset(f.name for f in fields(ServerConfig) if f.metadata.get("env_only"))
"""Settings taken only from the environment (secrets: not in files or on command lines)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one ``--flag`` per setting (and ``--config FILE``) to ``parser``."""
    parser.add_argument("--config", help="TOML file of settings (keys as the flags, with _)")
    for f in fields(ServerConfig):
        if f.metadata.get("env_only"):  # secrets: never on a command line (ps shows it)
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default}; env {ENV_PREFIX}"
        help_text += f"{f.name.upper()})"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, default=None, nargs="?", const="true",
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)
    for name in REMOVED:  # known, so that using one is told what replaced it
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=argparse.SUPPRESS)


def load_config(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Builds the validated configuration from file, environment and parsed flags."""
    environ = os.environ if environ is None else environ
    flags = vars(args) if args is not None else {}
    values: dict[str, Any] = {}
    config_file = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    known = dict(_fields())
    for name, instead in REMOVED.items():
        if flags.get(name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} was removed: {instead}")
        if ENV_PREFIX + name.upper() in environ:
            raise ConfigError(f"environment {ENV_PREFIX}{name.upper()}: {name} was removed: "
                              f"{instead}")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        for key, raw in data.items():
            if key in REMOVED:
                raise ConfigError(f"config file {config_file}: {key} was removed: "
                                  f"{REMOVED[key]}")
            if key not in known:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            if key in ENV_ONLY:
                raise ConfigError(f"config file {config_file}: {key} is read only from the "
                                  f"environment ({ENV_PREFIX}{key.upper()}); or use "
                                  f"{key}_file")
            values[key] = _parse(key, known[key], raw, f"config file {config_file}")
    for name, kind in known.items():
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            values[name] = _parse(name, kind, environ[env_name], f"environment {env_name}")
    for name, kind in known.items():
        if flags.get(name) is not None:
            values[name] = _parse(name, kind, flags[name], "--" + name.replace("_", "-"))
    return dataclasses.replace(ServerConfig(), **values).validate()


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    """Parses command-line flags (plus file and environment) into a validated ServerConfig."""
    parser = argparse.ArgumentParser(
        prog="hardscore-server",
        description="hardscore scoring service: gRPC (hardscore.v1) + Prometheus metrics.",
        allow_abbrev=False,  # '--auth-tokens SECRET' must not become --auth-tokens-file
    )
    add_arguments(parser)
    return load_config(parser.parse_args(argv))
