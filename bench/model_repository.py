"""The model repository: peak memory with 1, 2 and 4 models loaded, and the time from a load
request to the first answer of the new version (a swap under load).

A repository of 4 copies of one model directory (``--model-dir``, default the embedded model)
is served in explicit control mode; the models are loaded one by one through tritonclient's
load_model, each then scored a few times, and the server's resident memory (VmRSS) and peak
(VmHWM) read from /proc after each. Then ``--swaps`` new versions of the first model (the same
files, another temperature) are loaded while ``--callers`` threads keep scoring it, each timed
from the load request to the first answer tagged with the new version; failed calls are counted.

    .venv/bin/python bench/model_repository.py [--model-dir DIR] [--swaps 10] [--callers 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tgrpc
from common import Server, time_limit

from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

TOKEN = "bench-control-token"
CONTROL = {"hardscore-control-token": TOKEN}


def write_version(source: Path, repo: Path, name: str, version: int) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    shutil.copy(source / "model.onnx", folder / "model.onnx")
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["temperature"] = 1.0 + 0.25 * version
    (folder / "manifest.json").write_text(json.dumps(manifest))


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    side = manifest["input"]["height"]
    rng = np.random.default_rng(0)
    pngs = [encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(4)]
    size = (args.model_dir / "model.onnx").stat().st_size
    print(f"model {manifest['name']} from {args.model_dir}: model.onnx {mib(size)}, "
          f"input {side}x{side}")
    with tempfile.TemporaryDirectory() as tmp, time_limit(args.max_seconds):
        repo = Path(tmp) / "repo"
        names = [f"m{i}" for i in range(1, 5)]
        for name in names:
            write_version(args.model_dir, repo, name, 1)
        server = Server("--model-repository", str(repo), "--model-control-mode", "explicit",
                        "--max-batch-size", "8", "--max-queue-size", "512")
        server.env["HARDSCORE_REPOSITORY_CONTROL_TOKENS"] = TOKEN
        with server, grpc.insecure_channel(server.target) as channel, \
                tgrpc.InferenceServerClient(server.target) as control:
            assert server.proc is not None
            pid = server.proc.pid
            stub = pb_grpc.ScoringServiceStub(channel)

            def score(name: str) -> str:
                reply = stub.ScoreImages(pb.ScoreImagesRequest(
                    samples=[pb.ImageSample(encoded=p) for p in pngs], model_name=name),
                    timeout=60)
                return str(reply.model_version)

            rss, peak = memory(pid)
            print("\n| models loaded | resident (VmRSS) | peak (VmHWM) | load + warm-up |")
            print("|---|---|---|---|")
            print(f"| 0 | {mib(rss)} | {mib(peak)} | |")
            for count, name in enumerate(names, 1):
                started = time.perf_counter()
                control.load_model(name, headers=CONTROL)
                seconds = time.perf_counter() - started
                for _ in range(5):
                    for scored in names[:count]:
                        score(scored)
                rss, peak = memory(pid)
                print(f"| {count} | {mib(rss)} | {mib(peak)} | {seconds:.2f} s |")

            stop = threading.Event()
            failed = [0]
            answered = [0]

            def caller() -> None:
                while not stop.is_set():
                    try:
                        score("m1")
                        answered[0] += 1
                    except grpc.RpcError:
                        failed[0] += 1

            threads = [threading.Thread(target=caller) for _ in range(args.callers)]
            for t in threads:
                t.start()
            times = []
            try:
                for version in range(2, 2 + args.swaps):
                    write_version(args.model_dir, repo, "m1", version)
                    started = time.perf_counter()
                    control.load_model("m1", headers=CONTROL)
                    loaded = time.perf_counter() - started
                    while score("m1") != str(version):
                        pass
                    times.append((loaded, time.perf_counter() - started))
                    time.sleep(0.2)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            rss, peak = memory(pid)
            first = [t for _, t in times]
            print(f"\n{args.swaps} swaps of m1 under {args.callers} callers: {answered[0]} calls "
                  f"answered, {failed[0]} failed; load request -> first answer of the new "
                  f"version: median {np.median(first):.3f} s, max {max(first):.3f} s (the load "
                  f"call itself: median {np.median([t for t, _ in times]):.3f} s); after: "
                  f"resident {mib(rss)}, peak {mib(peak)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
