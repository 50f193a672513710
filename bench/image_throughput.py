"""Image scoring throughput: raw ONNX Runtime versus the served path, with and without batching.

Model: the CIFAR-layout ResNet50 (3x32x32 input, 10 classes) with seeded random weights,
exported once with ``hardscore-export`` and cached in ``bench/.cache/`` (or ``--model-dir``).

(a) raw: ``ModelRunner`` (the server's own class, so the ONNX Runtime session options are the
    server's) called in-process at batch sizes 1..64 for a bounded time each: images/s and
    p50/p99 latency of one batch call.
(b) paired rounds (``--rounds``, 5): windows run back to back, so that the served path and
    its baselines see the same state of this noisy shared machine: raw batch 1, the batched
    server and the gRPC floor (``grpc_floor_server.py``: same request and reply bytes, no work
    behind it) with one caller; then raw batch k and the server with k callers (k = the top
    concurrency). The concurrency-1 targets are judged on the medians of these rounds.
(c) served, batched: the server started with ``--max-batch-size 64 --max-queue-delay-ms 2``,
    driven by N concurrent callers (asyncio, one gRPC channel) that each send ONE image per
    ScoreImages request, a pre-normalised float32 [3,32,32] pixels tensor, so preprocessing is
    minimal and the run measures serving plus batching. The request is serialised once and sent
    as bytes (``--client raw``, the cheapest client, as the client shares the cores with the
    server); ``--client sdk`` sends through ``AsyncScoringClient.score_images`` instead.
    The mean batch size comes from the server's /metrics (hardscore_batch_size_sum / _count).
(d) served, unbatched: the same with ``--max-batch-size 1``.

Targets (batched server): images/s at concurrency 1 >= 0.9 x raw batch-1 images/s; at the
highest concurrency (16) >= 0.9 x the best raw images/s; p50 latency at concurrency 1 within
1.5 ms of raw batch-1 p50. A report, not a test: exit status 0 whatever the numbers.

    .venv/bin/python bench/image_throughput.py --quick
    .venv/bin/python bench/image_throughput.py --output bench-images.md
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from common import (
    BenchTimeout,
    Server,
    fmt,
    format_table,
    load_average,
    machine_header,
    median,
    metric_total,
    percentile,
    scrape,
    time_limit,
    verdict,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hardscore_client import AsyncScoringClient
from hardscore_client.messages import image_sample
from hardscore_server.model.model_dir import load_manifest
from hardscore_server.model.runner import ModelRunner
from hardscore_wire import scoring_pb2 as pb

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
MODEL_CACHE_NAME = "resnet50-cifar-random-seed0"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
SCORE_IMAGES = "/" + pb.DESCRIPTOR.services_by_name["ScoringService"].full_name + "/ScoreImages"
CALL_TIMEOUT_S = 30.0
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_P50_SLACK_MS = 1.5
PACKAGES = ("hardscore", "onnxruntime", "onnxruntime-gpu", "numpy", "grpcio", "protobuf")


@dataclass
class Row:
    """One line of the table."""

    name: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    calls: int
    client_cpu: float = float("nan")  # bench process (ORT for raw rows, client for served), %
    server_cpu: float = float("nan")
    infer_ms: float = float("nan")  # mean ONNX Runtime time per batch (server)
    queue_ms: float = float("nan")  # mean time a sample waited in the batcher's queue
    server_ms: float = float("nan")  # mean ScoreImages call duration inside the server
    errors: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- model


def ensure_model(refresh: bool, timeout: float) -> Path:
    """The cached CIFAR ResNet50 model directory; exported (in a subprocess) when missing."""
    model_dir = CACHE_DIR / MODEL_CACHE_NAME
    if not refresh and (model_dir / "model.onnx").is_file() and (
            model_dir / "manifest.json").is_file():
        print(f"model: cached {model_dir}")
        return model_dir
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = CACHE_DIR / (MODEL_CACHE_NAME + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "hardscore_server.tools.export", "--arch", "resnet50",
               "--layout", "cifar", "--random-weights", "--seed", "0", "--out", str(partial)]
    print(f"model: exporting to {model_dir} (once; later runs reuse it)", flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, check=True, timeout=timeout)
        shutil.rmtree(model_dir, ignore_errors=True)
        partial.rename(model_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"model: exported in {time.perf_counter() - started:.1f} s")
    return model_dir


# --------------------------------------------------------------------------- (a) raw


def _run_until(runner: ModelRunner, instance: int, batch: np.ndarray, stop_at: float,
               latencies: list[float]) -> None:
    """Runs ``batch`` on ``instance`` back to back until ``stop_at`` (3 runs at least)."""
    while time.perf_counter() < stop_at or len(latencies) < 3:
        t0 = time.perf_counter()
        runner.run(instance, batch)
        latencies.append(time.perf_counter() - t0)


def raw_bench(runner: ModelRunner, batch_sizes: list[int], duration: float) -> list[Row]:
    """Back-to-back runs per batch size: one caller per instance, all instances at once (so
    the baseline has the served configuration's parallelism); latency is per run."""
    rng = np.random.default_rng(0)
    shape = runner.input_shape
    instances = len(runner.sessions)
    rows = []
    for size in batch_sizes:
        batch = rng.standard_normal((size, *shape), dtype=np.float32)
        for instance in range(instances):
            for _ in range(2):  # warm-up: first runs at a new shape are slower
                runner.run(instance, batch)
        per_instance: list[list[float]] = [[] for _ in range(instances)]
        cpu_started = time.process_time()
        started = time.perf_counter()
        stop_at = started + duration

        threads = [threading.Thread(target=_run_until, args=(runner, i, batch, stop_at,
                                                            per_instance[i]))
                   for i in range(instances)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        latencies = [t for lat in per_instance for t in lat]
        rate = sum(size * len(lat) / sum(lat) for lat in per_instance)
        row = Row(f"raw batch {size}", rate,
                  1e3 * median(latencies), 1e3 * percentile(latencies, 99), float(size),
                  len(latencies), client_cpu=100.0 * cpu / elapsed)
        print(f"  {row.name}: {row.images_per_s:,.0f} images/s, p50 {row.p50_ms:.2f} ms, "
              f"p99 {row.p99_ms:.2f} ms ({row.calls} calls)", flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- (c), (d) served


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Payload:
    """One image sent per request: as the SDK takes it, and as the serialised request."""

    label: str
    image: bytes | npt.NDArray[np.generic]

    @property
    def request(self) -> bytes:
        return pb.ScoreImagesRequest(samples=[image_sample(self.image)]).SerializeToString()


def pixels_payload(shape: tuple[int, int, int]) -> Payload:
    """A pre-normalised float32 [C,H,W] tensor: the server only checks it is finite."""
    return Payload("", np.random.default_rng(1).standard_normal(shape, dtype=np.float32))


def png_payload(shape: tuple[int, int, int]) -> Payload:
    """A PNG of the model's input size: the server decodes, resizes and normalises it."""
    from PIL import Image

    channels, height, width = shape
    pixels = np.random.default_rng(2).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("L" if channels == 1 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Payload("PNG ", buffer.getvalue())


def check_reply(reply: bytes) -> None:
    response = pb.ScoreImagesResponse.FromString(reply)
    if response.errors or response.scores.num_rows != 1:
        raise RuntimeError(f"unexpected reply: {response.scores.num_rows} rows, "
                           f"errors {[e.message for e in response.errors]}")


async def call_window(
    send: Callable[[], Awaitable[object]], concurrency: int, seconds: float
) -> tuple[list[float], Counter[str], float]:
    """``concurrency`` callers calling ``send()`` back to back for ``seconds``: the latency of
    each successful call, the error codes, and the seconds it took."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    stop_at = started + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                await send()
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def drive(
    target: str,
    payload: Payload,
    concurrency: int,
    warmup: float,
    duration: float,
    client_kind: str,
    server: Server,
) -> Row:
    """``concurrency`` callers each sending one image per request, back to back."""
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30, wait_for_ready=True)
        send: Callable[[], Awaitable[object]]
        sdk: AsyncScoringClient | None = None
        if client_kind == "sdk":
            sdk = client = AsyncScoringClient(target)
            images = [payload.image]

            def send() -> Awaitable[object]:
                return client.score_images(images)
        else:
            # No (de)serialisers: request and reply travel as bytes, no protobuf work per call.
            call = channel.unary_unary(
                SCORE_IMAGES, request_serializer=None, response_deserializer=None)
            request = payload.request
            check_reply(await call(request, timeout=CALL_TIMEOUT_S))

            def send() -> Awaitable[object]:
                return call(request, timeout=CALL_TIMEOUT_S)

        try:
            await call_window(send, concurrency, warmup)
            before = await asyncio.to_thread(scrape, server.metrics_url)
            assert server.proc is not None
            server_cpu0 = process_cpu_seconds(server.proc.pid)
            client_cpu0 = time.process_time()
            latencies, errors, elapsed = await call_window(send, concurrency, duration)
            client_cpu = time.process_time() - client_cpu0
            server_cpu = process_cpu_seconds(server.proc.pid) - server_cpu0
            after = await asyncio.to_thread(scrape, server.metrics_url)
        finally:
            if sdk is not None:
                await sdk.close()

    def delta(name: str, label: str = "") -> float:
        return metric_total(after, name, label) - metric_total(before, name, label)

    def mean_ms(name: str, label: str = "") -> float:
        count = delta(name + "_count", label)
        return 1e3 * delta(name + "_sum", label) / count if count else float("nan")

    batches = delta("hardscore_batch_size_count")
    return Row(
        name="",
        images_per_s=len(latencies) / elapsed,
        p50_ms=1e3 * median(latencies),
        p99_ms=1e3 * percentile(latencies, 99),
        mean_batch=delta("hardscore_batch_size_sum") / batches if batches else float("nan"),
        calls=len(latencies),
        client_cpu=100.0 * client_cpu / elapsed,
        server_cpu=100.0 * server_cpu / elapsed,
        infer_ms=mean_ms("hardscore_inference_seconds"),
        queue_ms=mean_ms("hardscore_queue_wait_seconds"),
        server_ms=mean_ms("hardscore_request_duration_seconds", 'method="ScoreImages"'),
        errors=dict(errors),
    )


def served_bench(
    label: str,
    server_args: list[str],
    payloads: list[Payload],
    concurrencies: list[int],
    warmup: float,
    duration: float,
    client_kind: str,
    notes: list[str],
) -> list[Row]:
    rows = []
    server = Server(*server_args)
    try:
        server.start()
        model_line = next((line for line in server.lines if "instance(s)" in line), "")
        notes.append(f"{label} server: {' '.join(server_args)}; "
                     f"{model_line.split(': ', 1)[-1]}")
        for payload in payloads:
            for concurrency in concurrencies:
                row = asyncio.run(drive(server.target, payload, concurrency, warmup, duration,
                                        client_kind, server))
                row.name = f"served {label} {payload.label}conc {concurrency}"
                errors = f", errors {row.errors}" if row.errors else ""
                print(f"  {row.name}: {row.images_per_s:,.0f} images/s, p50 {row.p50_ms:.2f} ms, "
                      f"p99 {row.p99_ms:.2f} ms, mean batch {row.mean_batch:.1f}, client CPU "
                      f"{row.client_cpu:.0f}%, server CPU {row.server_cpu:.0f}%{errors}",
                      flush=True)
                rows.append(row)
    finally:
        code = server.stop()
        print(f"  {label} server stopped (exit status {code})", flush=True)
    return rows


# --------------------------------------------------------------------------- (b) paired rounds


class FloorServer:
    """``grpc_floor_server.py`` in a subprocess: gRPC with no work behind it (its docstring)."""

    def __init__(self, reply_bytes: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "grpc_floor_server.py"),
             "--reply-bytes", str(reply_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"gRPC floor server did not start: {line!r}")
        self.target = f"127.0.0.1:{int(line.split()[-1])}"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # its signal to stop
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def callers(target: str, request: bytes, concurrency: int, warmup: float, seconds: float
                  ) -> tuple[float, float]:
    """p50 latency (s) and calls/s of ``concurrency`` callers sending ``request`` back to back."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            SCORE_IMAGES, request_serializer=None, response_deserializer=None)
        await call(request, timeout=CALL_TIMEOUT_S, wait_for_ready=True)

        def send() -> Awaitable[object]:
            return call(request, timeout=CALL_TIMEOUT_S)

        await call_window(send, concurrency, warmup)
        latencies, errors, elapsed = await call_window(send, concurrency, seconds)
    if errors:
        raise RuntimeError(f"{target}: errors at concurrency {concurrency}: {dict(errors)}")
    return median(latencies), len(latencies) / elapsed


def raw_window(runner: ModelRunner, batch: npt.NDArray[np.float32], seconds: float
               ) -> tuple[float, float]:
    """p50 latency (s) of one run and images/s of instance 0 running ``batch`` back to back."""
    for _ in range(2):
        runner.run(0, batch)
    latencies: list[float] = []
    _run_until(runner, 0, batch, time.perf_counter() + seconds, latencies)
    return median(latencies), len(batch) * len(latencies) / sum(latencies)


@dataclass
class PairedRound:
    """One round of back-to-back windows, so that the served path and its baselines see the
    same state of a noisy machine: at concurrency 1, raw batch 1, served and the gRPC floor;
    at the top concurrency k, raw batch k and served (images/s, p50 seconds)."""

    raw_rate: float
    raw_p50: float
    served_rate: float
    served_p50: float
    floor_rate: float
    floor_p50: float
    raw_top_rate: float
    served_top_rate: float

    @property
    def ratio(self) -> float:
        return self.served_rate / self.raw_rate

    @property
    def extra_ms(self) -> float:
        return 1e3 * (self.served_p50 - self.raw_p50)

    @property
    def attainable(self) -> float:
        """The best served/raw ratio a server with the floor's per-call cost could reach."""
        model_s = 1.0 / self.raw_rate
        return model_s / (model_s + 1.0 / self.floor_rate)


def paired_bench(runner: ModelRunner, server_args: list[str], payload: Payload, top: int,
                 rounds: int, seconds: float, warmup: float) -> list[PairedRound]:
    """Rounds of raw batch 1, served, gRPC floor (one caller); raw batch ``top``, served
    (``top`` callers)."""
    image = np.asarray(payload.image, dtype=np.float32)
    request = payload.request
    server = Server(*server_args)
    floor: FloorServer | None = None
    out = []
    try:
        server.start()
        channel = grpc.insecure_channel(server.target)
        reply = channel.unary_unary(SCORE_IMAGES, None, None)(request, timeout=CALL_TIMEOUT_S)
        channel.close()
        check_reply(reply)
        floor = FloorServer(len(reply))
        for index in range(rounds):
            raw_p50, raw_rate = raw_window(runner, image[None], seconds)
            served_p50, served_rate = asyncio.run(
                callers(server.target, request, 1, warmup, seconds))
            floor_p50, floor_rate = asyncio.run(
                callers(floor.target, request, 1, warmup, seconds))
            _, raw_top_rate = raw_window(runner, np.repeat(image[None], top, axis=0), seconds)
            _, served_top_rate = asyncio.run(
                callers(server.target, request, top, warmup, seconds))
            r = PairedRound(raw_rate, raw_p50, served_rate, served_p50, floor_rate, floor_p50,
                            raw_top_rate, served_top_rate)
            print(f"  round {index + 1}: raw {raw_rate:,.0f}/s p50 {1e3 * raw_p50:.2f} ms; "
                  f"served {served_rate:,.0f}/s p50 {1e3 * served_p50:.2f} ms; gRPC floor "
                  f"p50 {1e3 * floor_p50:.2f} ms; raw batch {top} {raw_top_rate:,.0f}/s, "
                  f"served conc {top} {served_top_rate:,.0f}/s", flush=True)
            out.append(r)
    finally:
        if floor is not None:
            floor.stop()
        server.stop()
    return out


PAIRED_COLUMNS = (
    # header, value of a round, decimals
    ("raw b1 /s", lambda r: r.raw_rate, 0),
    ("raw p50 ms", lambda r: 1e3 * r.raw_p50, 2),
    ("served /s", lambda r: r.served_rate, 0),
    ("served p50 ms", lambda r: 1e3 * r.served_p50, 2),
    ("gRPC floor p50 ms", lambda r: 1e3 * r.floor_p50, 2),
    ("served/raw", lambda r: r.ratio, 2),
    ("p50 extra ms", lambda r: r.extra_ms, 2),
    ("attainable ratio", lambda r: r.attainable, 2),
    ("raw b-top /s", lambda r: r.raw_top_rate, 0),
    ("served c-top /s", lambda r: r.served_top_rate, 0),
    ("c-top/raw b-top", lambda r: r.served_top_rate / r.raw_top_rate, 2),
)


def paired_medians(rounds: list[PairedRound]) -> dict[str, float]:
    """Each column's median over the rounds (ratios are per-round ratios, then the median)."""
    return {name: median([value(r) for r in rounds]) for name, value, _ in PAIRED_COLUMNS}


def paired_table(rounds: list[PairedRound], top: int, markdown: bool) -> str:
    body = [[str(i + 1), *(fmt(value(r), digits) for _, value, digits in PAIRED_COLUMNS)]
            for i, r in enumerate(rounds)]
    medians = paired_medians(rounds)
    body.append(["median", *(fmt(medians[name], digits) for name, _, digits in PAIRED_COLUMNS)])
    headers = [name.replace("top", str(top)) for name, _, _ in PAIRED_COLUMNS]
    return format_table(["round", *headers], body, markdown)


# --------------------------------------------------------------------------- report


def table(rows: list[Row], markdown: bool) -> str:
    headers = ["path", "images/s", "p50 ms", "p99 ms", "mean batch", "infer ms/batch",
               "queue ms", "server call ms", "calls", "bench proc CPU %", "server CPU %",
               "errors"]
    body = [
        [r.name, fmt(r.images_per_s), fmt(r.p50_ms, 2), fmt(r.p99_ms, 2), fmt(r.mean_batch, 1),
         fmt(r.infer_ms, 2), fmt(r.queue_ms, 2), fmt(r.server_ms, 2), str(r.calls),
         fmt(r.client_cpu), fmt(r.server_cpu),
         ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"]
        for r in rows
    ]
    return format_table(headers, body, markdown)


def target_checks(raw: list[Row], served: list[Row], concurrencies: list[int],
                  rounds: list[PairedRound]) -> list[str]:
    """PASS/MISS per target. The concurrency-1 targets use the paired rounds when there are
    any (medians of per-round figures), else the sweep's rows."""
    by_name = {r.name: r for r in raw + served}
    raw1 = by_name.get("raw batch 1")
    best = max(raw, key=lambda r: r.images_per_s) if raw else None
    conc1 = by_name.get("served batched conc 1")
    top = max(concurrencies)
    conc_top = by_name.get(f"served batched conc {top}")
    ratio1 = extra1 = None
    if rounds:
        medians = paired_medians(rounds)
        ratio1, extra1 = medians["served/raw"], medians["p50 extra ms"]
        source = f"median of {len(rounds)} paired rounds"
    elif raw1 and conc1:
        ratio1 = conc1.images_per_s / raw1.images_per_s
        extra1 = conc1.p50_ms - raw1.p50_ms
        source = "sweep rows"
    checks = []
    if ratio1 is not None and extra1 is not None:
        checks.append(f"{verdict(ratio1 >= TARGET_THROUGHPUT_RATIO)}  served conc 1 / raw "
                      f"batch 1 = {ratio1:.2f} ({source}; target >= {TARGET_THROUGHPUT_RATIO})")
        checks.append(f"{verdict(extra1 <= TARGET_P50_SLACK_MS)}  served conc 1 p50 - raw "
                      f"batch 1 p50 = {extra1:+.2f} ms ({source}; target <= "
                      f"{TARGET_P50_SLACK_MS} ms)")
    else:
        checks.append("n/a   served conc 1 vs raw batch 1 (not measured)")
    if rounds:
        medians = paired_medians(rounds)
        checks.append(
            f"info  gRPC floor (no work behind it) p50 {medians['gRPC floor p50 ms']:.2f} ms: "
            f"a server costing only that could reach {medians['attainable ratio']:.2f} of raw "
            f"batch 1 at concurrency 1")
        checks.append(
            f"info  served conc {top} / raw batch {top}, paired = "
            f"{medians['c-top/raw b-top']:.2f} (median of {len(rounds)} rounds)")
    if best and conc_top and top > 1:
        ratio = conc_top.images_per_s / best.images_per_s
        checks.append(
            f"{verdict(ratio >= TARGET_THROUGHPUT_RATIO)}  served conc {top} / best raw "
            f"({best.name}) = {conc_top.images_per_s:,.0f} / {best.images_per_s:,.0f} = "
            f"{ratio:.2f} (target >= {TARGET_THROUGHPUT_RATIO})")
        same = by_name.get(f"raw batch {top}")
        if same and same is not best:
            checks.append(
                f"info  served conc {top} / raw batch {top} (the largest batch {top} one-image "
                f"callers can form) = {conc_top.images_per_s / same.images_per_s:.2f}")
    else:
        checks.append("n/a   served high concurrency vs best raw (not measured)")
    return checks


def parse_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected a comma list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: raw 0.5 s per batch size, served 2 s per point")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per served point (10; --quick 2)")
    parser.add_argument("--raw-duration", type=float, default=None,
                        help="seconds measured per raw batch size (3; --quick 0.5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds before each served point (2; --quick 0.5)")
    parser.add_argument("--concurrency", type=parse_ints, default=[1, 4, 16],
                        help="comma list of concurrent callers (1,4,16)")
    parser.add_argument("--batch-sizes", type=parse_ints, default=list(BATCH_SIZES),
                        help="raw batch sizes (1,2,4,8,16,32,64)")
    parser.add_argument("--execution-provider", choices=("auto", "cpu", "cuda"), default="auto",
                        help="given to ModelRunner and the server (auto)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ORT threads, given to ModelRunner and the server (0 = cores)")
    parser.add_argument("--allow-spinning", action="store_true",
                        help="let ORT threads spin-wait, in ModelRunner and the server (off)")
    parser.add_argument("--instances", type=int, default=1,
                        help="model instances, given to ModelRunner and the server (1)")
    parser.add_argument("--model-dir", type=Path,
                        help=f"use this model directory (default: export once into "
                             f"{CACHE_DIR / MODEL_CACHE_NAME})")
    parser.add_argument("--refresh-model", action="store_true", help="export the model again")
    parser.add_argument("--client", choices=("raw", "sdk"), default="raw",
                        help="raw: pre-serialised request bytes (least client CPU); "
                             "sdk: AsyncScoringClient.score_images")
    parser.add_argument("--png", action="store_true",
                        help="also drive the batched server with a PNG per request")
    parser.add_argument("--rounds", type=int, default=None,
                        help="paired concurrency-1 rounds: raw batch 1, served, gRPC floor "
                             "back to back (5; --quick 1; 0 = skip)")
    parser.add_argument("--skip-unbatched", action="store_true",
                        help="do not measure the --max-batch-size 1 server")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop measuring after this long, export excluded (1200; --quick 240)")
    parser.add_argument("--output", type=Path, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 10.0)
    raw_duration = args.raw_duration or (0.5 if args.quick else 3.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    max_seconds = args.max_seconds or (240.0 if args.quick else 1200.0)
    rounds_wanted = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    round_seconds = 1.0 if args.quick else 4.0
    concurrencies: list[int] = args.concurrency

    header = machine_header(PACKAGES)
    print("\n".join(header))
    load_before = load_average()
    print(f"load average before: {load_before}", flush=True)

    model_dir = args.model_dir or ensure_model(args.refresh_model, timeout=900)
    manifest = load_manifest(model_dir)
    shape = (manifest.input_channels, manifest.input_height, manifest.input_width)
    notes = [f"model: {manifest.name} v{manifest.version} from {model_dir}, input "
             f"{'x'.join(map(str, shape))}, {manifest.num_classes} classes"
             f"{', random weights' if manifest.random_weights else ''}"]
    notes.append(f"raw: {raw_duration:g} s per batch size; served: {warmup:g} s warm-up + "
                 f"{duration:g} s per point, client {args.client}, one image per request "
                 f"(float32 pixels{', and PNG' if args.png else ''})")

    raw: list[Row] = []
    served: list[Row] = []
    rounds: list[PairedRound] = []
    error = ""
    common_args = ["--model-dir", str(model_dir), "--execution-provider",
                   args.execution_provider, "--intra-op-threads", str(args.intra_op_threads),
                   "--max-queue-delay-ms", "2", "--max-queue-size", "1024",
                   "--instances", str(args.instances),
                   "--allow-spinning", "true" if args.allow_spinning else "false"]
    try:
        with time_limit(max_seconds):
            print("(a) raw ONNX Runtime through ModelRunner", flush=True)
            runner = ModelRunner(model_dir, execution_provider=args.execution_provider,
                                 intra_op_threads=args.intra_op_threads,
                                 instances=args.instances, allow_spinning=args.allow_spinning)
            notes.append(f"raw: ModelRunner on {runner.provider}, {args.instances} instance(s) "
                         f"of {runner.intra_op_threads} intra-op thread(s), one caller each, "
                         f"spinning {'on' if args.allow_spinning else 'off'}")
            runner.warm_up((1, max(args.batch_sizes)))
            raw = raw_bench(runner, args.batch_sizes, raw_duration)

            payloads = [pixels_payload(shape)]
            if args.png:
                payloads.append(png_payload(shape))
            batched_args = [*common_args, "--max-batch-size", "64"]
            if rounds_wanted:
                print("(b) paired rounds: raw, served and the gRPC floor back to back", flush=True)
                notes.append(f"paired rounds: {round_seconds:g} s each of raw batch 1 (instance "
                             f"0), the batched server and the gRPC floor "
                             f"(bench/grpc_floor_server.py) with one caller, then raw batch "
                             f"{max(concurrencies)} and the server with {max(concurrencies)}")
                rounds = paired_bench(runner, batched_args, payloads[0], max(concurrencies),
                                      rounds_wanted, round_seconds, warmup)
            del runner
            gc.collect()
            print("(c) served, batched", flush=True)
            served += served_bench("batched", batched_args,
                                   payloads, concurrencies, warmup, duration, args.client, notes)
            if not args.skip_unbatched:
                print("(d) served, unbatched", flush=True)
                served += served_bench("unbatched", [*common_args, "--max-batch-size", "1"],
                                       payloads[:1], concurrencies, warmup, duration,
                                       args.client, notes)
    except (BenchTimeout, RuntimeError, OSError) as exc:
        error = f"benchmark stopped early: {exc}"
    except Exception as exc:  # grpc errors and the like: still report what was measured
        error = f"benchmark stopped early: {type(exc).__name__}: {exc}"
    load_after = load_average()
    if error:
        print(error, file=sys.stderr)

    rows = raw + served
    if not rows:
        return 0
    checks = target_checks(raw, served, concurrencies, rounds)
    print()
    print("\n".join(notes))
    print(table(rows, markdown=False))
    print()
    if rounds:
        print(paired_table(rounds, max(concurrencies), markdown=False))
        print()
    print("\n".join(checks))
    print(f"load average after: {load_after} (nproc {os.cpu_count()})")
    if args.output:
        text = "\n".join([
            "# Image scoring throughput", "", *(f"- {line}" for line in header),
            f"- load average before: {load_before}; after: {load_after}",
            *(f"- {n}" for n in notes), "", table(rows, markdown=True), "",
            *([paired_table(rounds, max(concurrencies), markdown=True), ""] if rounds else []),
            *(f"- {c}" for c in checks), "",
        ])
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
