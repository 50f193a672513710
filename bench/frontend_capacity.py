"""Front-end capacity: what one and N server processes serve when the model costs nothing.

The model is generated in the run (``write_tiny_model``): global average pool + a 3x10 linear
layer, a few microseconds per batch, in two model directories (3x32x32 and 3x224x224 input). So
the figures measure only the work a GPU would not take off the CPUs: gRPC, image decode and
resize, batching, scores, replies.

Cases: 32x32 PNG and 224x224 JPEG (8 fixed images of seeded noise), 1 and 16 images per
ScoreImages call, with ``--workers 1`` and ``--workers 2`` (one server process, or two on one
port under the supervisor). Each case runs ``--connections`` closed-loop callers, one connection
each (the kernel spreads connections over the SO_REUSEPORT group), for ``--duration`` seconds
after ``--warmup``. Rounds (``--rounds``) interleave 1 and 2 processes so that both see the same
state of a shared machine; the table gives per-round figures and medians.

Load comes from ``h2load`` (nghttp2's HTTP/2 load generator, C: a pre-framed gRPC request body,
a small fraction of a core) when it is on PATH, else from an asyncio gRPC client in this process
(``--client python``; pre-serialised requests, replies not parsed). The client's CPU is
measured and printed: a client using much CPU steals it from the servers on a small machine.
Images/s are counted by the server (``hardscore_samples_scored_total`` over the window, from the
supervisor's summed /metrics); calls that were not OK are counted and printed as errors.

Columns: images/s; server cores (CPU seconds of the supervisor and its workers per second);
images/s per server core; client cores; the share of calls each worker answered. A report, not
a test: exit status 0 whatever the numbers (the target, 2 processes >= 1.7 x one, is printed
PASS/MISS).

    .venv/bin/python bench/frontend_capacity.py              # full: ~4 minutes
    .venv/bin/python bench/frontend_capacity.py --quick      # smoke: ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from common import (
    BenchTimeout,
    Server,
    format_table,
    load_average,
    machine_header,
    median,
    metric_total,
    scrape,
    time_limit,
    verdict,
)
from PIL import Image

from hardscore_server.model.model_dir import RESIZE_EXACT, ModelManifest, write_manifest
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_wire import scoring_pb2 as pb

SCORE_IMAGES = "/" + pb.DESCRIPTOR.services_by_name["ScoringService"].full_name + "/ScoreImages"
TARGET_RATIO = 1.7
"""Two server processes should serve at least this many times what one does."""
IMAGES = 8
CLASSES = 10


# -- the near-zero-cost model and the images ----------------------------------------------------

def write_tiny_model(model_dir: Path, size: int) -> None:
    """A model directory whose graph costs microseconds: GlobalAveragePool -> Flatten -> Gemm.

    Input float32 [N, 3, size, size], output [N, 10] logits; seeded weights (random_weights).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, CLASSES)).astype(np.float32), "weight")
    bias = numpy_helper.from_array(rng.normal(size=CLASSES).astype(np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"])],
        f"tiny{size}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="hardscore-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    write_manifest(model_dir, ModelManifest(
        name=f"tiny-{size}", version="1", class_names=tuple(str(i) for i in range(CLASSES)),
        input_channels=3, input_height=size, input_width=size, mean=(0.5,) * 3, std=(0.5,) * 3,
        resize=RESIZE_EXACT, random_weights=True,
        provenance={"architecture": "GlobalAveragePool + Gemm 3x10 (front-end benchmark)"}))


def make_images(kind: str) -> list[bytes]:
    """8 seeded images: ``png32`` (32x32 RGB PNG of noise) or ``jpeg224`` (224x224 JPEG, q 90,
    smooth noise so that it compresses like a photo: ~10-20 KB)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(IMAGES):
        if kind == "png32":
            out.append(encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        else:
            small = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
            buffer = io.BytesIO()
            small.resize((224, 224), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def request_bytes(images: list[bytes], per_call: int) -> bytes:
    """A serialised ScoreImagesRequest of ``per_call`` images (cycling through ``images``)."""
    samples = [pb.ImageSample(encoded=images[i % len(images)]) for i in range(per_call)]
    return pb.ScoreImagesRequest(samples=samples).SerializeToString()


# -- load -----------------------------------------------------------------------------------------

@dataclass
class Window:
    images_per_s: float
    server_cores: float
    client_cores: float
    calls: float
    errors: float
    shares: list[float] = field(default_factory=list)


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of ``pid`` and its children (the workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def worker_urls(server: Server) -> list[str]:
    """Each worker's own /metrics (from its relayed "serving" line); [] for a single process."""
    pattern = re.compile(r"^worker \d+ \| .*metrics on [^ ]+:(\d+)")
    return [f"http://127.0.0.1:{m[1]}/metrics" for line in server.lines
            if (m := pattern.search(line))]


def ok_calls(samples: dict[str, float]) -> float:
    return metric_total(samples, "hardscore_requests_total", 'code="OK",method="ScoreImages"')


def all_calls(samples: dict[str, float]) -> float:
    return metric_total(samples, "hardscore_requests_total", 'method="ScoreImages"')


class PythonLoad:
    """``connections`` asyncio callers on a loop thread of their own, one channel each."""

    def __init__(self, target: str, body: bytes, connections: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(
            self._main(target, body, connections)), daemon=True)

    async def _main(self, target: str, body: bytes, connections: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.max_receive_message_length", -1)]
        channels = [grpc.aio.insecure_channel(target, options=options)
                    for _ in range(connections)]

        async def caller(channel: grpc.aio.Channel) -> None:
            # bytes in, bytes out: nothing serialised or parsed per call
            call = channel.unary_unary(SCORE_IMAGES, None, None)
            while not self._stop.is_set():
                with contextlib.suppress(grpc.aio.AioRpcError):  # the server counts errors
                    await call(body, timeout=60)
        await asyncio.gather(*(caller(c) for c in channels))
        for channel in channels:
            await channel.close(None)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


class H2Load:
    """``h2load`` posting the gRPC-framed request on ``connections`` connections, 1 stream each."""

    def __init__(self, target: str, body: bytes, connections: int, seconds: float,
                 work: Path) -> None:
        path = work / "request.grpc"
        path.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)  # gRPC message frame
        self.args = [
            "h2load", "-c", str(connections), "-m", "1", "-D", str(math.ceil(seconds)),
            "-d", str(path), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://{target}{SCORE_IMAGES}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stops it after the window (calls cut short then are not counted)."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(server: Server, body: bytes, per_call: int, args: argparse.Namespace,
            work: Path) -> Window:
    """One window: load for warm-up + duration; server-side counts over the duration only."""
    assert server.proc is not None
    use_h2load = args.client == "h2load"
    load: PythonLoad | H2Load
    if use_h2load:
        # runs past the window (stopped after it), so that its end never falls inside
        load = H2Load(server.target, body, args.connections, args.warmup + args.duration + 30,
                      work)
    else:
        load = PythonLoad(server.target, body, args.connections)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = time.process_time()
    started = time.monotonic()
    load.start()
    time.sleep(args.warmup)
    urls = worker_urls(server)
    before, cpu0, t0 = scrape(server.metrics_url), process_tree_cpu_s(server.proc.pid), \
        time.monotonic()
    workers_before = [ok_calls(scrape(u)) for u in urls]
    time.sleep(args.duration)
    after, cpu1, t1 = scrape(server.metrics_url), process_tree_cpu_s(server.proc.pid), \
        time.monotonic()
    workers_after = [ok_calls(scrape(u)) for u in urls]
    if not use_h2load:
        load.stop()
        client_cpu = time.process_time() - self_before
    else:
        load.stop()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (children_after.ru_utime - children_before.ru_utime
                      + children_after.ru_stime - children_before.ru_stime)
    wall = time.monotonic() - started
    seconds = t1 - t0
    images = (metric_total(after, "hardscore_samples_scored_total", 'kind="images"')
              - metric_total(before, "hardscore_samples_scored_total", 'kind="images"'))
    ok = ok_calls(after) - ok_calls(before)
    errors = (all_calls(after) - all_calls(before)) - ok
    errors += (metric_total(after, "hardscore_sample_errors_total")
               - metric_total(before, "hardscore_sample_errors_total"))
    worker_ok = [a - b for a, b in zip(workers_after, workers_before, strict=True)]
    shares = [w / sum(worker_ok) for w in worker_ok] if sum(worker_ok) else []
    return Window(images / seconds, (cpu1 - cpu0) / seconds, client_cpu / wall, ok, errors,
                  shares)


# -- the run --------------------------------------------------------------------------------------

CASES = (("png32", 32, 1), ("png32", 32, 16), ("jpeg224", 224, 1), ("jpeg224", 224, 16))


def case_name(kind: str, per_call: int) -> str:
    image = "32x32 PNG" if kind == "png32" else "224x224 JPEG"
    return f"{image}, {per_call}/call"


def run(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="hardscore-frontend-"))
    results: dict[tuple[str, int, int], list[Window]] = {}
    try:
        for size in (32, 224):
            write_tiny_model(work / f"tiny{size}", size)
        bodies = {(kind, per_call): request_bytes(make_images(kind), per_call)
                  for kind, _, per_call in CASES}
        for round_index in range(args.rounds):
            for size in (32, 224):
                for workers in args.workers:
                    server = Server(
                        "--model-dir", str(work / f"tiny{size}"), "--workers", str(workers),
                        "--max-batch-size", "64", "--max-queue-size", "8192",
                        "--intra-op-threads", "1",
                    ).start()
                    try:
                        for kind, case_size, per_call in CASES:
                            if case_size != size:
                                continue
                            window = measure(server, bodies[kind, per_call], per_call, args, work)
                            results.setdefault((kind, per_call, workers), []).append(window)
                            print(f"round {round_index + 1}: {case_name(kind, per_call)}, "
                                  f"{workers} process(es): {window.images_per_s:,.0f} images/s, "
                                  f"server {window.server_cores:.2f} cores, client "
                                  f"{window.client_cores:.2f} cores, errors "
                                  f"{window.errors:.0f}", flush=True)
                    finally:
                        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for kind, _, per_call in CASES:
        for workers in args.workers:
            windows = results.get((kind, per_call, workers), [])
            if not windows:
                continue
            ips = median([w.images_per_s for w in windows])
            cores = median([w.server_cores for w in windows])
            shares = windows[-1].shares
            rows.append([
                case_name(kind, per_call), str(workers),
                " / ".join(f"{w.images_per_s:,.0f}" for w in windows), f"{ips:,.0f}",
                f"{cores:.2f}", f"{ips / cores:,.0f}" if cores else "-",
                f"{median([w.client_cores for w in windows]):.2f}",
                f"{sum(w.errors for w in windows):.0f}",
                " / ".join(f"{s:.0%}" for s in shares) if shares else "-"])
    headers = ["case", "processes", "images/s per round", "images/s (median)", "server cores",
               "images/s per server core", "client cores", "errors", "worker shares"]
    out.append(format_table(headers, rows, markdown=True))
    if len(args.workers) == 2 and args.workers[0] == 1:
        out.append("")
        top = args.workers[1]
        for kind, _, per_call in CASES:
            one, many = results.get((kind, per_call, 1)), results.get((kind, per_call, top))
            if not one or not many:
                continue
            ratios = [m.images_per_s / o.images_per_s for o, m in zip(one, many, strict=True)]
            ratio = median(ratios)
            out.append(f"{case_name(kind, per_call)}: {top} processes / 1 = {ratio:.2f} "
                       f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= "
                       f"{TARGET_RATIO}) {verdict(ratio >= TARGET_RATIO)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short windows")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per window (default 6; quick 1)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before each window (default 1.5; quick 0.5)")
    parser.add_argument("--connections", type=int, default=16, help="callers, one connection "
                        "each (default 16)")
    parser.add_argument("--workers", default="1,2", help="server processes to compare (1,2)")
    parser.add_argument("--client", choices=("auto", "h2load", "python"), default="auto",
                        help="load generator (auto: h2load when on PATH)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="overall time limit")
    parser.add_argument("--output", help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.5)
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.client == "auto":
        args.client = "h2load" if shutil.which("h2load") else "python"
    header = [*machine_header(["grpcio", "onnxruntime", "Pillow"]),
              f"client: {args.client}, {args.connections} connections; {args.rounds} round(s) "
              f"of {args.duration:g} s windows after {args.warmup:g} s warm-up"]
    print("\n".join(header), flush=True)
    report = list(header)
    try:
        with time_limit(args.max_seconds):
            report += run(args)
    except BenchTimeout as exc:
        print(f"benchmark stopped early: {exc}", file=sys.stderr)
        return 0
    report.append(f"load average after: {load_average()}")
    print("\n".join(report[len(header):]))
    if args.output:
        Path(args.output).write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
