"""Soak: steady concurrent load for minutes; zero errors and bounded memory growth.

Starts ``hardscore-server`` with the embedded default model and bearer-token auth on (so the
auth interceptor is soaked too), then runs ``--concurrency`` asyncio callers on one gRPC channel
for ``--duration`` seconds. Each caller cycles through a mix of every kind of call, and checks
every reply against the answers computed in a calm reference pass before the load:

- ScoreImages: 8 held-out digit PNGs with given labels;
- ScoreImages with one undecodable image among 7 good ones (per-sample error path);
- ScoreImagesStream: 3 chunks of 16 PNGs;
- ScoreLogits: 512 x 10 seeded logits with labels (compared with in-process scoring);
- ModelInfer (Open Inference Protocol): 4 PNGs as BYTES, predicted_class and hardness;
- GetModelInfo.

The server's resident memory (VmRSS from /proc) is sampled every ``--sample-every`` seconds.
Growth is measured from the end of the warm-up (``--warmup``, default a fifth of the duration,
at least 20 s) to the end of the run, as the median of the last samples of each, and reported
with the least-squares slope after warm-up (MiB per minute).

Verdicts: zero errors (any non-OK status or wrong result counts), and growth below
``--max-growth-pct`` (10). Exit status 1 if either misses, so the soak can gate a run.

    .venv/bin/python bench/soak.py                     # 5 minutes
    .venv/bin/python bench/soak.py --duration 60       # a short one
    .venv/bin/python bench/soak.py --output soak.md    # also write the report as markdown
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from common import (
    BenchTimeout,
    Server,
    fmt,
    format_table,
    load_average,
    machine_header,
    metric_total,
    percentile,
    scrape,
    time_limit,
    verdict,
)

from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.pipeline.scores import score_logits
from hardscore_server.tools.digits import heldout_split
from hardscore_server.transport.inference_protocol import grpc_service_pb2 as oip
from hardscore_server.transport.inference_protocol import grpc_service_pb2_grpc as oip_grpc
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import from_tensor, to_tensor

MODEL = "digits-resnet"
PACKAGES = ["hardscore", "numpy", "grpcio", "protobuf", "onnxruntime"]


class WrongResult(Exception):
    """A reply with status OK whose content is not the expected answer."""


@dataclass
class Reference:
    pngs: list[bytes]
    labels: np.ndarray
    predicted: np.ndarray
    hardness: np.ndarray
    logits: np.ndarray
    logit_labels: np.ndarray
    logit_hardness: np.ndarray


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_errors: list[str] = field(default_factory=list)
    images: int = 0

    def error(self, kind: str, what: str) -> None:
        self.errors[f"{kind}: {what.split(':')[0]}"] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{kind}: {what}")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def build_reference(stub: pb_grpc.ScoringServiceStub, metadata: tuple[tuple[str, str], ...]
                    ) -> Reference:
    _, _, images, labels = heldout_split()
    pngs = [encode_png(img) for img in images]
    predicted, hardness = [], []
    for start in range(0, len(pngs), 32):  # calm: one request at a time
        request = pb.ScoreImagesRequest(
            samples=[pb.ImageSample(encoded=p) for p in pngs[start:start + 32]])
        reply = stub.ScoreImages(request, timeout=60, metadata=metadata)
        predicted.append(from_tensor(reply.scores.predicted_class))
        hardness.append(from_tensor(reply.scores.hardness))
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(512, 10)) * 3).astype(np.float32)
    logit_labels = rng.integers(0, 10, 512)
    return Reference(pngs, labels, np.concatenate(predicted), np.concatenate(hardness), logits,
                     logit_labels, score_logits(logits, logit_labels).hardness)


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise WrongResult(what)


class Caller:
    """One concurrent caller: cycles through the call mix, checking every reply."""

    def __init__(self, number: int, channel: grpc.aio.Channel, ref: Reference,
                 metadata: tuple[tuple[str, str], ...], stats: Stats) -> None:
        self.number = number
        self.stub = pb_grpc.ScoringServiceStub(channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(channel)
        self.ref = ref
        self.md = metadata
        self.stats = stats
        self.rng = np.random.default_rng(number)
        self.kinds: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("ScoreImages", self.score_images), ("ScoreImages+bad", self.score_images_bad),
            ("ScoreImagesStream", self.score_images_stream), ("ScoreLogits", self.score_logits),
            ("ModelInfer", self.model_infer), ("GetModelInfo", self.model_info),
        ]

    def pick(self, n: int) -> np.ndarray:
        return self.rng.choice(len(self.ref.pngs), n, replace=False)

    def check_scores(self, scores: pb.Scores, idx: np.ndarray, bad: int = -1) -> None:
        predicted = from_tensor(scores.predicted_class)
        hardness = from_tensor(scores.hardness)
        good = np.arange(len(idx)) != bad
        expect(predicted[good].tolist() == self.ref.predicted[idx[good]].tolist(),
               "predicted classes differ from the reference")
        expect(bool(np.allclose(hardness[good], self.ref.hardness[idx[good]], atol=1e-4)),
               "hardness differs from the reference")
        if bad >= 0:
            expect(int(predicted[bad]) == -1, "bad sample was scored")

    def images_request(self, idx: np.ndarray, bad: int = -1) -> pb.ScoreImagesRequest:
        samples = [pb.ImageSample(encoded=self.ref.pngs[i], label_index=int(self.ref.labels[i]))
                   for i in idx]
        if bad >= 0:
            samples[bad].encoded = b"\x89PNG\r\n\x1a\n not really"
        return pb.ScoreImagesRequest(samples=samples)

    async def score_images(self) -> int:
        idx = self.pick(8)
        reply = await self.stub.ScoreImages(self.images_request(idx), timeout=60, metadata=self.md)
        expect(not reply.errors, "unexpected sample errors")
        self.check_scores(reply.scores, idx)
        return 8

    async def score_images_bad(self) -> int:
        idx = self.pick(8)
        reply = await self.stub.ScoreImages(self.images_request(idx, bad=3), timeout=60,
                                            metadata=self.md)
        expect([(e.index, e.reason) for e in reply.errors] == [(3, "decode")],
               f"errors {list(reply.errors)}")
        self.check_scores(reply.scores, idx, bad=3)
        return 8

    async def score_images_stream(self) -> int:
        chunks = [self.pick(16) for _ in range(3)]

        async def requests() -> AsyncIterator[pb.ScoreImagesStreamRequest]:
            for idx in chunks:
                yield pb.ScoreImagesStreamRequest(chunk=self.images_request(idx))

        replies = 0
        async for reply in self.stub.ScoreImagesStream(requests(), timeout=60, metadata=self.md):
            expect(reply.first_row == 16 * replies, "stream rows out of order")
            self.check_scores(reply.result.scores, chunks[replies])
            replies += 1
        expect(replies == 3, f"{replies} stream replies, expected 3")
        return 48

    async def score_logits(self) -> int:
        request = pb.ScoreLogitsRequest(
            logits=to_tensor(self.ref.logits),
            labels=pb.GivenLabels(indices=pb.LabelIndices(values=self.ref.logit_labels.tolist())))
        reply = await self.stub.ScoreLogits(request, timeout=60, metadata=self.md)
        expect(bool(np.array_equal(from_tensor(reply.scores.hardness), self.ref.logit_hardness)),
               "logits hardness differs from in-process scoring")
        return 0

    async def model_infer(self) -> int:
        idx = self.pick(4)
        request = oip.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="images", datatype="BYTES", shape=[4])
        tensor.contents.bytes_contents[:] = [self.ref.pngs[i] for i in idx]
        request.outputs.add(name="predicted_class")
        reply = await self.oip.ModelInfer(request, timeout=60, metadata=self.md)
        output = reply.outputs[0]
        values = (np.frombuffer(reply.raw_output_contents[0], "<i8").tolist()
                  if reply.raw_output_contents else list(output.contents.int64_contents))
        expect(values == self.ref.predicted[idx].tolist(), "ModelInfer predictions differ")
        return 4

    async def model_info(self) -> int:
        reply = await self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60,
                                             metadata=self.md)
        expect(reply.name == MODEL, f"model info names {reply.name!r}")
        return 0

    async def run(self, until: float) -> None:
        turn = self.number
        while time.monotonic() < until:
            kind, call = self.kinds[turn % len(self.kinds)]
            turn += 1
            started = time.perf_counter()
            try:
                self.stats.images += await call()
            except grpc.aio.AioRpcError as exc:
                self.stats.error(kind, f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.1)
                continue
            except WrongResult as exc:
                self.stats.error(kind, f"wrong result: {exc}")
                continue
            self.stats.latencies[kind].append(time.perf_counter() - started)


async def sample_memory(pid: int, every: float, until: float,
                        samples: list[tuple[float, int]]) -> None:
    start = time.monotonic()
    while True:
        samples.append((time.monotonic() - start, rss_bytes(pid)))
        if time.monotonic() >= until:
            return
        await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))


async def soak(server: Server, ref_metadata: tuple[tuple[str, str], ...], args: argparse.Namespace,
               ref: Reference, stats: Stats, samples: list[tuple[float, int]]) -> float:
    assert server.proc is not None
    async with grpc.aio.insecure_channel(server.target) as channel:
        started = time.monotonic()
        until = started + args.duration
        callers = [Caller(i, channel, ref, ref_metadata, stats) for i in range(args.concurrency)]
        await asyncio.gather(sample_memory(server.proc.pid, args.sample_every, until, samples),
                             *[c.run(until) for c in callers])
        return time.monotonic() - started


def mib(value: float) -> str:
    return fmt(value / 2**20, 1)


def memory_figures(samples: list[tuple[float, int]], warmup: float) -> dict[str, float]:
    after = [(t, r) for t, r in samples if t >= warmup]
    at_warmup = [r for t, r in samples if t <= warmup][-3:] or [samples[0][1]]
    at_end = [r for _, r in samples][-3:]
    warm, end = float(np.median(at_warmup)), float(np.median(at_end))
    slope = float("nan")
    if len(after) >= 3:
        times = np.array([t for t, _ in after]) / 60
        slope = float(np.polyfit(times, np.array([r for _, r in after], dtype=float), 1)[0])
    return {"start": float(samples[0][1]), "warm": warm, "end": end,
            "max": float(max(r for _, r in samples)), "growth_pct": (end - warm) / warm * 100,
            "slope": slope}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (300)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the memory baseline (default: duration/5, >= 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers (8)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--max-growth-pct", type=float, default=10.0,
                        help="RSS growth after warm-up that still passes (10)")
    parser.add_argument("--no-auth", action="store_true", help="run the server without tokens")
    parser.add_argument("--output", help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1:
        parser.error("--duration must be > 0 and --concurrency >= 1")
    warmup = args.warmup if args.warmup is not None else max(20.0, args.duration / 5)
    warmup = min(warmup, args.duration / 2)

    token = secrets.token_urlsafe(24)
    metadata: tuple[tuple[str, str], ...] = () if args.no_auth else (
        ("authorization", f"Bearer {token}"),)
    lines = [*machine_header(PACKAGES), f"load average before: {load_average()}"]
    stats, samples = Stats(), list[tuple[float, int]]()
    server = Server("--max-batch-size", "32", "--max-queue-size", "2048")
    if not args.no_auth:
        server.env["HARDSCORE_AUTH_TOKENS"] = token
    try:
        with time_limit(args.duration + 300), server:
            with grpc.insecure_channel(server.target) as channel:
                ref = build_reference(pb_grpc.ScoringServiceStub(channel), metadata)
            print(f"soaking for {args.duration:.0f} s with {args.concurrency} callers ...",
                  file=sys.stderr)
            elapsed = asyncio.run(soak(server, metadata, args, ref, stats, samples))
            metrics = scrape(server.metrics_url)
        exit_code = server.proc.returncode if server.proc is not None else None
    except BenchTimeout as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    log = server.output()
    unexpected = [line for line in log.splitlines()
                  if "failed unexpectedly" in line or "Traceback" in line]

    served_ok = metric_total(metrics, "hardscore_requests_total", 'code="OK"')
    calls = sum(len(v) for v in stats.latencies.values())
    errors = sum(stats.errors.values())
    memory = memory_figures(samples, warmup)
    rows = [[kind, fmt(len(values)), fmt(len(values) / elapsed, 1),
             fmt(percentile(values, 50) * 1000, 1), fmt(percentile(values, 99) * 1000, 1)]
            for kind, values in sorted(stats.latencies.items())]
    lines += [
        f"duration: {elapsed:.0f} s, concurrency {args.concurrency}, "
        f"auth {'off' if args.no_auth else 'on (bearer token)'}, warm-up {warmup:.0f} s",
        f"load average after: {load_average()}",
        "",
        format_table(["call", "calls", "calls/s", "p50 ms", "p99 ms"], rows,
                     markdown=bool(args.output)),
        "",
        f"total: {calls:,} calls ({calls / elapsed:,.1f}/s), {stats.images:,} images "
        f"({stats.images / elapsed:,.1f}/s) sent, errors: {errors}"
        + (f" {dict(stats.errors)}" if errors else ""),
        *[f"  first error: {e}" for e in stats.first_errors],
        f"server: requests counted OK {served_ok:,.0f}, "
        f"queue depth at end {metric_total(metrics, 'hardscore_queue_depth'):.0f}, "
        f"unexpected errors logged {len(unexpected)}, exit code {exit_code}",
        f"server RSS (MiB): start {mib(memory['start'])}, after warm-up {mib(memory['warm'])}, "
        f"end {mib(memory['end'])}, max {mib(memory['max'])}; growth after warm-up "
        f"{memory['growth_pct']:+.2f}% (slope {memory['slope'] / 2**20:+.2f} MiB/min), "
        f"{len(samples)} samples",
        f"{verdict(errors == 0 and not unexpected and exit_code == 0)} zero errors",
        f"{verdict(memory['growth_pct'] < args.max_growth_pct)} RSS growth after warm-up "
        f"< {args.max_growth_pct:g}%",
    ]
    report = "\n".join(lines)
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    ok = errors == 0 and not unexpected and exit_code == 0 and (
        memory["growth_pct"] < args.max_growth_pct)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
