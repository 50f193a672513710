"""What one score-dir checkpoint costs on a large table: before (the whole table merged, sorted
and rewritten) and now (the rows added since the last checkpoint written as one more part).

    python bench/checkpoint_cost.py --rows 200000 --added 2000 --format .parquet
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hardscore_client.dataset import _Run, concat_columns, table_columns
from hardscore_client.tables import Columns, save_table

CLASSES = [str(k) for k in range(10)]


def synthetic(rows: int, start: int = 0) -> Columns:
    rng = np.random.default_rng(start)
    columns: Columns = {}
    for name in table_columns(CLASSES):
        if name in ("path", "sha256"):
            columns[name] = np.array([f"s3://pool/img-{i:09d}.png" for i in
                                      range(start, start + rows)], dtype=object)
        elif name in ("label", "prediction"):
            columns[name] = np.array([str(i % 10) for i in range(rows)], dtype=object)
        elif name in ("split", "error", "error_message"):
            columns[name] = np.full(rows, "", dtype=object)
        elif name in ("predicted_class", "given_label"):
            columns[name] = rng.integers(0, 10, rows)
        else:
            columns[name] = rng.random(rows)
    return columns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--added", type=int, default=2_000, help="rows added per checkpoint")
    ap.add_argument("--format", default=".parquet", choices=(".parquet", ".csv", ".jsonl"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    existing = synthetic(args.rows)
    order = table_columns(CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"scores{args.format}"
        save_table(out, existing)
        before, after = [], []
        for r in range(args.repeats):
            added = synthetic(args.added, args.rows + r * args.added)
            started = time.perf_counter()  # before: the whole table, every checkpoint
            merged = concat_columns([existing, added], order)
            keep = np.argsort(merged["path"].astype(str), kind="stable")
            save_table(out, {k: v[keep] for k, v in merged.items()})
            before.append(time.perf_counter() - started)
            run = _Run(out, existing, CLASSES, 1e9, None)  # type: ignore[arg-type]
            run.parts.append(added)
            started = time.perf_counter()  # now: one more part
            run.checkpoint()
            after.append(time.perf_counter() - started)
        print(f"{args.rows} rows + {args.added} per checkpoint, {args.format}: whole table "
              f"{statistics.median(before) * 1000:.0f} ms, one part "
              f"{statistics.median(after) * 1000:.1f} ms (medians of {args.repeats})")


if __name__ == "__main__":
    main()
