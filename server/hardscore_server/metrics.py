"""Prometheus metrics of one server, in their own registry (``transport.metrics_endpoint`` serves
them over HTTP on their own port).

Names follow Prometheus conventions: counters end in ``_total``, durations are ``_seconds``.
Score distributions are observed a whole batch at a time (one numpy histogram per batch), so
a million-row request costs one vectorised bucket count, not a million Python calls.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
HARDNESS_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
UNIT_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


FEW_VALUES = 8
"""BulkHistogram counts at most this many values in plain Python: cheaper than numpy's calls."""


class BulkHistogram(Collector):
    """A labelled histogram fed whole arrays at once; NaN values are skipped."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...]):
        self._name = name
        self._doc = documentation
        self._label = label
        self._edges = np.asarray(buckets, dtype=np.float64)
        self._edge_list = [float(e) for e in buckets]
        self._lock = threading.Lock()
        self._counts: dict[str, npt.NDArray[np.int64]] = {}
        self._sums: dict[str, float] = {}

    def observe_many(self, label_value: str, values: npt.NDArray[np.floating]) -> int:
        """Counts every finite value of ``values`` into the series ``label_value``; returns how
        many values were skipped as NaN or infinite."""
        if len(values) <= FEW_VALUES:
            return self._observe_few(label_value, values.tolist())
        finite = values[np.isfinite(values)]
        # bucket i counts values <= edge i (cumulative later); the last slot is +Inf.
        slots = np.searchsorted(self._edges, finite, side="left")
        counts = np.bincount(slots, minlength=len(self._edges) + 1)
        total = float(finite.sum())
        with self._lock:
            self._series(label_value)[:] += counts
            self._sums[label_value] += total
        return len(values) - len(finite)

    def _observe_few(self, label_value: str, values: list[float]) -> int:
        """The same for a handful of values, without numpy's per-call cost (online calls)."""
        skipped = 0
        with self._lock:
            counts = self._series(label_value)
            for value in values:
                if math.isfinite(value):
                    counts[bisect.bisect_left(self._edge_list, value)] += 1
                    self._sums[label_value] += value
                else:
                    skipped += 1
        return skipped

    def _series(self, label_value: str) -> npt.NDArray[np.int64]:
        """The bucket counts of ``label_value`` (created empty); call with the lock held."""
        if label_value not in self._counts:
            self._counts[label_value] = np.zeros(len(self._edges) + 1, dtype=np.int64)
            self._sums[label_value] = 0.0
        return self._counts[label_value]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        with self._lock:
            for value, counts in self._counts.items():
                cumulative = np.cumsum(counts)
                finite_edges = zip(self._edges, cumulative[:-1], strict=True)
                buckets = [(repr(float(e)), int(c)) for e, c in finite_edges]
                buckets.append(("+Inf", int(cumulative[-1])))
                family.add_metric([value], buckets, self._sums[value])
        yield family


class ServerMetrics:
    """Every metric the server exports. One instance per server; tests may build several."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hardscore_requests", "gRPC calls finished, by method and status code.",
            ["method", "code"], registry=r)
        self.calls_in_flight = Gauge(
            "hardscore_calls_in_flight", "gRPC calls whose handler has started and not ended "
            "(health checks excluded); a drain waits for them.", registry=r)
        self.calls_dropped = Counter(
            "hardscore_calls_dropped", "gRPC calls that gRPC ended before their handler "
            "started (their deadline passed, or their client went away, before the server "
            "read their request or ran their task), by method; nothing of them was computed.",
            ["method"], registry=r)
        self.request_duration = Histogram(
            "hardscore_request_duration_seconds", "gRPC call duration, by method.",
            ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.samples = Counter(
            "hardscore_samples_scored", "Samples scored, by kind (logits, probabilities, images).",
            ["kind"], registry=r)
        self.sample_errors = Counter(
            "hardscore_sample_errors", "Images refused individually, by reason (decode, shape...).",
            ["reason"], registry=r)
        self.hardness = BulkHistogram(
            "hardscore_hardness", "Hardness (entropy, nats) of scored samples, by model.",
            "model", HARDNESS_BUCKETS)
        self.mistakenness = BulkHistogram(
            "hardscore_mistakenness", "Mistakenness of labelled samples, by model (0..1).",
            "model", UNIT_BUCKETS)
        r.register(self.hardness)
        r.register(self.mistakenness)
        self.nonfinite_scores = Counter(
            "hardscore_nonfinite_scores", "Scored rows whose scores are NaN (non-finite logits, "
            "e.g. from NaN or infinite input pixels), by model; the score histograms leave "
            "them out.", ["model"], registry=r)
        # Dynamic batching and inference.
        self.batch_size = Histogram(
            "hardscore_batch_size", "Samples per inference batch.", ["model"],
            buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "hardscore_queue_wait_seconds", "Time a sample waited in the batcher's queue.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess_time = Histogram(
            "hardscore_preprocess_seconds", "Decode + resize + normalise time per image.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram(
            "hardscore_inference_seconds", "ONNX Runtime run time per batch.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "hardscore_queue_depth", "Samples waiting in the batcher's queue.", ["model"],
            registry=r)
        self.rejections = Counter(
            "hardscore_rejections", "Samples refused or dropped by the batcher, by reason "
            "(queue_full, deadline, cancelled).", ["model", "reason"], registry=r)
        # The decode budget (decode_budget.py) and decodes of calls that have gone.
        self.decode_budget = Gauge(
            "hardscore_decode_budget_bytes", "Decode memory the server grants at once (bytes).",
            registry=r)
        self.decode_budget_in_use = Gauge(
            "hardscore_decode_budget_in_use_bytes",
            "Decode memory granted to calls now (estimated bytes).", registry=r)
        self.decode_budget_waiting = Gauge(
            "hardscore_decode_budget_waiting_calls", "Calls waiting for decode memory.",
            registry=r)
        self.decode_budget_refusals = Counter(
            "hardscore_decode_budget_refusals", "Calls refused decode memory, by reason "
            "(request_too_large, busy).", ["reason"], registry=r)
        # The request budget (request_budget.py): request messages in progress on gRPC.
        self.request_budget = Gauge(
            "hardscore_request_budget_bytes",
            "Request message bytes the gRPC port holds in progress at once (bytes).", registry=r)
        self.request_budget_in_use = Gauge(
            "hardscore_request_budget_in_use_bytes",
            "Request message bytes admitted and in progress now.", registry=r)
        self.request_budget_waiting = Gauge(
            "hardscore_request_budget_waiting_bytes",
            "Request message bytes arrived and waiting for the request budget.", registry=r)
        self.request_budget_refusals = Counter(
            "hardscore_request_budget_refusals", "Messages refused the request budget, by "
            "reason (full: too many bytes waiting; busy: waited too long; read_timeout: the "
            "message did not arrive within message_read_timeout_s).", ["reason"],
            registry=r)
        self.decodes = Counter(
            "hardscore_image_decodes", "Images preprocessed in the decode pool, by outcome "
            "(done; after_cancel: finished after its call had gone; abandoned: never started "
            "because its call had gone).", ["outcome"], registry=r)
        self.model_info = Gauge(
            "hardscore_model_info", "The served model (value 1), with its execution provider.",
            ["model", "version", "provider"], registry=r)
        self.model_loads = Counter(
            "hardscore_model_loads", "Model version loads through the model repository, by "
            "outcome (loaded: it serves; failed: refused or failed, the versions serving before "
            "serve on).", ["model", "version", "outcome"], registry=r)
        self.models_loaded = Gauge(
            "hardscore_models_loaded", "Model versions loaded and serving now.", registry=r)

    def observe_scores(
        self, model: str, hardness: npt.NDArray[np.floating],
        mistakenness: npt.NDArray[np.floating] | None,
    ) -> None:
        """Feeds one scored batch's hardness (and mistakenness, when labelled) to the histograms;
        counts its rows with a non-finite hardness (every score of such a row is NaN)."""
        nonfinite = self.hardness.observe_many(model, hardness)
        if nonfinite:
            self.nonfinite_scores.labels(model).inc(nonfinite)
        if mistakenness is not None:
            self.mistakenness.observe_many(model, mistakenness)
