"""ScoreLogits throughput: end to end through gRPC versus in-process ``score_logits``.

Starts a ``--no-model`` server on 127.0.0.1 (free ports), sends the same labelled logits with the
blocking SDK client (``ScoringClient.score_logits``: one message, or the streaming RPC in chunks
of up to 65,536 rows for large inputs) and times the in-process ``score_logits`` on the same
arrays in the same run, interleaved, so both see the same machine load. Each measurement is
repeated (after warm-up) and the medians are reported.

Targets: >= 1,000,000 samples/s end to end for C=10; end-to-end / in-process >= 0.3 for every C.
It is a report, not a test: the exit status is 0 whatever the numbers (2 for bad arguments).

    .venv/bin/python bench/logits_throughput.py            # full: 1 warm-up + 5 repeats
    .venv/bin/python bench/logits_throughput.py --quick    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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

from hardscore_client import ScoringClient
from hardscore_server.pipeline.scores import score_logits

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TARGET_C10_SAMPLES_PER_S = 1_000_000.0
TARGET_RATIO = 0.3
PACKAGES = ("hardscore", "numpy", "grpcio", "protobuf")


@dataclass
class CaseResult:
    classes: int
    rows: int
    in_process: list[float]  # samples/s per repeat
    end_to_end: list[float]
    max_abs_diff: float

    @property
    def in_process_median(self) -> float:
        return median(self.in_process)

    @property
    def end_to_end_median(self) -> float:
        return median(self.end_to_end)

    @property
    def ratio(self) -> float:
        return self.end_to_end_median / self.in_process_median


def parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for item in text.split(","):
        classes, _, rows = item.partition(":")
        cases.append((int(classes), int(rows)))
    if any(c < 2 or n < 1 for c, n in cases):
        raise ValueError("each case is CLASSES:ROWS with CLASSES >= 2 and ROWS >= 1")
    return cases


def run_case(client: ScoringClient, classes: int, rows: int, warmup: int, repeats: int,
             seed: int) -> CaseResult:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    logits *= 3.0
    labels = rng.integers(0, classes, rows, dtype=np.int64)
    in_process: list[float] = []
    end_to_end: list[float] = []
    max_diff = 0.0
    for i in range(warmup + repeats):
        started = time.perf_counter()
        local = score_logits(logits, labels)
        local_s = time.perf_counter() - started

        started = time.perf_counter()
        remote = client.score_logits(logits, labels)
        remote_s = time.perf_counter() - started

        if len(remote) != rows or remote.mistakenness is None or local.mistakenness is None:
            raise RuntimeError(f"C={classes}: server returned {len(remote)} rows, expected {rows}")
        max_diff = max(
            max_diff,
            float(np.max(np.abs(remote.hardness - local.hardness))),
            float(np.max(np.abs(remote.mistakenness - local.mistakenness))),
        )
        del local, remote
        kind = "warm-up" if i < warmup else f"repeat {i - warmup + 1}/{repeats}"
        print(f"  C={classes} N={rows:,} {kind}: in-process {rows / local_s:,.0f}/s "
              f"({local_s:.3f} s), end-to-end {rows / remote_s:,.0f}/s ({remote_s:.3f} s)",
              flush=True)
        if i >= warmup:
            in_process.append(rows / local_s)
            end_to_end.append(rows / remote_s)
    return CaseResult(classes, rows, in_process, end_to_end, max_diff)


def report(results: list[CaseResult], markdown: bool) -> tuple[str, list[str]]:
    headers = ["C", "N", "input MB", "in-process samples/s", "end-to-end samples/s",
               "e2e min..max", "ratio e2e/in-proc", "max abs diff"]
    rows = [
        [str(r.classes), f"{r.rows:,}", fmt(r.rows * r.classes * 4 / 1e6, 1),
         fmt(r.in_process_median), fmt(r.end_to_end_median),
         f"{fmt(min(r.end_to_end))}..{fmt(max(r.end_to_end))}", fmt(r.ratio, 2),
         f"{r.max_abs_diff:.1e}"]
        for r in results
    ]
    checks = []
    for r in results:
        if r.classes == 10:
            value = r.end_to_end_median
            checks.append(f"{verdict(value >= TARGET_C10_SAMPLES_PER_S)}  C=10 end-to-end "
                          f"{value:,.0f} samples/s (target >= {TARGET_C10_SAMPLES_PER_S:,.0f})")
        checks.append(f"{verdict(r.ratio >= TARGET_RATIO)}  C={r.classes} ratio end-to-end / "
                      f"in-process {r.ratio:.2f} (target >= {TARGET_RATIO})")
    return format_table(headers, rows, markdown), checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 warm-up + 2 repeats, C=1000 with 20,000 rows")
    parser.add_argument("--cases", default=None,
                        help="CLASSES:ROWS,... (default 10:1000000,1000:100000; "
                             "--quick 10:1000000,1000:20000)")
    parser.add_argument("--repeats", type=int, default=None, help="measured runs (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--call-timeout", type=float, default=300.0,
                        help="deadline of one score_logits call, seconds (300)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop everything after this long (default 1200; --quick 240)")
    parser.add_argument("--output", type=Path, help="also write the results as markdown here")
    args = parser.parse_args(argv)
    try:
        cases = parse_cases(args.cases or (
            "10:1000000,1000:20000" if args.quick else "10:1000000,1000:100000"))
    except ValueError as exc:
        parser.error(f"--cases: {exc}")
    repeats = args.repeats or (2 if args.quick else 5)
    max_seconds = args.max_seconds or (240.0 if args.quick else 1200.0)

    header = machine_header(PACKAGES)
    load_before = load_average()
    print("\n".join(header))
    print(f"load average before: {load_before}")
    print(f"cases: {', '.join(f'C={c} N={n:,}' for c, n in cases)}; "
          f"{args.warmup} warm-up + {repeats} repeats each, medians reported")

    results: list[CaseResult] = []
    error = ""
    server = Server("--no-model", "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    try:
        with time_limit(max_seconds):
            server.start()
            print(f"server: pid {server.proc.pid if server.proc else '?'} on {server.target}")
            with ScoringClient(server.target, max_message_bytes=MAX_MESSAGE_BYTES,
                               timeout=args.call_timeout) as client:
                client.wait_ready(30)
                for classes, rows in cases:
                    results.append(
                        run_case(client, classes, rows, args.warmup, repeats, args.seed))
    except (BenchTimeout, RuntimeError, OSError) as exc:
        error = f"benchmark stopped early: {exc}"
    except Exception as exc:  # grpc.RpcError and the like: still report what was measured
        error = f"benchmark stopped early: {type(exc).__name__}: {exc}"
    finally:
        code = server.stop()
        print(f"server stopped (exit status {code})")
    load_after = load_average()

    if error:
        print(error, file=sys.stderr)
        print("server output (tail):\n" + "\n".join(server.lines[-20:]), file=sys.stderr)
    if not results:
        return 0
    table, checks = report(results, markdown=False)
    print()
    print(table)
    print()
    print("\n".join(checks))
    print(f"load average after: {load_after} (nproc {os.cpu_count()})")
    if args.output:
        md_table, _ = report(results, markdown=True)
        text = "\n".join([
            "# ScoreLogits throughput", "", *(f"- {line}" for line in header),
            f"- load average before: {load_before}; after: {load_after}",
            f"- {args.warmup} warm-up + {repeats} repeats per case, medians", "", md_table, "",
            *(f"- {c}" for c in checks), "",
        ])
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
