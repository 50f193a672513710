"""Image scoring throughput with embeddings returned versus without, same run, same server.

One server (``--model-dir``, default the embedded digits model; ``--resnet50``: the CIFAR-layout
ResNet50 with seeded random weights, 2048-d embeddings, exported once into ``bench/.cache/``)
is driven by N concurrent callers (asyncio, one gRPC channel), each sending ScoreImages
requests of ``--images`` pre-normalised float32 [C, H, W] pixel tensors, serialised once and
sent as bytes (the cheapest client: it shares the cores with the server). Paired rounds
(``--rounds``): in each, a window without ``include_embeddings`` and one with it run back to
back, in alternating order, so both see the same state of this noisy shared machine. The
replies are received whole (bytes); the first of each window is parsed to check the embeddings
are there only when asked.

Target: median images/s with embeddings >= 0.95 x without. A report, not a test: exit status 0
whatever the numbers.

    .venv/bin/python bench/embeddings_throughput.py --quick
    .venv/bin/python bench/embeddings_throughput.py --resnet50 --output bench-embeddings.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
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
    median,
    time_limit,
    verdict,
)

from hardscore_client.messages import image_sample
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, load_manifest
from hardscore_wire import scoring_pb2 as pb

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESNET50_CACHE_NAME = "resnet50-cifar-random-seed0-embedding"
SCORE_IMAGES = "/" + pb.DESCRIPTOR.services_by_name["ScoringService"].full_name + "/ScoreImages"
TARGET_RATIO = 0.95
PACKAGES = ("onnxruntime", "grpcio", "numpy")


def ensure_resnet50(timeout: float) -> Path:
    """The cached random-weights CIFAR ResNet50 with its embedding output; exported (in a
    subprocess, hardscore-export) when missing."""
    model_dir = CACHE_DIR / RESNET50_CACHE_NAME
    if (model_dir / "manifest.json").is_file() and load_manifest(model_dir).has_embedding:
        print(f"model: cached {model_dir}")
        return model_dir
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = CACHE_DIR / (RESNET50_CACHE_NAME + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "hardscore_server.tools.export", "--arch", "resnet50",
               "--layout", "cifar", "--random-weights", "--seed", "0", "--out", str(partial)]
    print(f"model: exporting to {model_dir} (once; later runs reuse it)", flush=True)
    try:
        subprocess.run(command, check=True, timeout=timeout)
        shutil.rmtree(model_dir, ignore_errors=True)
        partial.rename(model_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return model_dir


def request_bytes(shape: tuple[int, int, int], images: int, embeddings: bool) -> bytes:
    """One serialised ScoreImagesRequest of ``images`` seeded float32 pixel tensors."""
    rng = np.random.default_rng(0)
    samples = [image_sample(rng.standard_normal(shape).astype(np.float32))
               for _ in range(images)]
    options = pb.ScoringOptions(include_embeddings=embeddings)
    return pb.ScoreImagesRequest(samples=samples, options=options).SerializeToString()


async def window(target: str, payload: bytes, callers: int, seconds: float
                 ) -> tuple[int, int, bytes]:
    """``callers`` loops sending ``payload`` for ``seconds``: (requests done, errors, the
    first reply's bytes)."""
    async with grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        call = channel.unary_unary(SCORE_IMAGES, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        done = errors = 0
        first = b""
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal done, errors, first
            while time.perf_counter() < stop_at:
                try:
                    reply = await call(payload, timeout=30.0)
                except grpc.RpcError:
                    errors += 1
                    continue
                if not first:
                    first = reply
                done += 1

        await asyncio.gather(*(loop() for _ in range(callers)))
        return done, errors, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 1 s")
    parser.add_argument("--model-dir", type=Path, help="model directory (the embedded model)")
    parser.add_argument("--resnet50", action="store_true",
                        help="the random-weights CIFAR ResNet50 (exported once, cached)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (6; --quick 2)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per window (3; --quick 1)")
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers (4)")
    parser.add_argument("--images", type=int, default=8, help="images per request (8)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="server's (32)")
    parser.add_argument("--output", type=Path, help="also write the report as markdown here")
    args = parser.parse_args(argv)
    rounds_wanted = args.rounds or (2 if args.quick else 6)
    seconds = args.duration or (1.0 if args.quick else 3.0)

    header = machine_header(PACKAGES)
    print("\n".join(header))
    load_before = load_average()
    print(f"load average before: {load_before}", flush=True)
    model_dir = args.model_dir or (ensure_resnet50(900) if args.resnet50 else DEFAULT_MODEL_DIR)
    m = load_manifest(model_dir)
    if not m.has_embedding:
        print(f"{model_dir} has no embedding output: re-export it with hardscore-export",
              file=sys.stderr)
        return 1
    shape = (m.input_channels, m.input_height, m.input_width)
    payloads = {False: request_bytes(shape, args.images, False),
                True: request_bytes(shape, args.images, True)}
    notes = [f"model: {m.name} from {model_dir}, input {'x'.join(map(str, shape))}, "
             f"embedding {m.embedding_dim}-d{', random weights' if m.random_weights else ''}",
             f"{args.callers} callers x {args.images} float32 images per request, "
             f"server --max-batch-size {args.max_batch_size}; {rounds_wanted} paired rounds "
             f"of {seconds:g} s per window, order alternating"]
    rows: list[tuple[int, float, float, int]] = []  # round, without, with, errors
    error = ""
    server = Server("--model-dir", str(model_dir), "--max-batch-size", str(args.max_batch_size),
                    "--max-queue-delay-ms", "2", "--max-queue-size", "1024",
                    "--execution-provider", "cpu").start()
    try:
        with time_limit(60 + rounds_wanted * 2 * (seconds + 5)):
            asyncio.run(window(server.target, payloads[False], args.callers, seconds / 2))
            for r in range(rounds_wanted):
                rates: dict[bool, float] = {}
                errors = 0
                for asked in ((False, True) if r % 2 == 0 else (True, False)):
                    done, failed, first = asyncio.run(
                        window(server.target, payloads[asked], args.callers, seconds))
                    reply = pb.ScoreImagesResponse.FromString(first)
                    if reply.scores.HasField("embeddings") != asked:
                        raise RuntimeError(f"embeddings present: {not asked}, asked: {asked}")
                    rates[asked] = done * args.images / seconds
                    errors += failed
                rows.append((r + 1, rates[False], rates[True], errors))
                print(f"round {r + 1}: without {rates[False]:.0f} images/s, with "
                      f"{rates[True]:.0f} images/s", flush=True)
    except (BenchTimeout, RuntimeError, OSError, grpc.RpcError) as exc:
        error = f"benchmark stopped early: {exc}"
        print(error, file=sys.stderr)
    finally:
        server.stop()
    load_after = load_average()
    if not rows:
        return 0
    without, with_ = median([r[1] for r in rows]), median([r[2] for r in rows])
    ratio = with_ / without if without else float("nan")
    table_rows = [[str(r), fmt(a), fmt(b), f"{b / a:.3f}", str(e)] for r, a, b, e in rows]
    table_rows.append(["median", fmt(without), fmt(with_), f"{ratio:.3f}",
                       str(sum(r[3] for r in rows))])
    headers = ["round", "without images/s", "with images/s", "ratio", "errors"]
    check = (f"with / without embeddings = {ratio:.3f} (target >= {TARGET_RATIO}): "
             f"{verdict(ratio >= TARGET_RATIO)}")
    print()
    print("\n".join(notes))
    print(format_table(headers, table_rows))
    print(check)
    print(f"load average after: {load_after} (nproc {os.cpu_count()})")
    if args.output:
        args.output.write_text("\n".join([
            "# Embeddings throughput", "", *(f"- {line}" for line in header),
            f"- load average before: {load_before}; after: {load_after}",
            *(f"- {n}" for n in notes), "", format_table(headers, table_rows, markdown=True),
            "", f"- {check}", ""]))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
