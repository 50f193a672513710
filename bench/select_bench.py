"""``hardscore select`` on a generated 50,000-row score table: the client before this change
(checked out of git: ``--before REV``) against now, with and without the Label Studio JSON.

The table is what ``score-dir`` writes for 10 classes: path, label (5% unlabelled, 10% of the
labels wrong), prediction, every score computed in float64 from logits, and float32-rounded
p_<class> columns, as Parquet (when pyarrow is installed) and as CSV. Each variant runs
``hardscore select TABLE --budget ROWS --strategy mistakes`` in a fresh interpreter
(``python -c``, the client on PYTHONPATH), the variants interleaved so that they see the same
load; each gives the command's wall time (interpreter start included), the time in
``cli.main`` and the process's peak RSS (VmHWM). Medians of ``--repeats`` runs (5), ratios
against "before" of the same table, the sizes of the files written, and whether the queues are
the same. Then the new code's stages in-process (medians), select() of every strategy included.

    .venv/bin/python bench/select_bench.py                       # about a minute on 2 cores
    .venv/bin/python bench/select_bench.py --rows 5000 --repeats 2   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import load_average, machine_header, median

REPO = Path(__file__).resolve().parent.parent
BEFORE = "c3e9272"
"""The last commit before select wrote its JSON only on request."""
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CHILD = """
import json, re, resource, sys, time
t0 = time.perf_counter()
from hardscore_client import cli
t1 = time.perf_counter()
rc = cli.main(sys.argv[1:])
t2 = time.perf_counter()
try:  # this process's own peak (ru_maxrss would count the parent's pages it forked with)
    with open("/proc/self/status") as f:
        kib = int(re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1))
except OSError:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rc": rc, "main_s": t2 - t1, "import_s": t1 - t0, "peak_kib": kib}))
"""


def score_table(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Columns as score-dir writes them for ``n`` images of 10 classes."""
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 1.5 + rng.gamma(2.0, 3.0, (n, 1)) * np.eye(k)[truth]
    labels = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), truth)
    labels[rng.random(n) < 0.05] = -1
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    top2 = np.sort(p, axis=1)[:, -2:]
    predicted = p.argmax(axis=1)
    hardness = -(p * log_p).sum(axis=1)
    lab = labels >= 0
    rows = np.arange(n)
    given = np.where(lab, p[rows, np.maximum(labels, 0)], np.nan)
    others = p.copy()
    others[rows, np.maximum(labels, 0)] = -1.0
    normalized_margin = (given - others.max(axis=1) + 1.0) / 2.0
    sign = np.where(predicted == labels, -1.0, 1.0)
    order = np.argsort([f"{NAMES[t]}/img-{i:06d}" for i, t in enumerate(truth)])  # by path
    columns = {
        "path": np.array([f"/data/cifar/{NAMES[t]}/img-{i:06d}.png"
                          for i, t in enumerate(truth)], dtype=object),
        "label": np.array([NAMES[y] if y >= 0 else "" for y in labels], dtype=object),
        "prediction": np.array([NAMES[c] for c in predicted], dtype=object),
        "predicted_class": predicted.astype(np.int64),
        "confidence": top2[:, 1], "margin": top2[:, 1] - top2[:, 0], "hardness": hardness,
        "hardness_normalized": hardness / np.log(k), "given_label": labels.astype(np.int64),
        "mistakenness": np.where(lab, (sign * np.exp(-hardness) + 1.0) / 2.0, np.nan),
        "mistakenness_confidence": np.where(lab, (sign * top2[:, 1] + 1.0) / 2.0, np.nan),
        "label_issue_score": 1.0 - given, "margin_issue_score": 1.0 - normalized_margin,
        **{f"p_{c}": p[:, j].astype(np.float32).astype(np.float64) for j, c in enumerate(NAMES)},
    }
    return {name: values[order] for name, values in columns.items()}


def old_client(rev: str, into: Path) -> Path | None:
    """The client package as of ``rev`` (git archive, read only), or None without git/rev."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "client"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"before: skipped, no {rev} to check out ({exc})")
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "client"


@dataclass
class Variant:
    name: str
    table: Path
    client: Path
    out: Path
    flags: list[str]
    wall: list[float] = field(default_factory=list)
    main: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)

    def run(self, budget: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.client)}
        args = [sys.executable, "-c", CHILD, "select", str(self.table), "--budget", str(budget),
                "--strategy", "mistakes", "--out", str(self.out), *self.flags]
        started = time.perf_counter()
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              check=False)
        self.wall.append(time.perf_counter() - started)
        if proc.returncode:
            raise SystemExit(f"{self.name}: exit {proc.returncode}")
        result: dict[str, float] = json.loads(proc.stdout)
        if result["rc"]:
            raise SystemExit(f"{self.name}: select exited {result['rc']}")
        self.main.append(result["main_s"])
        self.rss_mib.append(result["peak_kib"] / 1024)

    def sizes(self) -> str:
        files = [self.out.with_suffix(s) for s in (".csv", ".json")]
        return ", ".join(f"{f.suffix[1:]} {f.stat().st_size / 1e6:.1f} MB" for f in files
                         if f.exists())


def queue(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    return ([r["path"] for r in records],
            np.array([float(r["label_quality"] or "nan") for r in records]))


def stages(table: Path, budget: int, out: Path, repeats: int) -> list[str]:
    """Medians of the new code's steps, in this process."""
    from hardscore_client.analysis import ScoreTable, analyse
    from hardscore_client.selection import (
        STRATEGIES,
        needed_column,
        queue_columns,
        select,
        write_label_studio_json,
        write_queue,
    )

    times: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        value = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - started)
        return value

    for _ in range(repeats):
        loaded = timed("load (needed columns)", ScoreTable.load, table, needed_column)
        analysis = timed("analyse (confident learning)", analyse, loaded)
        for strategy in STRATEGIES:
            rows = timed(f"select() {strategy}", select, analysis, budget, strategy)
        timed("write CSV (queue_columns + csv)", write_queue, analysis, rows, "mistakes", out)
        columns = queue_columns(analysis, rows, "mistakes")
        timed("write Label Studio JSON", write_label_studio_json, out.with_suffix(".json"),
              columns)
    return [f"| {name} | {median(v) * 1000:.1f} |" for name, v in times.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the table (50,000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (5)")
    parser.add_argument("--keep", action="store_true", help="keep the tables and queues")
    parser.add_argument("--before", default=BEFORE,
                        help=f"git revision of the 'before' client ({BEFORE}); 'none' skips it")
    args = parser.parse_args()
    started = time.perf_counter()
    for line in machine_header(["hardscore", "numpy", "pyarrow"]):
        print(line)
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="select-bench-"))
    try:
        return run(args, work, started, load_before)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, started: float, load_before: str) -> int:
    columns = score_table(args.rows)
    from hardscore_client.tables import write_table

    tables = []
    try:
        import pyarrow  # noqa: F401

        tables.append(work / "scores.parquet")
    except ImportError:
        print("pyarrow not installed: CSV table only")
    tables.append(work / "scores.csv")
    for table in tables:
        write_table(table, columns)
        print(f"table: {table.name}, {args.rows} rows, {len(columns)} columns, "
              f"{table.stat().st_size / 1e6:.1f} MB")
    new = REPO / "client"
    old = old_client(args.before, work / "old") if args.before != "none" else None
    variants = []
    for table in tables:
        kind = table.suffix[1:]
        if old is not None:
            variants.append(Variant(f"{kind}: before ({args.before}, CSV + JSON)", table, old,
                                    work / f"{kind}-before" / "q", []))
        variants.append(Variant(f"{kind}: now, CSV only", table, new,
                                work / f"{kind}-now" / "q", []))
        variants.append(Variant(f"{kind}: now, --label-studio-json", table, new,
                                work / f"{kind}-now-json" / "q", ["--label-studio-json"]))
    for _ in range(args.repeats):
        for v in variants:
            v.run(args.rows)
    print(f"\nhardscore select TABLE --budget {args.rows} --strategy mistakes: medians of "
          f"{args.repeats} runs (process: interpreter start to exit; main: cli.main)\n")
    print("| table: variant | process s | main s | peak RSS MiB | vs before (process) | "
          "files written |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        base = next((b for b in variants if b.table == v.table and "before" in b.name), None)
        ratio = f"{median(base.wall) / median(v.wall):.2f}x" if base else "-"
        print(f"| {v.name} | {median(v.wall):.2f} | {median(v.main):.2f} | "
              f"{median(v.rss_mib):.0f} | {ratio} | "
              f"{v.sizes()} |")
    for table in tables:
        ran = [v for v in variants if v.table == table]
        paths, quality = queue(ran[0].out.with_suffix(".csv"))
        for v in ran[1:]:
            other_paths, other_quality = queue(v.out.with_suffix(".csv"))
            same = other_paths == paths
            gap = np.nanmax(np.abs(other_quality - quality)) if len(quality) else 0.0
            print(f"{v.name}: same queue as {ran[0].name}: {'yes' if same else 'NO'}; "
                  f"largest label_quality difference {gap:.2g}")
    print(f"\nstages of the new code, in-process ({tables[0].name}, medians of "
          f"{args.repeats}):\n\n| step | ms |\n|---|---|")
    for line in stages(tables[0], args.rows, work / "stages" / "q", args.repeats):
        print(line)
    print(f"\nload average {load_before} -> {load_average()}; "
          f"{time.perf_counter() - started:.0f} s" + (f"; files in {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
