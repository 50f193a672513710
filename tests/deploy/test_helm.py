"""The Helm chart and the KServe manifests, validated without a cluster:

- Helm chart: values.yaml against values.schema.json (jsonschema and Helm's own validator, plus
  values that must be refused); `helm lint --strict`; every template rendered by Helm's Go
  engine itself (helm-python-sdk binds Helm's SDK) for a set of value combinations; each
  rendered object checked field by field against the Kubernetes API types (the kubernetes
  client's models), and for what the chart promises: probes, security, drain timing, GPU,
  model volumes, TLS/auth mounts, selectors; the rendered TOML loaded by the server's own
  configuration loader.
- KServe: the ServingRuntime and InferenceService agree with each other and with the server.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes.client as k8s
import pytest
import yaml

from hardscore_client import ScoringClient, TLSConfig
from hardscore_server.config import (
    CONTROL_MODES,
    ServerConfig,
    add_arguments,
    load_config,
    valid_version_policy,
)

from artefacts import (
    CHART,
    CHART_SETTINGS,
    DASHBOARD,
    FULLNAME,
    GRPC_PORT,
    HEALTH_PORT,
    HTTP_PORT,
    KSERVE,
    METRICS_PORT,
    NAMESPACE,
    POD_FILE_SETTINGS,
    RELEASE,
    REPO,
    chart_meta,
    default_values,
    pyproject_version,
    schema,
)
from pki import make_pki
from server_process import start_server

# The model repository's settings: the chart writes them from modelRepository (values.config may
# not set them); two name files or folders of the pod.
REPOSITORY_FILE_SETTINGS = {"model_repository", "repository_control_tokens_file"}
# modelRepository's values and the settings they become.
REPOSITORY_VALUES = {"controlMode": "model_control_mode", "pollSeconds": "repository_poll_s",
                     "loadModels": "load_model", "versionPolicy": "version_policy",
                     "maxLoadedModels": "max_loaded_models",
                     "memoryLimitBytes": "model_memory_limit_bytes"}
REPOSITORY_SETTINGS = REPOSITORY_FILE_SETTINGS | set(REPOSITORY_VALUES.values())

# ---- Kubernetes objects against the API types ---------------------------------------------------

K8S_KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}
_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT = re.compile(r"^[Dd]ict[\[(]str, (.+)[\])]$")


def api_type_errors(value: Any, type_name: str, path: str = "") -> list[str]:
    """Fields unknown to the Kubernetes type, or of the wrong JSON kind, recursively."""
    if match := _LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value)
                for e in api_type_errors(item, match[1], f"{path}[{i}]")]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r}"]
        return [e for key, item in value.items()
                for e in api_type_errors(item, match[1], f"{path}.{key}")]
    checks: dict[str, Any] = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "object": lambda v: True,
        "bytes": lambda v: isinstance(v, str),
        "datetime": lambda v: isinstance(v, str),
    }
    if type_name in checks:
        return [] if checks[type_name](value) else [f"{path}: expected {type_name}, got {value!r}"]
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} object, got {value!r}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        else:
            errors += api_type_errors(item, model.openapi_types[by_json[key]], f"{path}.{key}")
    return errors


def check_api_object(obj: dict[str, Any]) -> None:
    """Known fields of the right kinds, and the required ones present (the client's models)."""
    type_name = K8S_KINDS[(obj["apiVersion"], obj["kind"])]
    errors = api_type_errors(obj, type_name, obj["kind"])
    assert not errors, "\n".join(errors)
    getattr(k8s, type_name).from_dict(obj)  # raises on a missing required field or bad value


# ---- Helm chart --------------------------------------------------------------------------------


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart rendered by Helm's engine: every object, NOTES excluded."""
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    with helm_python.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "hardscore")  # type: ignore[no-any-return]


def settings(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(objects, "ConfigMap", FULLNAME)
    return tomllib.loads(config_map["data"]["hardscore.toml"])


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": {"gpu": {"enabled": True, "runtimeClassName": "nvidia"}},
    "pvc": {"model": {"source": "pvc", "pvc": {"claimName": "models"}, "subPath": "cifar10"}},
    "hostPath": {"model": {"source": "hostPath", "hostPath": {"path": "/srv/models/cifar10"}}},
    "emptyDir": {"model": {"source": "emptyDir", "subPath": "m", "initContainer": {
        "image": "amazon/aws-cli:2.17.0",
        "command": ["aws", "s3", "cp", "--recursive", "s3://bucket/cifar10", "/models/m"]}}},
    "image-dir": {"model": {"source": "image", "dir": "/opt/models/cifar10"}},
    "autoscaling": {"autoscaling": {
        "enabled": True, "targetMemoryUtilizationPercentage": 80,
        "extraMetrics": [{"type": "Pods", "pods": {
            "metric": {"name": "hardscore_queue_depth"},
            "target": {"type": "AverageValue", "averageValue": "64"}}}]}},
    "autoscaling-load": {"autoscaling": {
        "enabled": True, "targetCPUUtilizationPercentage": 0,
        "queueDepth": {"enabled": True, "targetAverageValue": 48},
        "batchFill": {"enabled": True, "metricName": "scoring_batch_fill",
                      "targetAverageValue": "22.5"}}},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True,
                                                  "labels": {"release": "prometheus"}}},
                   "dashboards": {"namespace": "monitoring",
                                  "annotations": {"grafana_folder": "ML"}}},
    "tls-auth": {"tls": {"enabled": True, "secretName": "hardscore-tls",
                         "clientCA": {"enabled": True}},
                 "auth": {"enabled": True, "secretName": "hardscore-tokens"}},
    "tls-exec": {"tls": {"enabled": True, "secretName": "hardscore-tls",
                         "clientCA": {"enabled": True}},
                 "probes": {"mode": "exec"}},
    "metrics-tls": {"tls": {"enabled": True, "secretName": "hardscore-tls",
                            "clientCA": {"enabled": True}},
                    "metrics": {"tls": {"enabled": True, "clientCA": True},
                                "serviceMonitor": {"enabled": True, "tlsConfig": {
                                    "serverName": "hardscore.scoring.svc",
                                    "ca": {"secret": {"name": "hardscore-tls",
                                                      "key": "ca.crt"}}}}}},
    "tls-only": {"tls": {"enabled": True, "secretName": "hardscore-tls",
                         "probe": {"serverName": "scoring.example.com"}},
                 "probes": {"mode": "exec"}},
    "minimal": {"service": {"headless": False}, "podDisruptionBudget": {"enabled": False},
                "dashboards": {"enabled": False}, "serviceAccount": {"create": False},
                "drain": {"preStopSleepSeconds": 0, "marginSeconds": 0},
                "topologySpread": {"enabled": False}, "metrics": {"podAnnotations": False},
                "resources": None, "probes": {"mode": "tcp"}},
    "label-studio": {"labelStudio": {"enabled": True, "url": "http://label-studio.lab.svc:8080",
                                     "existingSecret": "hardscore-label-studio",
                                     "basicAuthUser": "labelstudio"}},
    "label-studio-tls-auth": {
        "tls": {"enabled": True, "secretName": "hardscore-tls", "clientCA": {"enabled": True}},
        "auth": {"enabled": True, "secretName": "hardscore-tokens"},
        "labelStudio": {"enabled": True, "url": "https://label-studio.example.com",
                        "existingSecret": "hardscore-label-studio", "basicAuthUser": "ls",
                        "port": 9191, "score": "margin", "qa": False, "batchSize": 16,
                        "fetchConcurrency": 4, "maxImageMB": 2.5, "fetchTimeoutSeconds": 7.5,
                        "predictDeadlineSeconds": 45}},
    "label-studio-open": {"labelStudio": {"enabled": True, "url": "http://ls:8080",
                                          "existingSecret": "ls-keys", "unauthenticated": True,
                                          "resources": None},
                          "drain": {"preStopSleepSeconds": 0}},
    # A repository on a PVC that a training job writes new versions to, polled; with workers and
    # the HPA (poll works with both: each worker, each pod polls for itself).
    "repository-poll": {"model": {"source": "pvc", "pvc": {"claimName": "model-repo"},
                                  "subPath": "classifiers"},
                        "modelRepository": {"enabled": True, "controlMode": "poll",
                                            "pollSeconds": 30, "versionPolicy": "latest:2",
                                            "maxLoadedModels": 4,
                                            "memoryLimitBytes": 1073741824},
                        "config": {"workers": 2},
                        "autoscaling": {"enabled": True}},
    # A repository baked into a derived image, loaded and unloaded through the repository API
    # with control tokens of their own, beside TLS and inference tokens.
    "repository-explicit": {"model": {"source": "image", "dir": "/opt/hardscore/repository"},
                            "modelRepository": {"enabled": True, "controlMode": "explicit",
                                                "loadModels": ["digits", "cifar10"],
                                                "versionPolicy": "specific:1,3",
                                                "controlTokens": {
                                                    "secretName": "hardscore-control",
                                                    "key": "control-tokens"}},
                            "tls": {"enabled": True, "secretName": "hardscore-tls"},
                            "auth": {"enabled": True, "secretName": "hardscore-tokens"},
                            "replicaCount": 1},
    "settings": {"config": {"max_batch_size": 64, "preferred_batch_sizes": [16, 32, 64],
                            "max_queue_delay_ms": 4.5, "grace_period_s": 12.5,
                            "allow_spinning": True, "log_level": "DEBUG",
                            "max_message_bytes": 134217728, "instances": 2},
                 "env": [{"name": "OMP_WAIT_POLICY", "value": "PASSIVE"}],
                 "podDisruptionBudget": {"minAvailable": 1}},
}


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with overrides, as Helm merges them (maps deeply; null deletes a key)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
            return {k: v for k, v in out.items() if v is not None or k not in over}
        return over
    return merge(default_values(), overrides)  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield request.param, render(SCENARIOS[request.param])


def test_chart_metadata() -> None:
    meta = chart_meta()
    assert meta["apiVersion"] == "v2" and meta["name"] == "hardscore"
    assert meta["appVersion"] == pyproject_version(), "the chart deploys this release"
    expected = {"_helpers.tpl", "NOTES.txt", "configmap.yaml", "deployment.yaml", "service.yaml",
                "hpa.yaml", "pdb.yaml", "servicemonitor.yaml", "dashboards.yaml",
                "serviceaccount.yaml"}
    assert {p.name for p in (CHART / "templates").iterdir()} == expected


def test_every_yaml_file_parses() -> None:
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *KSERVE.glob("*.yaml")]
    assert len(files) == 4
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_values_match_the_schema() -> None:
    validator = jsonschema.Draft7Validator(schema())
    jsonschema.Draft7Validator.check_schema(schema())
    errors = [e.message for e in validator.iter_errors(default_values())]
    assert not errors, errors
    for name, overrides in SCENARIOS.items():
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(merged(overrides))]
        assert not errors, (name, errors)


REFUSED: dict[str, dict[str, Any]] = {
    "unknown value": {"replicas": 3},
    "negative replicas": {"replicaCount": -1},
    "model source": {"model": {"source": "s3"}},
    "pvc without a claim": {"model": {"source": "pvc"}},
    "hostPath without a path": {"model": {"source": "hostPath"}},
    "emptyDir without a fetcher": {"model": {"source": "emptyDir"}},
    "relative mount": {"model": {"source": "pvc", "pvc": {"claimName": "m"},
                                 "mountPath": "models"}},
    "chart-owned setting": {"config": {"port": 9000}},
    "chart-owned model_dir": {"config": {"model_dir": "/m"}},
    "bad provider": {"config": {"execution_provider": "tpu"}},
    "zero batch": {"config": {"max_batch_size": 0}},
    "fractional batch": {"config": {"max_batch_size": 2.5}},
    "nested setting": {"config": {"extra": {"a": 1}}},
    "zero GPUs": {"gpu": {"enabled": True, "count": 0}},
    "probe mode": {"probes": {"mode": "http"}},
    "tls without a secret": {"tls": {"enabled": True}},
    "auth without a secret": {"auth": {"enabled": True}},
    "port range": {"ports": {"grpc": 70000}},
    "pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad quantity": {"resources": {"limits": {"cpu": "two"}}},
    "scrape interval": {"metrics": {"serviceMonitor": {"interval": "often"}}},
    "label studio without basic auth": {"labelStudio": {
        "enabled": True, "url": "http://ls:8080", "existingSecret": "ls"}},
    "label studio without a secret": {"labelStudio": {
        "enabled": True, "url": "http://ls:8080", "basicAuthUser": "ls"}},
    "label studio without a url": {"labelStudio": {
        "enabled": True, "existingSecret": "ls", "basicAuthUser": "ls"}},
    "label studio unauthenticated with a user": {"labelStudio": {
        "enabled": True, "url": "http://ls:8080", "existingSecret": "ls",
        "basicAuthUser": "ls", "unauthenticated": True}},
    "label studio user with a colon": {"labelStudio": {
        "enabled": True, "url": "http://ls:8080", "existingSecret": "ls",
        "basicAuthUser": "a:b"}},
    "label studio score": {"labelStudio": {"score": "entropy"}},
    "label studio url scheme": {"labelStudio": {"url": "ls:8080"}},
    "label studio zero batch": {"labelStudio": {"batchSize": 0}},
    "label studio password value": {"labelStudio": {"password": "secret"}},
    "queue depth target zero": {"autoscaling": {"queueDepth": {"targetAverageValue": 0}}},
    "queue depth target text": {"autoscaling": {"queueDepth": {"targetAverageValue": "many"}}},
    "batch fill metric name": {"autoscaling": {"batchFill": {"metricName": "batch fill"}}},
    "batch fill unknown key": {"autoscaling": {"batchFill": {"target": 24}}},
    "chart-owned repository setting": {"config": {"model_repository": "/models"}},
    "chart-owned control mode": {"config": {"model_control_mode": "poll"}},
    "control tokens in the values": {"config": {"repository_control_tokens": "t0k3n"}},
    "control mode": {"modelRepository": {"enabled": True, "controlMode": "watch"}},
    "version policy": {"modelRepository": {"versionPolicy": "newest"}},
    "version policy latest:0": {"modelRepository": {"versionPolicy": "latest:0"}},
    "version policy without versions": {"modelRepository": {"versionPolicy": "specific:"}},
    "zero poll interval": {"modelRepository": {"pollSeconds": 0}},
    "negative loaded models": {"modelRepository": {"maxLoadedModels": -1}},
    "fractional memory limit": {"modelRepository": {"memoryLimitBytes": 1.5}},
    "model list with a comma": {"modelRepository": {"loadModels": ["a,b"]}},
    "control token value": {"modelRepository": {"controlTokens": {"token": "t0k3n"}}},
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_schema_refuses_bad_values(case: str) -> None:
    values = merged(REFUSED[case])
    assert list(jsonschema.Draft7Validator(schema()).iter_errors(values)), case
    with helm_python.Chart.load(str(CHART)) as chart, pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(REFUSED[case])


def test_schema_settings_are_server_settings() -> None:
    config_schema = schema()["properties"]["config"]
    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    json_types = {"str": {"string"}, "int": {"integer"}, "float": {"number"},
                  "bool": {"boolean"}, "tuple[int, ...]": {"array"}}
    for name, spec in config_schema["properties"].items():
        assert name in fields, f"config.{name} is not a server setting"
        assert {spec["type"]} <= json_types[str(fields[name].type)], name
    owned = set(config_schema["propertyNames"]["not"]["enum"])
    secrets = {name for name, f in fields.items() if f.metadata.get("env_only")}
    assert secrets == {"auth_tokens", "repository_control_tokens"}
    assert owned == CHART_SETTINGS | REPOSITORY_SETTINGS | secrets
    assert set(fields) - set(config_schema["properties"]) == owned, \
        "every other server setting is described by the schema"
    # Every default in values.yaml is the server's default, except where the chart says why.
    for name, value in default_values()["config"].items():
        if name != "intra_op_threads":
            assert value == fields[name].default, name
    # modelRepository's values: the server's types, ranges and defaults.
    repository = default_values()["modelRepository"]
    repository_schema = schema()["properties"]["modelRepository"]["properties"]
    for value_name, name in REPOSITORY_VALUES.items():
        default = fields[name].default
        assert (tuple(repository[value_name]) if isinstance(default, tuple)
                else repository[value_name]) == default, value_name
        if value_name != "controlMode":
            kind = {"array"} if isinstance(default, tuple) else json_types[str(fields[name].type)]
            assert {repository_schema[value_name]["type"]} <= kind, value_name
    assert set(repository_schema["controlMode"]["enum"]) == set(CONTROL_MODES)


def test_version_policy_schema_is_the_servers() -> None:
    pattern = re.compile(schema()["properties"]["modelRepository"]["properties"]
                         ["versionPolicy"]["pattern"])
    for policy in ("latest", "latest:1", "latest:12", "latest:01", "all", "specific:1",
                   "specific:1,3", "specific:1, 3", "latest:0", "latest:", "latest:-1",
                   "newest", "all:2", "specific:", "specific:a", "specific:1 3", "Latest", ""):
        assert bool(pattern.search(policy)) == valid_version_policy(policy), policy


def test_helm_lint_strict() -> None:
    report = helm_python.lint(str(CHART), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_rendered_objects_are_valid_api_objects(
    scenario: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = scenario
    report = helm_python.lint(str(CHART), SCENARIOS[name], strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2]
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in K8S_KINDS:
            check_api_object(obj)
        else:
            assert obj["kind"] == "ServiceMonitor", obj["kind"]
        assert obj["metadata"]["name"].startswith(FULLNAME)
        assert len(obj["metadata"]["name"]) <= 63
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == pyproject_version()


def test_rendered_deployment_keeps_its_promises(
    scenario: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = scenario
    values = merged(SCENARIOS[name])
    deployment = one(objects, "Deployment", FULLNAME)
    pod_template = deployment["spec"]["template"]
    pod = pod_template["spec"]
    container = server_container(objects)
    pod_labels = pod_template["metadata"]["labels"]

    # Selectors of every object select these pods.
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for service in (o for o in objects if o["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        port_names = {p["name"] for c in pod["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # Ports and probes: with TLS on, the native gRPC probes check the plaintext health port.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = settings(objects)
    assert (config["port"], config["metrics_port"]) == (GRPC_PORT, METRICS_PORT)
    assert config["http_port"] == HTTP_PORT
    health_port_on = values["tls"]["enabled"] and values["probes"]["mode"] == "grpc"
    if health_port_on:
        assert ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "metrics": METRICS_PORT,
                         "health": HEALTH_PORT}
        assert config["health_port"] == HEALTH_PORT
    else:
        assert ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "metrics": METRICS_PORT}
        assert "health_port" not in config
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        handler = container[probe]
        if "grpc" in handler:
            assert handler["grpc"] == {"port": HEALTH_PORT if health_port_on else GRPC_PORT}
        elif "exec" in handler:
            command = handler["exec"]["command"]
            assert command[:5] == ["python", "-m", "hardscore_server.tools.health_probe",
                                   "--server", f"127.0.0.1:{GRPC_PORT}"]
        else:
            assert handler["tcpSocket"] == {"port": "grpc"}
    grace = config.get("grace_period_s", 30)
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace, \
        "liveness must not cut a drain short"

    # Drain: preStop pause + the server's grace period + margin.
    drain = values["drain"]
    expected = drain["preStopSleepSeconds"] + math.ceil(grace) + drain["marginSeconds"]
    assert pod["terminationGracePeriodSeconds"] == expected
    assert pod["terminationGracePeriodSeconds"] >= grace
    if drain["preStopSleepSeconds"]:
        assert container["lifecycle"]["preStop"]["exec"]["command"] == [
            "sleep", str(drain["preStopSleepSeconds"])]
    else:
        assert "lifecycle" not in container

    # Security: non-root, read-only root filesystem, nothing privileged, /tmp writable; the
    # same for every container of the pod (the Label Studio sidecar too).
    assert [c["name"] for c in pod["containers"]] == (
        ["hardscore", "label-studio"] if values["labelStudio"]["enabled"] else ["hardscore"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for each in pod["containers"]:
        security = each["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        each_mounts = {m["mountPath"]: m for m in each["volumeMounts"]}
        assert "emptyDir" in volumes[each_mounts["/tmp"]["name"]]
        for mount in each["volumeMounts"]:
            assert mount["name"] in volumes
            assert mount.get("readOnly") or mount["mountPath"] == "/tmp", mount
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for init in pod.get("initContainers", []):
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert all(m["name"] in volumes for m in init["volumeMounts"])

    # Configuration file: mounted where HARDSCORE_CONFIG points, with the chart's file name.
    env = {e["name"]: e.get("value") for e in container["env"]}
    config_path = Path(env["HARDSCORE_CONFIG"])
    config_mount = mounts[str(config_path.parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == FULLNAME
    assert env["HARDSCORE_PORT"] == str(GRPC_PORT)
    annotations = pod_template["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])

    # Replicas belong to the HPA when it is on.
    if values["autoscaling"]["enabled"]:
        assert "replicas" not in deployment["spec"]
        hpa = one(objects, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    else:
        assert deployment["spec"]["replicas"] == values["replicaCount"]
        assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def loadable(config: dict[str, Any], tmp_path: Path) -> ServerConfig:
    """The rendered settings through the server's own loader (files that exist only in the pod
    left out, the repository's stood in for here)."""
    config = {k: v for k, v in config.items() if k not in POD_FILE_SETTINGS}
    if "model_repository" in config:
        config["model_repository"] = str(tmp_path)
    if "repository_control_tokens_file" in config:
        config["repository_control_tokens_file"] = str(tmp_path / "control-tokens")
        (tmp_path / "control-tokens").write_text("a-control-token\n")
    lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    path = tmp_path / "hardscore.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(None, {"HARDSCORE_CONFIG": str(path)})


def test_rendered_configuration_loads_in_the_server(
    scenario: tuple[str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    name, objects = scenario
    values = merged(SCENARIOS[name])
    text = one(objects, "ConfigMap", FULLNAME)["data"]["hardscore.toml"]
    config = tomllib.loads(text)
    known = {f.name for f in dataclasses.fields(ServerConfig)}
    assert set(config) <= known, set(config) - known
    in_image = {"model_dir", "model_repository"} if values["model"]["source"] == "image" \
        else set()
    in_volumes = (POD_FILE_SETTINGS | REPOSITORY_FILE_SETTINGS) - in_image
    for name in in_volumes & set(config):  # each file lies in a volume of the pod
        mounts = server_container(objects)["volumeMounts"]
        assert any(config[name].startswith(m["mountPath"].rstrip("/") + "/")
                   or config[name] == m["mountPath"] for m in mounts), name
    loaded = loadable(config, tmp_path)
    for key, value in values["config"].items():
        if key != "intra_op_threads":
            expected = tuple(value) if isinstance(value, list) else value
            assert getattr(loaded, key) == expected, key
    assert loaded.host == "0.0.0.0" and loaded.metrics_host == "0.0.0.0"


def test_cpu_defaults() -> None:
    objects = render()
    assert kinds(objects) == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget",
                              "Service", "Service", "ServiceAccount"]
    container = server_container(objects)
    assert container["image"] == f"hardscore:{pyproject_version()}"
    config = settings(objects)
    assert config["execution_provider"] == "cpu"
    assert "model_dir" not in config, "the embedded default model"
    assert config["intra_op_threads"] == 2, "the CPU limit, not the node's cores"
    assert not any("gpu" in key for key in container["resources"].get("limits", {}))
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod and "tolerations" not in pod
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 10
    headless = one(objects, "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


def test_gpu_switch() -> None:
    objects = render(SCENARIOS["gpu"])
    container = server_container(objects)
    assert container["image"] == f"hardscore:{pyproject_version()}-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert settings(objects)["execution_provider"] == "cuda"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    explicit = render({"gpu": {"enabled": True, "count": 2}, "image": {"gpuTag": "cu12"},
                       "config": {"execution_provider": "auto"}})
    assert server_container(explicit)["image"] == "hardscore:cu12"
    assert server_container(explicit)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert settings(explicit)["execution_provider"] == "auto"


def test_model_volumes() -> None:
    pvc = render(SCENARIOS["pvc"])
    pod = one(pvc, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert settings(pvc)["model_dir"] == "/models/cifar10"
    host = render(SCENARIOS["hostPath"])
    pod = one(host, "Deployment")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["model"]["hostPath"] == {
        "path": "/srv/models/cifar10", "type": "Directory"}
    assert settings(host)["model_dir"] == "/models"
    fetched = render(SCENARIOS["emptyDir"])
    pod = one(fetched, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "amazon/aws-cli:2.17.0"
    assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"], "writable there"
    assert {"name": "MODEL_DIR", "value": "/models/m"} in init["env"]
    assert settings(fetched)["model_dir"] == "/models/m"
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["model"]
    baked = render(SCENARIOS["image-dir"])
    assert settings(baked)["model_dir"] == "/opt/models/cifar10"
    assert "model" not in {v["name"] for v in one(baked, "Deployment")["spec"]["template"]
                           ["spec"]["volumes"]}


def test_model_repository_from_a_pvc_polled() -> None:
    objects = render(SCENARIOS["repository-poll"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in server_container(objects)["volumeMounts"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "model-repo",
                                                         "readOnly": True}
    assert mounts["model"] == {"name": "model", "mountPath": "/models", "readOnly": True}
    config = settings(objects)
    assert "model_dir" not in config, "model_dir and model_repository exclude each other"
    assert {k: config[k] for k in REPOSITORY_SETTINGS & set(config)} == {
        "model_repository": "/models/classifiers", "model_control_mode": "poll",
        "repository_poll_s": 30, "version_policy": "latest:2", "max_loaded_models": 4,
        "model_memory_limit_bytes": 1073741824}
    # No control in poll mode: no control tokens, no Secret.
    assert "control-tokens" not in volumes and "control-tokens" not in mounts
    # The HPA and the probes as without a repository (health answers before any model loads).
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    container = server_container(objects)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORT}
    text = notes(SCENARIOS["repository-poll"])
    assert "model repository: /models/classifiers (pvc), control mode poll" in text
    assert "hardscore-control-token" not in text
    # The other modes write only their own settings.
    none = settings(render({**SCENARIOS["repository-poll"],
                            "modelRepository": {"enabled": True}}))
    assert none["model_control_mode"] == "none" and "repository_poll_s" not in none
    assert not REPOSITORY_SETTINGS & set(settings(render(SCENARIOS["pvc"])))


def test_model_repository_explicit_with_control_tokens() -> None:
    objects = render(SCENARIOS["repository-explicit"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in server_container(objects)["volumeMounts"]}
    config = settings(objects)
    # The repository baked into the image: no volume for it.
    assert "model" not in volumes and "model" not in mounts
    assert config["model_repository"] == "/opt/hardscore/repository"
    assert (config["model_control_mode"], config["version_policy"]) == ("explicit", "specific:1,3")
    # A comma list: the server reads list settings from the file as one string.
    assert config["load_model"] == "digits,cifar10"
    assert "repository_poll_s" not in config
    # The control tokens: their own Secret, mounted read-only apart from the inference tokens.
    assert volumes["control-tokens"]["secret"] == {"secretName": "hardscore-control",
                                                   "defaultMode": 0o440}
    assert mounts["control-tokens"]["readOnly"] is True
    assert config["repository_control_tokens_file"] == \
        f"{mounts['control-tokens']['mountPath']}/control-tokens"
    assert volumes["auth"]["secret"]["secretName"] == "hardscore-tokens"
    assert mounts["auth"]["mountPath"] != mounts["control-tokens"]["mountPath"]
    assert config["auth_tokens_file"] != config["repository_control_tokens_file"]
    assert not any("CONTROL_TOKENS" in e["name"] for e in server_container(objects)["env"])
    text = notes(SCENARIOS["repository-explicit"])
    assert "hardscore-control-token" in text and "Secret hardscore-control" in text
    assert "every pod" not in text, "one replica"
    assert "every pod" in notes({**SCENARIOS["repository-explicit"], "replicaCount": 3})


@pytest.mark.parametrize(("values", "message"), [
    ({"modelRepository": {"enabled": True, "controlMode": "explicit"},
      "model": {"source": "pvc", "pvc": {"claimName": "models"}}},
     "controlMode explicit needs modelRepository.controlTokens.secretName"),
    ({"modelRepository": {"enabled": True, "controlMode": "explicit",
                          "controlTokens": {"secretName": "control"}},
      "model": {"source": "pvc", "pvc": {"claimName": "models"}}, "config": {"workers": 2}},
     r"controlMode explicit needs config.workers 1 \(it is 2\)"),
    ({"modelRepository": {"enabled": True}}, "modelRepository.enabled needs the repository's"),
    ({"modelRepository": {"controlMode": "poll"}},
     "controlMode poll needs modelRepository.enabled"),
], ids=["explicit without control tokens", "explicit with workers", "no folder",
        "mode without a repository"])
def test_model_repository_refusals(values: dict[str, Any], message: str) -> None:
    """What the server would refuse at start is refused at render, saying why."""
    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)  # the values are well-formed: the template refuses them
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)


def test_tls_and_auth_mount_secrets() -> None:
    objects = render(SCENARIOS["tls-auth"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = server_container(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = settings(objects)
    for setting, volume, secret, key in (
        ("tls_cert_file", "tls", "hardscore-tls", "tls.crt"),
        ("tls_key_file", "tls", "hardscore-tls", "tls.key"),
        ("tls_client_ca_file", "client-ca", "hardscore-tls", "ca.crt"),
        ("auth_tokens_file", "auth", "hardscore-tokens", "tokens"),
    ):
        assert volumes[volume]["secret"]["secretName"] == secret
        assert config[setting] == f"{mounts[volume]}/{key}"
    # Native probes on the plaintext health-only port (the kubelet cannot do TLS).
    assert config["health_port"] == HEALTH_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": HEALTH_PORT}
    assert {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"} in \
        container["ports"]
    service_ports = {p["port"] for o in objects if o["kind"] == "Service"
                     for p in o["spec"]["ports"]}
    assert HEALTH_PORT not in service_ports, "probes reach the pod directly"


def test_metrics_tls_uses_the_grpc_certificate() -> None:
    objects = render(SCENARIOS["metrics-tls"])
    config = settings(objects)
    for setting, grpc_setting in (("metrics_tls_cert_file", "tls_cert_file"),
                                  ("metrics_tls_key_file", "tls_key_file"),
                                  ("metrics_tls_client_ca_file", "tls_client_ca_file")):
        assert config[setting] == config[grpc_setting], setting
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "hardscore.scoring.svc"
    plain = render(SCENARIOS["monitoring"])
    assert "scheme" not in one(plain, "ServiceMonitor")["spec"]["endpoints"][0]
    assert "prometheus.io/scheme" not in one(plain, "Deployment")["spec"]["template"][
        "metadata"]["annotations"]
    assert not {k for k in settings(plain) if k.startswith("metrics_tls")}
    for values, needs in (({"metrics": {"tls": {"enabled": True}}}, "needs tls.enabled"),
                          ({"tls": {"enabled": True, "secretName": "s"},
                            "metrics": {"tls": {"enabled": True, "clientCA": True}}},
                           "needs tls.clientCA.enabled")):
        with pytest.raises(Exception, match=needs):
            render(values)


def test_exec_probes_check_the_tls_endpoint() -> None:
    objects = render(SCENARIOS["tls-exec"])
    container = server_container(objects)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "health_port" not in settings(objects)
    command = container["readinessProbe"]["exec"]["command"]
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags == {
        "--tls-ca-file": f"{mounts['tls']}/ca.crt",
        "--tls-server-name": f"{FULLNAME}.{NAMESPACE}.svc",
        "--tls-cert-file": f"{mounts['tls']}/tls.crt",
        "--tls-key-file": f"{mounts['tls']}/tls.key",
    }
    # The flags are the health check's own.
    from hardscore_server.tools import health_probe as health

    parser = argparse.ArgumentParser()
    health.add_arguments(parser)
    parser.parse_args(command[3:])

    tls_only = render(SCENARIOS["tls-only"])
    command = server_container(tls_only)["livenessProbe"]["exec"]["command"]
    assert "--tls-cert-file" not in command
    assert command[command.index("--tls-server-name") + 1] == "scoring.example.com"
    assert "tls_client_ca_file" not in settings(tls_only)
    assert "auth_tokens_file" not in settings(tls_only)
    plain = render({"probes": {"mode": "exec"}})
    assert server_container(plain)["readinessProbe"]["exec"]["command"] == [
        "python", "-m", "hardscore_server.tools.health_probe", "--server", f"127.0.0.1:{GRPC_PORT}"]


def test_threads_follow_the_cpu_limit() -> None:
    def threads(values: dict[str, Any]) -> int:
        return int(settings(render(values))["intra_op_threads"])

    assert threads({"resources": {"limits": {"cpu": "1500m"}}}) == 1
    assert threads({"resources": {"limits": {"cpu": "250m"}}}) == 1
    assert threads({"resources": {"limits": {"cpu": 8}, "requests": {"cpu": "1"}},
                    "config": {"instances": 2}}) == 4
    assert threads({"resources": {"requests": {"cpu": "6"}, "limits": {"cpu": None}}}) == 6
    assert threads({"resources": None}) == 0, "no CPU figure: the server decides"
    assert threads({"config": {"intra_op_threads": 3}}) == 3


def test_optional_objects() -> None:
    assert kinds(render(SCENARIOS["minimal"])) == ["ConfigMap", "Deployment", "Service"]
    monitoring = render(SCENARIOS["monitoring"])
    monitor = one(monitoring, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects the main Service only (the headless one has no metrics port anyway).
    services = [o for o in monitoring if o["kind"] == "Service"]
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    selected = [s for s in services if wanted <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [FULLNAME]
    dashboards = one(monitoring, "ConfigMap", f"{FULLNAME}-dashboards")
    assert dashboards["metadata"]["namespace"] == "monitoring"
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(dashboards["data"]["hardscore.json"]) == json.loads(DASHBOARD.read_text())
    hpa = one(render(SCENARIOS["autoscaling"]), "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Resource", "Pods"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    pdb = one(render(SCENARIOS["settings"]), "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}


ADAPTER_MARKERS = {"<<.Series>>": "hardscore_queue_depth",
                   "<<.LabelMatchers>>": 'namespace="ml",pod=~"scoring-.*"',
                   "<<.GroupBy>>": "pod"}
"""What the Prometheus adapter puts in place of its template markers."""


def test_autoscaling_on_queue_depth_or_batch_fill() -> None:
    """The chart scales on the server's load (Pods metrics), with or without CPU; the adapter
    rules in docs/deployment.md parse, read metrics the server exports, and name the metrics
    as the chart's defaults expect."""
    import promql_parser
    from kubernetes.utils import parse_quantity
    from prometheus_client import generate_latest

    from hardscore_server.metrics import ServerMetrics

    hpa = one(render(SCENARIOS["autoscaling-load"]), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        {"type": "Pods", "pods": {"metric": {"name": "hardscore_queue_depth"},
                                  "target": {"type": "AverageValue", "averageValue": "48"}}},
        {"type": "Pods", "pods": {"metric": {"name": "scoring_batch_fill"},
                                  "target": {"type": "AverageValue", "averageValue": "22.5"}}},
    ]
    for metric in hpa["spec"]["metrics"]:  # Kubernetes quantities
        assert parse_quantity(metric["pods"]["target"]["averageValue"]) > 0
    queue_only = render({"autoscaling": {"enabled": True,
                                         "queueDepth": {"enabled": True}}})
    assert [m["type"] for m in one(queue_only, "HorizontalPodAutoscaler")["spec"]["metrics"]] \
        == ["Resource", "Pods"]  # beside CPU (70%)
    # Off by default: CPU only.
    default_hpa = one(render({"autoscaling": {"enabled": True}}), "HorizontalPodAutoscaler")
    assert [m["type"] for m in default_hpa["spec"]["metrics"]] == ["Resource"]

    section = (REPO / "docs" / "deployment.md").read_text().split(
        "### Autoscaling on queue depth or batch fill")[1]
    rules = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])["rules"]["custom"]
    defaults = default_values()["autoscaling"]
    assert [r["name"]["as"] for r in rules] == [defaults["queueDepth"]["metricName"],
                                                defaults["batchFill"]["metricName"]]
    metrics = ServerMetrics()
    metrics.queue_depth.labels("m").set(3)
    metrics.batch_size.labels("m").observe(16)
    exported = {line.split("{")[0] for line in generate_latest(metrics.registry).decode()
                .splitlines() if line and not line.startswith("#")}
    for rule in rules:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                  "pod": {"resource": "pod"}}
        query = rule["metricsQuery"]
        for marker, text in ADAPTER_MARKERS.items():
            query = query.replace(marker, text)
        assert "<<" not in query
        promql_parser.parse(query)  # raises on a syntax error
        promql_parser.parse(rule["seriesQuery"])
        used = set(re.findall(r"\b(hardscore_[a-z_]+)\{", query + rule["seriesQuery"]))
        assert used and used <= exported, used - exported


def test_notes() -> None:
    text = notes()
    assert f"dns:///{FULLNAME}-headless.{NAMESPACE}.svc:{GRPC_PORT}" in text
    assert "round_robin" in text and "embedded default model" in text
    assert f"{HTTP_PORT}:{HTTP_PORT}" in text  # the REST port is forwarded too
    assert f"curl -s localhost:{HTTP_PORT}/v2/health/ready" in text
    text = notes(SCENARIOS["gpu"] | SCENARIOS["tls-auth"] | SCENARIOS["pvc"])
    assert "GPU image" in text and "TLS is on" in text and "/models/cifar10 (pvc)" in text


def test_docs_describe_every_value() -> None:
    section = (REPO / "docs" / "deployment.md").read_text()
    missing = []
    for key, value in default_values().items():
        paths = [key]
        if isinstance(value, dict) and key not in ("config", "podSecurityContext",
                                                   "securityContext", "affinity"):
            paths = [f"{key}.{sub}" for sub in value] or [key]
        missing += [p for p in paths if f"`{p}" not in section]
    assert not missing, f"docs/deployment.md does not describe: {missing}"


# ---- the Label Studio sidecar -------------------------------------------------------------------


def sidecar(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (found,) = [c for c in pod["containers"] if c["name"] == "label-studio"]
    return found  # type: ignore[no-any-return]


def secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key), for those taken from Secrets."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]
                        ["key"]) for e in container["env"] if "secretKeyRef" in
            e.get("valueFrom", {})}


def test_label_studio_sidecar_is_off_by_default() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["hardscore"]
    for service in (o for o in objects if o["kind"] == "Service"):
        assert "label-studio" not in {p["name"] for p in service["spec"]["ports"]}
    assert "Label Studio" not in notes()


def test_label_studio_sidecar() -> None:
    objects = render(SCENARIOS["label-studio"])
    container = sidecar(objects)
    assert container["image"] == server_container(objects)["image"] == (
        f"hardscore:{pyproject_version()}")
    assert container["command"] == ["hardscore", "label-studio"]
    assert container["args"] == [
        "--server", f"127.0.0.1:{GRPC_PORT}", "--host", "0.0.0.0", "--port", "9090",
        "--label-studio-url", "http://label-studio.lab.svc:8080", "--score", "hardness",
        "--batch-size", "64", "--fetch-concurrency", "8", "--max-image-mb", "8",
        "--fetch-timeout", "20", "--predict-deadline", "90", "--basic-auth-user", "labelstudio"]
    # Secrets only from the Secret, never as values or flags.
    assert container["env"] == [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": "hardscore-label-studio",
                                                      "key": name}}}
        for name in ("LABEL_STUDIO_API_KEY", "HARDSCORE_LABEL_STUDIO_PASSWORD")]
    assert container["ports"] == [
        {"name": "label-studio", "containerPort": 9090, "protocol": "TCP"}]
    health = {"httpGet": {"path": "/health", "port": "label-studio"}}
    assert container["startupProbe"] == health | merged({})["probes"]["startup"]
    assert container["readinessProbe"] == health | {
        "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    assert container["livenessProbe"] == health | {
        "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
    assert container["lifecycle"] == server_container(objects)["lifecycle"]
    assert container["securityContext"] == server_container(objects)["securityContext"] == (
        merged({})["securityContext"])
    assert container["resources"] == merged({})["labelStudio"]["resources"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    service = one(objects, "Service", FULLNAME)
    assert service["spec"]["ports"][-1] == {
        "name": "label-studio", "port": 9090, "targetPort": "label-studio", "protocol": "TCP"}
    headless = one(objects, "Service", f"{FULLNAME}-headless")
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]

    # The flags are the command's own, and parse to the values.
    from hardscore_client.cli import build_parser

    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert (args.server, args.host, args.port, args.score, args.no_qa, args.batch_size,
            args.fetch_concurrency, args.max_image_mb, args.fetch_timeout,
            args.predict_deadline, args.basic_auth_user, args.tls_ca, args.token) == (
        f"127.0.0.1:{GRPC_PORT}", "0.0.0.0", 9090, "hardness", False, 64, 8, 8.0, 20.0, 90.0,
        "labelstudio", None, None)

    text = notes(SCENARIOS["label-studio"])
    assert f"URL http://{FULLNAME}.{NAMESPACE}.svc:9090\n" in text
    assert "user labelstudio" in text and "Authorization: Basic" in text
    assert f"{FULLNAME}.{NAMESPACE}.svc:9090/webhook" in text
    assert "ML_BLOCK_LOCAL_IP=false" in text
    assert (f"kubectl -n {NAMESPACE} get secret hardscore-label-studio -o jsonpath="
            "'{.data.HARDSCORE_LABEL_STUDIO_PASSWORD}'") in text


def test_label_studio_sidecar_reaches_the_server_over_tls_with_a_token() -> None:
    objects = render(SCENARIOS["label-studio-tls-auth"])
    container = sidecar(objects)
    tls = "/etc/hardscore/tls"
    assert container["args"] == [
        "--server", f"127.0.0.1:{GRPC_PORT}", "--host", "0.0.0.0", "--port", "9191",
        "--label-studio-url", "https://label-studio.example.com", "--score", "margin",
        "--no-qa", "--batch-size", "16", "--fetch-concurrency", "4", "--max-image-mb", "2.5",
        "--fetch-timeout", "7.5", "--predict-deadline", "45", "--basic-auth-user", "ls",
        "--tls-ca", f"{tls}/ca.crt", "--tls-server-name", f"{FULLNAME}.{NAMESPACE}.svc",
        "--tls-cert", f"{tls}/tls.crt", "--tls-key", f"{tls}/tls.key"]
    # The same CA, name and certificate as the exec probes, from the server's own TLS mount.
    probe = render(merged(SCENARIOS["label-studio-tls-auth"]) | {"probes": {"mode": "exec"}})
    command = server_container(probe)["livenessProbe"]["exec"]["command"]
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    args = dict(zip(container["args"][-8::2], container["args"][-7::2], strict=True))
    assert args == {"--tls-ca": flags["--tls-ca-file"],
                    "--tls-server-name": flags["--tls-server-name"],
                    "--tls-cert": flags["--tls-cert-file"], "--tls-key": flags["--tls-key-file"]}
    assert {"name": "tls", "mountPath": tls, "readOnly": True} in container["volumeMounts"]
    assert {m["name"] for m in container["volumeMounts"]} == {"tmp", "tls"}, \
        "the token comes from the environment, not the server's token file"
    assert secret_env(container) == {
        name: ("hardscore-label-studio", name)
        for name in ("LABEL_STUDIO_API_KEY", "HARDSCORE_LABEL_STUDIO_PASSWORD",
                     "HARDSCORE_TOKEN")}
    assert container["ports"] == [
        {"name": "label-studio", "containerPort": 9191, "protocol": "TCP"}]
    service = one(objects, "Service", FULLNAME)
    assert {"name": "label-studio", "port": 9191, "targetPort": "label-studio",
            "protocol": "TCP"} in service["spec"]["ports"]
    # A server name of one's own (tls.probe.serverName) and TLS without client certificates.
    named = render(merged(SCENARIOS["label-studio-tls-auth"]) | {"tls": {
        "enabled": True, "secretName": "hardscore-tls", "probe": {"serverName": "scoring.lan"}}})
    args = sidecar(named)["args"]
    assert args[args.index("--tls-server-name") + 1] == "scoring.lan"
    assert "--tls-cert" not in args and "--tls-key" not in args


def test_in_pod_clients_take_the_ca_from_a_secret_of_its_own_or_fall_back() -> None:
    """`kubectl create secret tls` makes no ca.crt, and the sidecar (and exec probes) exited at
    start: the CA may come from a Secret of its own (tls.probe.caSecretName), be the server's
    self-signed certificate (caKey tls.crt), or be the system's roots (caKey "")."""
    base = merged(SCENARIOS["label-studio-tls-auth"]) | {"probes": {"mode": "exec"}}

    def clients(probe: dict[str, Any]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        values = merged(base | {"tls": base["tls"] | {"probe": probe}})
        objects = render(values)
        command = server_container(objects)["livenessProbe"]["exec"]["command"]
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        return sidecar(objects)["args"], command, pod["volumes"]

    args, command, volumes = clients({"caSecretName": "scoring-ca"})
    ca = "/etc/hardscore/probe-ca/ca.crt"
    assert args[args.index("--tls-ca") + 1] == ca
    assert command[command.index("--tls-ca-file") + 1] == ca
    assert {"name": "probe-ca", "secret": {"secretName": "scoring-ca", "defaultMode": 0o440}} \
        in volumes
    objects = render(merged(base | {"tls": base["tls"] | {"probe": {"caSecretName": "ca"}}}))
    for container in (server_container(objects), sidecar(objects)):
        assert {"name": "probe-ca", "mountPath": "/etc/hardscore/probe-ca", "readOnly": True} \
            in container["volumeMounts"]
    # the certificate itself (self-signed), from the server's own Secret
    args, command, volumes = clients({"caKey": "tls.crt"})
    assert args[args.index("--tls-ca") + 1] == "/etc/hardscore/tls/tls.crt"
    assert command[command.index("--tls-ca-file") + 1] == "/etc/hardscore/tls/tls.crt"
    assert "probe-ca" not in {v["name"] for v in volumes}
    # the system's CA roots
    args, command, _ = clients({"caKey": ""})
    assert "--tls" in args and "--tls-ca" not in args
    assert "--tls" in command and "--tls-ca-file" not in command
    assert command[command.index("--tls-server-name") + 1] == f"{FULLNAME}.{NAMESPACE}.svc"
    # the flags are the commands' own
    from hardscore_server.tools import health_probe as health

    parser = argparse.ArgumentParser()
    health.add_arguments(parser)
    parser.parse_args(command[3:])
    # the default is unchanged: ca.crt in tls.secretName
    args, command, _ = clients({})
    assert args[args.index("--tls-ca") + 1] == "/etc/hardscore/tls/ca.crt"


def test_label_studio_port_must_be_free_in_the_pod() -> None:
    enabled = merged(SCENARIOS["label-studio"])["labelStudio"]
    for port, values in ((GRPC_PORT, {}), (HTTP_PORT, {}), (METRICS_PORT, {}),
                         (HEALTH_PORT, {"tls": {"enabled": True, "secretName": "t"}})):
        with pytest.raises(Exception, match=f"labelStudio.port {port} is a port of the server"):
            render(values | {"labelStudio": enabled | {"port": port}})
    # The health port is closed without TLS (and the REST port when 0): free for the sidecar.
    assert sidecar(render({"labelStudio": enabled | {"port": HEALTH_PORT}}))["ports"][0][
        "containerPort"] == HEALTH_PORT
    assert sidecar(render({"ports": {"http": 0}, "labelStudio": enabled | {"port": HTTP_PORT}}))[
        "ports"][0]["containerPort"] == HTTP_PORT


def test_label_studio_sidecar_without_basic_auth() -> None:
    objects = render(SCENARIOS["label-studio-open"])
    container = sidecar(objects)
    assert "--basic-auth-user" not in container["args"]
    assert secret_env(container) == {"LABEL_STUDIO_API_KEY": ("ls-keys", "LABEL_STUDIO_API_KEY")}
    assert "resources" not in container and "lifecycle" not in container
    text = notes(SCENARIOS["label-studio-open"])
    assert "WITHOUT basic auth" in text and "Authorization: Basic" not in text


# The run below: the sidecar's rendered command and the server's rendered configuration, started
# for real with the pod's Secrets written where the pod would mount them.
RUN_SECRETS = {
    "hardscore-tokens": {"tokens": "# the sidecar's token\nsidecar-token-0123456789\n"},
    "hardscore-label-studio": {"LABEL_STUDIO_API_KEY": "ls-api-key",
                               "HARDSCORE_LABEL_STUDIO_PASSWORD": "pod-password-42",
                               "HARDSCORE_TOKEN": "sidecar-token-0123456789"},
}


class PodFiles:
    """The pod's volumes as directories under ``root``: Secrets and ConfigMaps written out, and
    container paths mapped to them (in the TOML settings file too)."""

    def __init__(self, objects: list[dict[str, Any]], secrets: dict[str, dict[str, str]],
                 root: Path, folders: dict[str, Path] | None = None) -> None:
        """``folders``: other volumes (by name) as existing folders here."""
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        folders = folders or {}
        self.secrets = secrets
        contents: dict[str, dict[str, str]] = {}
        for volume in pod["volumes"]:
            if "secret" in volume:
                contents[volume["name"]] = secrets[volume["secret"]["secretName"]]
            elif "configMap" in volume:
                contents[volume["name"]] = one(objects, "ConfigMap",
                                               volume["configMap"]["name"])["data"]
        self.mounts = {m["mountPath"]: folders.get(m["name"], root / m["name"])
                       for c in pod["containers"] for m in c["volumeMounts"]
                       if m["name"] in contents or m["name"] in folders}
        for name, data in contents.items():
            (root / name).mkdir()
            for key, text in data.items():
                if key.endswith(".toml"):
                    text = "".join(f"{k} = {json.dumps(self.path(v) if isinstance(v, str) else v)}"
                                   "\n" for k, v in tomllib.loads(text).items())
                (root / name / key).write_text(text)

    def path(self, value: str) -> str:
        """A container path as the file here (other strings unchanged)."""
        for mount, folder in self.mounts.items():
            if value == mount:
                return str(folder)
            if value.startswith(mount + "/"):
                return str(folder / value[len(mount) + 1:])
        return value

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment: values (paths mapped) and Secret keys resolved."""
        env = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self.path(item["value"])
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env


def _http(url: str, body: dict[str, Any] | None = None,
          auth: tuple[str, str] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body)
                                     .encode(), headers={"Content-Type": "application/json",
                                                         **(headers or {})})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rendered_label_studio_sidecar_runs_against_the_rendered_server(
    tmp_path: Path,
) -> None:
    """Mutual TLS, a bearer token and basic auth, as the chart renders them, for real: the
    certificate is the server's key in an any-purpose certificate for localhost, as
    tls.probe.serverName says (in a cluster: the Service's name)."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    secrets = {**RUN_SECRETS, "hardscore-tls": {
        "tls.crt": pki.any_purpose_cert.read_text(), "tls.key": pki.server_key.read_text(),
        "ca.crt": pki.ca.read_text()}}
    values = merged(SCENARIOS["label-studio-tls-auth"])
    values["tls"]["probe"]["serverName"] = "localhost"
    objects = render(values)
    (tmp_path / "pod").mkdir()
    files = PodFiles(objects, secrets, tmp_path / "pod")
    server_env = files.env(server_container(objects))
    # The chart's ports and host are for the pod; here, free ports on 127.0.0.1.
    server = start_server(["--health-port", "0"], env=server_env)
    sidecar_process = None
    try:
        container = sidecar(objects)
        args = [files.path(a) for a in container["args"]]
        assert args[args.index("--server") + 1] == f"127.0.0.1:{GRPC_PORT}"
        port = _free_port()
        args[args.index("--server") + 1] = server.target
        args[args.index("--host") + 1] = "127.0.0.1"
        args[args.index("--port") + 1] = str(port)
        assert container["command"][0] == "hardscore"
        command = [sys.executable, "-m", "hardscore_client.cli", *container["command"][1:], *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HARDSCORE_", "LABEL_"))}

        # A token the server does not accept: the backend stops at start, saying why.
        wrong = {**env, **files.env(container), "HARDSCORE_TOKEN": "not-a-token"}
        refused = subprocess.run(command, env=wrong, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr, refused.stderr

        sidecar_process = subprocess.Popen(command, env={**env, **files.env(container)},
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, health = _http(f"{url}/health")
                break
            except OSError:
                assert sidecar_process.poll() is None, sidecar_process.communicate()[0]
                assert time.monotonic() < deadline, "the backend did not open its port"
                time.sleep(0.1)
        with ScoringClient(server.target, tls=TLSConfig.from_files(
                str(pki.ca), str(pki.any_purpose_cert), str(pki.server_key), "localhost"),
                token=secrets["hardscore-label-studio"]["HARDSCORE_TOKEN"]) as client:
            info = client.get_model_info()
        version = f"hardscore-{info.name}-v{info.version}-margin"
        assert (status, health) == (200, {"status": "UP", "model_class": "hardscore",
                                          "model_version": version})
        choices = "".join(f'<Choice value="{name}"/>' for name in info.class_names)
        config = (f'<View><Image name="image" value="$image"/><Choices name="label" '
                  f'toName="image">{choices}</Choices></View>')
        setup = {"project": "1", "schema": config, "hostname": "http://ls:8080",
                 "access_token": "", "extra_params": {}}
        password = secrets["hardscore-label-studio"]["HARDSCORE_LABEL_STUDIO_PASSWORD"]
        assert _http(f"{url}/setup", setup)[0] == 401
        assert _http(f"{url}/setup", setup, ("ls", "wrong"))[0] == 401
        assert _http(f"{url}/setup", setup, ("ls", password)) == (
            200, {"model_version": version})
        other = config.replace(choices, '<Choice value="not-a-class"/>')
        assert _http(f"{url}/setup", {**setup, "schema": other}, ("ls", password))[0] == 400
    finally:
        if sidecar_process is not None:
            sidecar_process.terminate()
            sidecar_process.communicate(timeout=30)
        server.stop()


def test_rendered_explicit_repository_runs_with_its_control_tokens(tmp_path: Path) -> None:
    """The explicit-mode configuration as the chart renders it, for real: the repository on the
    PVC and the token Secrets where the pod mounts them; a load or unload needs a control token
    of the mounted Secret, an inference token is not one."""
    from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR

    repo = tmp_path / "repo"
    for name in ("digits", "other"):
        (repo / name / "1").mkdir(parents=True)
        for file in ("model.onnx", "manifest.json"):
            (repo / name / "1" / file).write_bytes((DEFAULT_MODEL_DIR / file).read_bytes())
    secrets = {"hardscore-tokens": {"tokens": "inference-token-0123\n"},
               "hardscore-control": {"tokens": "# who may load\ncontrol-token-4567\n"}}
    objects = render({"model": {"source": "pvc", "pvc": {"claimName": "model-repo"}},
                      "modelRepository": {"enabled": True, "controlMode": "explicit",
                                          "loadModels": ["digits"],
                                          "controlTokens": {"secretName": "hardscore-control"}},
                      "auth": {"enabled": True, "secretName": "hardscore-tokens"}})
    (tmp_path / "pod").mkdir()
    files = PodFiles(objects, secrets, tmp_path / "pod", folders={"model": repo})
    server = start_server(env=files.env(server_container(objects)))
    try:
        bearer = {"Authorization": "Bearer inference-token-0123"}
        control = {**bearer, "hardscore-control-token": "control-token-4567"}
        index = f"{server.http_url}/v2/repository/index"
        assert _http(index, {}, headers=bearer)[0] == 200
        load = f"{server.http_url}/v2/repository/models/other/load"
        assert _http(load, {}, headers=bearer)[0] == 403, "an inference token loads nothing"
        assert _http(load, {}, headers={**bearer, "hardscore-control-token": "wrong"})[0] == 403
        assert _http(load, {}, headers=control)[0] == 200
        status, rows = _http(index, {"ready": True}, headers=bearer)
        assert status == 200
        # (each model is indexed with its -pixels and -files views too)
        assert {row["name"] for row in rows} >= {"digits", "other"}
        unload = f"{server.http_url}/v2/repository/models/digits/unload"
        assert _http(unload, {}, headers=bearer)[0] == 403
        assert _http(unload, {}, headers=control)[0] == 200
        ready = {row["name"] for row in _http(index, {"ready": True}, headers=bearer)[1]}
        assert "other" in ready and "digits" not in ready
    finally:
        server.stop()


# ---- KServe --------------------------------------------------------------------------------------


def kserve(name: str) -> dict[str, Any]:
    return yaml.safe_load((KSERVE / name).read_text())  # type: ignore[no-any-return]


def test_kserve_runtime_and_inference_service_agree() -> None:
    runtime = kserve("servingruntime.yaml")
    service = kserve("inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1",
                                                        "ServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1",
                                                        "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"], "gRPC only: no V2 REST"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    h2c = {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [h2c] and model["ports"] == [h2c]
    assert container["image"] == f"hardscore:{pyproject_version()}"
    errors = api_type_errors(container, "V1Container", "container")
    errors += api_type_errors(model["resources"], "V1ResourceRequirements", "resources")
    assert not errors, errors
    k8s.V1Container.from_dict(container)
    assert container["readinessProbe"]["grpc"] == {"port": GRPC_PORT}
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(METRICS_PORT)


def test_kserve_container_configures_the_server() -> None:
    (container,) = kserve("servingruntime.yaml")["spec"]["containers"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(container["args"])
    assert args.model_dir == "/mnt/models", "where KServe's storage initializer puts the model"
    assert int(args.port) == GRPC_PORT
    environ = {e["name"]: e["value"] for e in container["env"]}
    args.model_dir = None  # exists only in the pod
    config = load_config(args, environ)
    assert config.port == GRPC_PORT and config.execution_provider == "cpu"
    assert config.intra_op_threads == int(float(container["resources"]["limits"]["cpu"]))
    assert config.grace_period_s < 30, "inside the pod's default terminationGracePeriodSeconds"
    known = {"HARDSCORE_" + f.name.upper() for f in dataclasses.fields(ServerConfig)}
    assert set(environ) <= known


def test_kserve_documented() -> None:
    readme = (REPO / "docs" / "deployment.md").read_text()
    for needed in ("helm/kserve/servingruntime.yaml", "grpc-v2", "h2c", "/mnt/models"):
        assert needed in readme, needed


def test_rest_port_can_be_turned_off() -> None:
    objects = render({"ports": {"http": 0}})
    assert settings(objects)["http_port"] == -1
    assert "http" not in {p["name"] for p in server_container(objects)["ports"]}
    service = one(objects, "Service", FULLNAME)
    assert "http" not in {p["name"] for p in service["spec"]["ports"]}
    service = one(render(), "Service", FULLNAME)
    assert {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"} in (
        service["spec"]["ports"])
