"""The supervisor's metric merge: N workers' expositions summed into one, series by series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hardscore_server.supervisor import sum_expositions


def exposition(requests: int, durations: list[float], depth: int) -> str:
    """A worker-like exposition: a labelled counter, a histogram, a gauge and an info gauge."""
    r = CollectorRegistry()
    calls = Counter("x_requests", "calls", ["method", "code"], registry=r)
    calls.labels("Score", "OK").inc(requests)
    latency = Histogram("x_seconds", "latency", ["method"], buckets=(0.1, 1.0), registry=r)
    for d in durations:
        latency.labels("Score").observe(d)
    Gauge("x_queue_depth", "queued", registry=r).set(depth)
    Gauge("x_model_info", "model", ["model"], registry=r).labels("m").set(1)
    return generate_latest(r).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def merged_text(texts: list[str]) -> str:
    r = CollectorRegistry()

    class Fixed:
        def collect(self):
            return sum_expositions(texts)

    r.register(Fixed())  # type: ignore[arg-type]
    return generate_latest(r).decode()


def test_counters_histograms_and_gauges_sum_info_takes_the_largest():
    text = merged_text([exposition(3, [0.05, 0.5], 2), exposition(4, [2.0], 5)])
    got = samples(text)
    ok = frozenset({("method", "Score"), ("code", "OK")})
    assert got[("x_requests_total", ok)] == 7
    score = frozenset({("method", "Score")})
    assert got[("x_seconds_count", score)] == 3
    assert got[("x_seconds_sum", score)] == 2.55
    assert got[("x_seconds_bucket", score | {("le", "0.1")})] == 1
    assert got[("x_seconds_bucket", score | {("le", "1.0")})] == 2
    assert got[("x_seconds_bucket", score | {("le", "+Inf")})] == 3
    assert got[("x_queue_depth", frozenset())] == 7
    assert got[("x_model_info", frozenset({("model", "m")}))] == 1
    assert not [name for name, _ in got if name.endswith("_created")]
    assert "# TYPE x_seconds histogram" in text and "# TYPE x_requests_total counter" in text


def test_a_series_only_one_worker_has_is_kept_and_none_is_empty():
    first = exposition(1, [], 0)
    second = exposition(1, [], 0).replace('code="OK"', 'code="INTERNAL"')
    got = samples(merged_text([first, second]))
    assert got[("x_requests_total", frozenset({("method", "Score"), ("code", "OK")}))] == 1
    assert got[("x_requests_total", frozenset({("method", "Score"), ("code", "INTERNAL")}))] == 1
    assert sum_expositions([]) == []
