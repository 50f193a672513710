"""The collection verdicts (hardscore_client.verdicts) over synthetic embeddings: time and peak
memory of each verdict, and recall@10 of the approximate (faiss HNSW) neighbours against the
exact ones.

The data: N rows of d float32 (100,000 x 2,048 by default, ResNet50's pooled size) on a
128-dimensional clustered manifold (100 clusters as wide as they are apart, a random linear
map, ReLU, some noise: non-negative and low-rank, as CNN embeddings are), with planted
copies: 0.5% exact copies of another row and 0.5% near copies (1% noise). Labels are the
cluster modulo 10 (5% flipped), probabilities a softmax around them, splits 80/20, file
digests shared by the exact copies.

Each step runs once in this process (``--repeats`` for more; medians then) with the peak RSS
reset before it (/proc/self/clear_refs), so "peak MiB" is that step's own high-water mark.
Recall is measured on ``--sample`` random query rows (exact search on every row costs N x N x d:
its time is extrapolated from the sample and printed, not run).

    .venv/bin/python bench/collection_bench.py                # 100,000 x 2,048: ~10 min, 2 cores
    .venv/bin/python bench/collection_bench.py --quick        # 3,000 x 64: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import format_table, load_average, machine_header, median

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "client"))
sys.path.insert(0, str(REPO / "proto"))

from hardscore_client import verdicts as v  # noqa: E402
from hardscore_client.neighbours import (  # noqa: E402
    exact_fits,
    measured_recall,
    nearest_neighbours,
)


def synthetic(n: int, d: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    latent = 128
    cluster = rng.integers(100, size=n)
    z = rng.normal(size=(100, latent))[cluster] + rng.normal(size=(n, latent))
    lift = (rng.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 10000):  # blockwise: the float64 latent never reaches N x d
        block = z[start:start + 10000].astype(np.float32) @ lift
        np.maximum(block, 0, out=block)
        block += 0.2 * rng.standard_normal(block.shape, dtype=np.float32)
        x[start:start + 10000] = block
    planted = max(1, n // 200)
    targets = rng.choice(n, size=2 * planted, replace=False)
    untouched = np.setdiff1d(np.arange(n), targets)  # a source is never overwritten itself
    sources = untouched[rng.integers(len(untouched), size=2 * planted)]
    x[targets[:planted]] = x[sources[:planted]]  # exact copies
    near = x[sources[planted:]]
    x[targets[planted:]] = near + 0.01 * near.std() * rng.standard_normal(near.shape,
                                                                          dtype=np.float32)
    labels = cluster % 10
    flip = rng.random(n) < 0.05
    labels[flip] = rng.integers(10, size=int(flip.sum()))
    logits = rng.normal(size=(n, 10)) + 4 * np.eye(10)[cluster % 10]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    splits = np.where(rng.random(n) < 0.8, "train", "test").tolist()
    group = np.arange(n)
    group[targets[:planted]] = group[sources[:planted]]
    digests = [hashlib.sha256(str(g).encode()).hexdigest() for g in group]
    return {"x": x, "labels": labels, "probs": probs, "splits": splits, "digests": digests,
            "planted_exact": targets[:planted], "planted_near": targets[planted:]}


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, fn: Callable[[], object], repeats: int,
            rows: list[list[str]]) -> object:
    times, peaks, out = [], [], None
    for _ in range(repeats):
        reset_peak()
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
        peaks.append(peak_mib())
    rows.append([name, f"{median(times):.2f}", f"{max(peaks):,.0f}"])
    print(f"{name}: {median(times):.2f} s, peak {max(peaks):,.0f} MiB", file=sys.stderr,
          flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--method", default="auto", choices=("auto", "exact", "approximate"))
    parser.add_argument("--sample", type=int, default=1000, help="query rows for recall")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3,000 x 64, approximate")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dim, args.sample, args.method = 3000, 64, 300, "approximate"

    started = time.perf_counter()
    data = synthetic(args.rows, args.dim)
    x = data["x"]
    assert isinstance(x, np.ndarray)
    n, d = x.shape
    print(f"data {n} x {d}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    method = args.method if args.method != "auto" else (
        "exact" if exact_fits(n, d) else "approximate")
    rows: list[list[str]] = []
    centred = v.centred(x)
    fo_graph = measure("neighbours: centred cosine, k=10 (FiftyOne)",
                       lambda: nearest_neighbours(centred, 10, "cosine", method=method),
                       args.repeats, rows)
    assert isinstance(fo_graph, v.Neighbours)
    measure("uniqueness", lambda: v.uniqueness(x, neighbours=fo_graph), args.repeats, rows)
    measure("representativeness (KMeans 20)", lambda: v.representativeness(x), args.repeats,
            rows)
    near = measure("near duplicates (FiftyOne, 0.2)", lambda: v.near_duplicates(
        x, neighbours=fo_graph if method == "approximate" else None), args.repeats, rows)
    assert isinstance(near, v.NearDuplicates)
    measure("leaks", lambda: v.leaks(near.representative, data["splits"]),
            args.repeats, rows)
    measure("exact duplicates (digests)",
            lambda: v.exact_duplicates(data["digests"]), args.repeats, rows)
    dl_graph = measure("neighbours: Datalab cosine, k=10",
                       lambda: v.datalab_neighbours(x, method=method), args.repeats, rows)
    assert isinstance(dl_graph, v.Neighbours)
    outliers = measure("Datalab outliers", lambda: v.datalab_outliers(dl_graph), args.repeats,
                       rows)
    dups = measure("Datalab near duplicates", lambda: v.datalab_near_duplicates(dl_graph),
                   args.repeats, rows)
    label = measure("kNN label check (euclidean k=10)", lambda: v.knn_label_check(
        x, data["labels"], method=method), args.repeats, rows)
    measure("loss + focal weight", lambda: (v.per_sample_loss(data["probs"], data["labels"]),
                                            v.focal_weight(data["probs"], data["labels"])),
            args.repeats, rows)
    assert isinstance(outliers, v.Outliers) and isinstance(dups, v.DatalabNearDuplicates)
    assert isinstance(label, v.KnnLabelCheck)

    recall_rows = []
    for name, rows_x, graph in (("centred cosine (FiftyOne)", centred, fo_graph),
                                ("cosine (Datalab)", x, dl_graph)):
        t0 = time.perf_counter()
        recall = measured_recall(rows_x, 10, "cosine", sample=args.sample, approximate=graph)
        spent = time.perf_counter() - t0
        full = spent * n / min(args.sample, n)
        recall_rows.append([name, graph.method, f"{recall:.4f}", f"{spent:.1f}", f"{full:,.0f}"])
        print(f"recall@10 {name}: {recall:.4f}", file=sys.stderr, flush=True)

    planted_exact = np.asarray(data["planted_exact"])
    planted_near = np.asarray(data["planted_near"])
    found = [
        f"planted exact copies flagged by Datalab near-duplicate: "
        f"{dups.is_issue[planted_exact].mean():.3f}; near copies: "
        f"{dups.is_issue[planted_near].mean():.3f}",
        f"FiftyOne near duplicates: {int(near.is_duplicate.sum()):,} rows "
        f"(planted {2 * len(planted_exact):,}), truncated radius rows {near.truncated:,}",
        f"Datalab outliers flagged: {int(outliers.is_issue.sum()):,}; kNN label issues: "
        f"{int(label.is_issue.sum()):,}",
    ]
    lines = [
        f"# Collection verdicts: {n:,} x {d:,} float32, neighbours {method}",
        "",
        *machine_header(["numpy", "scikit-learn", "faiss-cpu"]),
        f"load average at the end: {load_average()}; repeats {args.repeats} "
        f"(median time, max peak)",
        "",
        format_table(["step", "seconds", "peak MiB"], rows, markdown=True),
        "",
        format_table(["neighbours", "method", "recall@10", "exact on sample s",
                      "exact on all N s (extrapolated)"], recall_rows, markdown=True),
        "",
        *found,
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
