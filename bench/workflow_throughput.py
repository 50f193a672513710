"""Images/s of the data-set workflow, each as a share of the same server's capacity measured in
the same run: score-dir from a local folder, score-dir from a manifest in S3 (moto on
127.0.0.1), score-ray on a local Ray cluster (the ray extra), and the same Ray run scoring in
process (hardscore-ray-score: the model inside the actors, no server; its ratio compares it with
the service's capacity).

Capacity: callers sending ScoreImages requests of ``--batch-size`` PNGs (the images of the
run) back to back for ``--duration`` seconds at the workflow's concurrency, taken before and
after each workflow run; the ratio is the workflow's images/s over the mean of the two. The
client runs on the same cores as the server, as the capacity callers do.

    .venv/bin/python bench/workflow_throughput.py            # 2,160 images, 3 rounds
    .venv/bin/python bench/workflow_throughput.py --quick    # a few seconds a path
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from common import Server, format_table, load_average, machine_header

from hardscore_client.dataset import Item, read_manifest_items, scan_folder, score_items
from hardscore_client.messages import image_sample
from hardscore_wire import scoring_pb2 as pb

from digits_example import write_digits_example

SCORE_IMAGES = "/" + pb.DESCRIPTOR.services_by_name["ScoringService"].full_name + "/ScoreImages"
SERVER_ARGS = ["--max-batch-size", "32", "--max-queue-delay-ms", "5", "--max-queue-size", "512"]


def images(folder: Path, count: int) -> list[Item]:
    """``count`` digit PNGs (the 540 held-out digits, copied as often as needed)."""
    source = folder / "digits"
    write_digits_example(source)
    found = scan_folder(source)
    items = []
    for i in range(count):
        item = found[i % len(found)]
        if i >= len(found):  # a copy under another name: every path is a new row
            copy = folder / "copies" / item.label / f"{i:06d}-{Path(item.path).name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item.path, copy)
            item = Item(str(copy), item.label)
        items.append(item)
    return items


async def _capacity(target: str, request: bytes, per_call: int, concurrency: int,
                    seconds: float) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(SCORE_IMAGES, request_serializer=None,
                                   response_deserializer=None)
        await call(request, timeout=60, wait_for_ready=True)
        done = 0
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await call(request, timeout=60)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return done * per_call / (time.perf_counter() - started)


def capacity(target: str, items: list[Item], batch: int, concurrency: int,
             seconds: float) -> float:
    """Images/s the server holds for requests of ``batch`` of the run's images."""
    samples = [image_sample(Path(it.path).read_bytes()) for it in items[:batch]]
    request = pb.ScoreImagesRequest(samples=samples, options=pb.ScoringOptions(
        include_probabilities=True)).SerializeToString()
    return asyncio.run(_capacity(target, request, batch, concurrency, seconds))


@contextlib.contextmanager
def s3_manifest(items: list[Item]) -> Iterator[str]:
    """The images in a moto S3 server on 127.0.0.1 and a Parquet manifest of them; yields the
    manifest's URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from moto.server import ThreadedMotoServer

    from hardscore_client.sources import filesystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}")
    try:
        fs, _ = filesystem("s3://bench/")
        fs.mkdir("bench")
        keys = [f"img/{i:06d}.png" for i in range(len(items))]
        fs.pipe({f"bench/{k}": Path(it.path).read_bytes()
                 for k, it in zip(keys, items, strict=True)})
        buffer = io.BytesIO()
        pq.write_table(pa.table({"uri": [f"s3://bench/{k}" for k in keys],
                                 "label": [it.label for it in items]}), buffer)
        fs.pipe("bench/manifest.parquet", buffer.getvalue())
        yield "s3://bench/manifest.parquet"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (tests)")
    parser.add_argument("--images", type=int, default=None, help="images a run (2160; quick 256)")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each path (3; quick 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of each capacity window (4; quick 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--paths", default="local,s3,ray,ray-in-process",
                        help="which of local, s3, ray, ray-in-process to run (comma list)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    count = args.images or (256 if args.quick else 2160)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.duration or (1.0 if args.quick else 4.0)
    paths = [p for p in args.paths.split(",") if p]
    print("\n".join(machine_header(["grpcio", "onnxruntime", "ray"])))
    print(f"load before: {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Server(*SERVER_ARGS) as srv:
        folder = Path(tmp)
        items = images(folder, count)
        for name in paths:
            with contextlib.ExitStack() as stack:
                if name == "s3":
                    work, _ = read_manifest_items(stack.enter_context(s3_manifest(items)))
                else:
                    work = items
                ray_init_s = 0.0
                if name.startswith("ray"):  # the environment first: Ray reads it on import
                    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                    if "RAY_AUTH_TOKEN_PATH" not in os.environ:  # not one left in ~/.ray
                        token = folder / "ray_auth_token"
                        token.write_text(secrets.token_hex(32))
                        os.environ.update(RAY_AUTH_MODE="token",
                                          RAY_AUTH_TOKEN_PATH=str(token))
                    import ray

                    started = time.perf_counter()
                    ray.init(address="local", include_dashboard=False, log_to_driver=False,
                             num_cpus=2, configure_logging=False)
                    stack.callback(ray.shutdown)
                    ray_init_s = time.perf_counter() - started
                ratios, rates, caps = [], [], []
                for r in range(rounds):
                    before = capacity(srv.target, items, args.batch_size, args.concurrency,
                                      seconds)
                    out = folder / f"{name}-{r}"
                    started = time.perf_counter()
                    if name == "ray":
                        from hardscore_client.ray_scoring import score_ray

                        done = score_ray(work, [srv.target], out, actors=args.concurrency,
                                         batch_size=args.batch_size, progress=False)
                        scored = done.scored
                    elif name == "ray-in-process":  # 2 actors of 1 CPU: Ray's 2 CPUs
                        from hardscore_server.tools.ray_scorer import run as run_in_process

                        manifest = folder / "manifest.csv"
                        manifest.write_text("uri,label\n" + "".join(
                            f"{it.path},{it.label}\n" for it in work))
                        counts = run_in_process(str(manifest), out, actors=2, threads=1,
                                                batch_size=args.batch_size,
                                                execution_provider="cpu", progress=False)
                        scored = counts.get("", 0)
                    else:
                        scored = score_items(work, [srv.target], out.with_suffix(".parquet"),
                                             batch_size=args.batch_size,
                                             concurrency=args.concurrency,
                                             progress=False).scored
                    rate = scored / (time.perf_counter() - started)
                    if scored != count:
                        raise SystemExit(f"{name}: scored {scored} of {count} images")
                    after = capacity(srv.target, items, args.batch_size, args.concurrency,
                                     seconds)
                    cap = (before + after) / 2
                    rates.append(rate)
                    caps.append(cap)
                    ratios.append(rate / cap)
                note = (f"ray.init {ray_init_s:.1f} s, not counted" if name.startswith("ray")
                        else "")
                rows.append([name, str(count), str(rounds), f"{statistics.median(rates):.0f}",
                             f"{statistics.median(caps):.0f}",
                             f"{statistics.median(ratios):.3f}", note])
    print(f"load after: {load_average()}")
    print(format_table(["path", "images", "rounds", "workflow img/s (median)",
                        "capacity img/s (median)", "ratio (median)", "note"], rows,
                       markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
