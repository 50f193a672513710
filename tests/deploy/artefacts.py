"""What the deployment checks share: where the artefacts are, the tools the dev extra installs,
and the chart's names and ports."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hardscore"
KSERVE = REPO / "helm" / "kserve"
DASHBOARD = CHART / "dashboards" / "hardscore.json"
DOCKERFILE = REPO / "Dockerfile"
INSTALL = REPO / "server" / "install.sh"
BIN = Path(sys.executable).parent

RELEASE, NAMESPACE = "rel", "ml"
FULLNAME = f"{RELEASE}-hardscore"
GRPC_PORT, METRICS_PORT, HEALTH_PORT, HTTP_PORT = 8001, 8002, 8003, 8000
# Settings naming files that exist only inside the pod (mounted volumes and secrets).
POD_FILE_SETTINGS = {"model_dir", "tls_cert_file", "tls_key_file", "tls_client_ca_file",
                     "auth_tokens_file", "metrics_tls_cert_file", "metrics_tls_key_file",
                     "metrics_tls_client_ca_file"}
# Settings the chart owns (from other values), so values.config may not set them.
CHART_SETTINGS = {"host", "port", "http_port", "metrics_host", "metrics_port",
                  "health_port"} | POD_FILE_SETTINGS


def tool(name: str) -> str:
    """A command-line tool installed into this environment by a pip package."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} not found: install the dev extra (pip install -e '.[dev]')"
    return found


def pyproject_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())  # type: ignore[no-any-return]


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())  # type: ignore[no-any-return]


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


