"""The Grafana dashboard:

- Grafana dashboard: every PromQL expression parsed; every metric and label it uses exists in
  the server's real /metrics exposition; it covers every metric of docs/metrics.md."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import promql_parser
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from hardscore_server.metrics import BulkHistogram, ServerMetrics

from artefacts import (
    DASHBOARD,
    REPO,
)

# ---- Grafana dashboard ---------------------------------------------------------------------------

TARGET_LABELS = {"namespace", "instance", "pod", "job", "service", "container", "endpoint"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m",
                     "$namespace": ".*", "$instance": ".*", "$model": ".*"}


def exposition() -> dict[str, set[str]]:
    """Every sample name the server exports, with its label names (each metric touched once)."""
    metrics = ServerMetrics()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            child = value.labels(*["x"] * len(value._labelnames)) if value._labelnames else value
            for method in ("inc", "observe", "set"):
                if hasattr(child, method):
                    getattr(child, method)(1)
                    break
        elif isinstance(value, BulkHistogram):
            value.observe_many("x", np.array([0.5]))
    text = generate_latest(metrics.registry).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def selectors(node: Any) -> Iterator[tuple[str | None, set[str], set[str]]]:
    """(metric name, labels matched, labels grouped by above it) for each vector selector."""
    def walk(n: Any, grouping: set[str]) -> Iterator[tuple[str | None, set[str], set[str]]]:
        if isinstance(n, promql_parser.VectorSelector):
            yield n.name, {m.name for m in n.matchers.matchers}, grouping
        elif isinstance(n, promql_parser.MatrixSelector):
            yield from walk(n.vector_selector, grouping)
        elif isinstance(n, promql_parser.AggregateExpr):
            labels = set(n.modifier.labels) if n.modifier is not None else set()
            yield from walk(n.expr, grouping | labels)
        elif isinstance(n, promql_parser.BinaryExpr):
            yield from walk(n.lhs, grouping)
            yield from walk(n.rhs, grouping)
        elif isinstance(n, promql_parser.Call):
            for arg in n.args:
                yield from walk(arg, grouping)
        elif isinstance(n, promql_parser.ParenExpr | promql_parser.UnaryExpr
                        | promql_parser.SubqueryExpr):
            yield from walk(n.expr, grouping)
    yield from walk(node, set())


def expressions() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    exported = exposition()
    used = set()
    for title, expr in expressions():
        tree = promql_parser.parse(expr)
        for name, matched, grouped in selectors(tree):
            assert name in exported, f"{title}: {name} is not exported"
            used.add(name)
            labels = exported[name] | TARGET_LABELS
            assert matched <= labels, f"{title}: {name} has no label {matched - labels}"
            assert grouped <= labels | {"le"}, f"{title}: {name} has no label {grouped - labels}"
    # Every metric of the documented table (docs/metrics.md) is on the dashboard.
    table = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(hardscore_[a-z_]+)`", table, re.MULTILINE))
    assert len(documented) >= 13
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert documented <= families, documented - families


def test_dashboard_covers_the_operational_questions() -> None:
    panels = dashboard_panels()
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("requests / s", "p50, p90, p99", "batch size", "queue depth", "rejections",
                  "hardness distribution", "mistakenness distribution"):
        assert topic in titles, topic
    by_metric = {re.search(r"hardscore_[a-z_]+", t["expr"])[0]  # type: ignore[index]
                 for p in panels for t in p["targets"]}
    assert {"hardscore_hardness_bucket", "hardscore_mistakenness_bucket",
            "hardscore_rejections_total", "hardscore_queue_depth"} <= by_metric
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])


def test_dashboard_layout_and_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "hardscore" and board["title"] == "hardscore"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
            assert panel.get("description"), panel["title"]
    for name in ("namespace", "instance", "model"):
        assert variables[name]["allValue"] == ".*" and variables[name]["includeAll"]
        query = variables[name]["definition"]
        assert promql_parser.parse(query[query.index("(") + 1:query.rindex(",")]
                                   .replace("$namespace", ".*").replace("$instance", ".*"))


