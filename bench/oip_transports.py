"""Images/s through the Open Inference Protocol over gRPC, REST with binary tensors and REST with
JSON tensors: one server, one model, the same batches, interleaved rounds in the same run.

    .venv/bin/python bench/oip_transports.py [--rounds 5] [--seconds 4] [--concurrency 4]
        [--batch 16] [--model-dir DIR] [--max-seconds 600] [--output FILE]

Each round runs every transport for ``--seconds`` with ``--concurrency`` callers, each sending
``--batch`` FP32 images per request (the model input, so no decoding), one after another, all
outputs asked for (binary for REST binary, JSON for REST JSON). Request bodies are encoded once
up front; replies are read whole and checked for success, not decoded (gRPC's stub decodes its
protobuf). The transports take turns within each round, so a drifting machine shifts them
alike; the medians over rounds and the ratio to gRPC are printed, with the load average before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Server, format_table, load_average, machine_header, median, time_limit

from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, load_manifest
from hardscore_server.tools.digits import heldout_split, to_model_input
from hardscore_server.tools.local_server import ServerProcess

TRANSPORTS = ("gRPC", "REST binary", "REST JSON")


def _batch(n: int, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    _, _, images, _ = heldout_split()
    return to_model_input(images[:n], mean, std)


async def _run(caller, concurrency: int, seconds: float) -> int:
    """Requests completed by ``concurrency`` callers in ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await caller()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def measure(server: ServerProcess, model: str, x: np.ndarray, args: argparse.Namespace
                  ) -> dict[str, list[float]]:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                     "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary_body = header + x.tobytes()
    json_body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32",
                                        "shape": list(x.shape),
                                        "data": x.ravel().tolist()}]}).encode()
    url = f"{server.http_url}/v2/models/{model}/infer"
    rates: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    limits = aiohttp.TCPConnector(limit=args.concurrency)
    async with grpc.aio.insecure_channel(server.target) as channel, \
            aiohttp.ClientSession(connector=limits) as session:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def grpc_call() -> None:
            reply = await stub.ModelInfer(request, timeout=60)
            assert len(reply.raw_output_contents) == 7

        async def rest_binary() -> None:
            async with session.post(url, data=binary_body, headers={
                    "Inference-Header-Content-Length": str(len(header))}) as reply:
                assert reply.status == 200, await reply.text()
                await reply.read()

        async def rest_json() -> None:
            async with session.post(url, data=json_body,
                                    headers={"Content-Type": "application/json"}) as reply:
                assert reply.status == 200, await reply.text()
                await reply.read()

        callers = {"gRPC": grpc_call, "REST binary": rest_binary, "REST JSON": rest_json}
        for caller in callers.values():  # warm-up
            await _run(caller, args.concurrency, 0.5)
        for r in range(args.rounds):
            for name in TRANSPORTS[r % 3:] + TRANSPORTS[:r % 3]:  # rotate who goes first
                started = time.perf_counter()
                requests = await _run(callers[name], args.concurrency, args.seconds)
                rates[name].append(requests * len(x) / (time.perf_counter() - started))
            print(f"round {r + 1}: " + ", ".join(
                f"{t} {rates[t][-1]:.0f}" for t in TRANSPORTS), flush=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model-dir", default="")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    model_dir = Path(args.model_dir) if args.model_dir else DEFAULT_MODEL_DIR
    manifest = load_manifest(model_dir)
    x = _batch(args.batch, tuple(manifest.mean), tuple(manifest.std))
    lines = machine_header(["hardscore", "grpcio", "aiohttp", "onnxruntime"])
    lines.append(f"load average before: {load_average()}")
    server_args = ["--metrics-port", "-1", "--max-batch-size", "64"]
    if args.model_dir:
        server_args += ["--model-dir", args.model_dir]
    with time_limit(args.max_seconds), Server(*server_args) as server:
        rates = asyncio.run(measure(server, manifest.name, x, args))
    lines.append(f"load average after: {load_average()}")
    base = median(rates["gRPC"])
    rows = [[t, f"{median(rates[t]):.0f}", f"{min(rates[t]):.0f}-{max(rates[t]):.0f}",
             f"{median(rates[t]) / base:.2f}"] for t in TRANSPORTS]
    title = (f"model {manifest.name}, batch {args.batch} FP32 images per request, "
             f"concurrency {args.concurrency}, {args.rounds} rounds of {args.seconds:.0f} s "
             "per transport")
    table = format_table(["transport", "images/s (median)", "range", "vs gRPC"], rows,
                         markdown=True)
    print("\n".join([*lines, title, table]))
    if args.output:
        Path(args.output).write_text("\n".join([*lines, "", title, "", table, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
