"""The gRPC floor: a grpc.aio server that answers ScoreImages with fixed bytes and does no work.

The image benchmark drives it exactly as it drives hardscore (same client, same request bytes,
a reply of the same size), so its latency is what any Python gRPC server pays per call on this
machine before it computes anything: the least serving overhead that is possible here.

    python bench/grpc_floor_server.py --reply-bytes 400

Prints ``listening on PORT`` once it serves on 127.0.0.1. Exits when its standard input closes
(the benchmark holds the pipe, so the server never outlives it) or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading

import grpc

SERVICE = "hardscore.v1.ScoringService"


async def serve(reply_bytes: int, max_seconds: float) -> None:
    reply = bytes(reply_bytes)

    async def score_images(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    server = grpc.aio.server()
    # No (de)serialisers: the request and the reply stay bytes, as in the benchmark's client.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"ScoreImages": grpc.unary_unary_rpc_method_handler(score_images)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on {port}", flush=True)

    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set)),
        daemon=True).start()
    with contextlib.suppress(TimeoutError):  # lived its longest: stop
        await asyncio.wait_for(stdin_closed.wait(), max_seconds)
    await server.stop(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reply-bytes", type=int, default=0, help="size of the reply (0)")
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="exit after this long at the latest (3600)")
    args = parser.parse_args()
    asyncio.run(serve(args.reply_bytes, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
