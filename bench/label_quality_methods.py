"""Which label-quality ranking finds flipped labels best: every method of
hardscore_client.label_quality, on synthetic data sets with known label noise.

Each data set: K = 10 Gaussian classes in 10 dimensions (classes 2j and 2j+1 close to each
other, so they are easy to confuse), balanced or imbalanced (class k's prior proportional to
0.6^k: the largest class is 100 times the smallest), 15% of the labels flipped by one of three
noise processes, and out-of-sample probabilities from a 5-fold cross-fitted Gaussian
classifier trained on the noisy labels (optionally sharpened, p^4 renormalised, to mimic an
overconfident network). Every method ranks the labelled samples; the figure is the area under
the precision-recall curve (average precision) of that ranking at finding the flipped labels,
averaged over ``--seeds`` data sets. Prints a markdown table (and writes it with --output).

    .venv/bin/python bench/label_quality_methods.py             # 10 seeds, n = 10000
    .venv/bin/python bench/label_quality_methods.py --quick     # 1 seed, n = 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardscore_client.label_quality import METHODS, label_quality_scores, method_name

K = 10
DIM = 10
NOISE_RATE = 0.15
SEPARATION = 0.8
"""Scale of the class means (unit noise): about 85% of the clean labels of a balanced set are
predicted right."""
RANKINGS = [(m, a) for a in (False, True) for m in METHODS]


@dataclass(frozen=True)
class Scenario:
    name: str
    imbalanced: bool
    noise: str  # "uniform", "pairs" or "majority"
    sharpen: bool = False


SCENARIOS = [
    Scenario("balanced, uniform flips", False, "uniform"),
    Scenario("balanced, pair swaps", False, "pairs"),
    Scenario("imbalanced, uniform flips", True, "uniform"),
    Scenario("imbalanced, pair swaps", True, "pairs"),
    Scenario("imbalanced, flips to frequent classes", True, "majority"),
    Scenario("imbalanced, uniform flips, overconfident model", True, "uniform", sharpen=True),
]


def make_data(s: Scenario, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out-of-sample probabilities [n, K], noisy labels [n], flipped mask [n])."""
    rng = np.random.default_rng(seed)
    prior = 0.6 ** np.arange(K) if s.imbalanced else np.ones(K)
    prior /= prior.sum()
    means = rng.normal(scale=SEPARATION, size=(K, DIM))
    means[1::2] = means[0::2] + rng.normal(scale=1.2, size=(K // 2, DIM))  # close pairs
    truth = rng.choice(K, size=n, p=prior)
    truth[:K] = np.arange(K)  # every class present
    spread = rng.uniform(0.7, 1.4, size=K)  # unequal class spreads
    x = means[truth] + rng.normal(size=(n, DIM)) * spread[truth, None]
    flipped = rng.random(n) < NOISE_RATE
    flipped[:K] = False
    noisy = truth.copy()
    for i in np.flatnonzero(flipped):
        if s.noise == "pairs":
            noisy[i] = truth[i] ^ 1
        else:
            weights = prior.copy() if s.noise == "majority" else np.ones(K)
            weights[truth[i]] = 0.0
            noisy[i] = rng.choice(K, p=weights / weights.sum())
    probs = cross_fitted_probabilities(x, noisy, folds=5, seed=seed)
    if s.sharpen:
        probs = probs**4
        probs /= probs.sum(axis=1, keepdims=True)
    return probs, noisy, flipped


def cross_fitted_probabilities(
    x: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Out-of-sample probabilities [n, K]: each fold scored by a nearest-class-mean Gaussian
    classifier (one shared isotropic variance, class priors from the labels) fitted on the
    other folds' (noisy) labels. The data's classes have unequal spreads, so the model is
    misspecified, as real ones are."""
    rng = np.random.default_rng(seed + 1000)
    fold = rng.permutation(len(x)) % folds
    probs = np.zeros((len(x), K))
    for f in range(folds):
        train, test = fold != f, fold == f
        xt, yt = x[train], labels[train]
        counts = np.bincount(yt, minlength=K).astype(np.float64)
        sums = np.zeros((K, x.shape[1]))
        np.add.at(sums, yt, xt)
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None],
                         xt.mean(axis=0))
        variance = float(((xt - means[yt]) ** 2).mean())
        log_prior = np.log((counts + 1.0) / (counts.sum() + K))
        distance = ((x[test][:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        logits = log_prior - distance / (2.0 * variance)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        probs[test] = p / p.sum(axis=1, keepdims=True)
    return probs


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision: the sum over distinct
    score thresholds (highest first) of recall gained times precision there (as scikit-learn
    computes it; tied scores enter together)."""
    order = np.argsort(-score, kind="stable")
    s, hit = score[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each run of ties
    tp = np.cumsum(hit)[last]
    precision = tp / (last + 1.0)
    recall = tp / max(hit.sum(), 1.0)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def cleanlab_deviation(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Largest |ours - cleanlab 2.9| over every ranking (None without cleanlab)."""
    try:
        from cleanlab.internal.label_quality_utils import _subtract_confident_thresholds
        from cleanlab.rank import (
            get_confidence_weighted_entropy_for_each_label,
            get_label_quality_scores,
        )
    except ImportError:
        return None
    worst = 0.0
    for method, adjust in RANKINGS:
        if adjust and method == "confidence_weighted_entropy":
            theirs = get_confidence_weighted_entropy_for_each_label(
                labels, _subtract_confident_thresholds(labels, probs))
        else:
            theirs = get_label_quality_scores(labels, probs, method=method,
                                              adjust_pred_probs=adjust)
        ours = label_quality_scores(probs, labels, method, adjust)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="samples per data set")
    parser.add_argument("--seeds", type=int, default=10, help="data sets per scenario")
    parser.add_argument("--quick", action="store_true", help="1 seed, n = 2000")
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    n, seeds = (2000, 1) if args.quick else (args.n, args.seeds)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    header = ["scenario", "flipped", *(method_name(m, a) for m, a in RANKINGS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_count = dict.fromkeys(header[2:], 0)
    worst_deviation: float | None = None
    for s in SCENARIOS:
        auprc = np.zeros((seeds, len(RANKINGS)))
        rate = 0.0
        for seed in range(seeds):
            probs, labels, flipped = make_data(s, n, seed)
            rate += flipped.mean() / seeds
            for j, (method, adjust) in enumerate(RANKINGS):
                quality = label_quality_scores(probs, labels, method, adjust)
                auprc[seed, j] = average_precision(flipped, 1.0 - quality)
            deviation = cleanlab_deviation(probs, labels)
            if deviation is not None:
                worst_deviation = max(worst_deviation or 0.0, deviation)
        mean = auprc.mean(axis=0)
        best = int(np.argmax(mean))
        best_count[header[2 + best]] += 1
        cells = [f"**{v:.3f}**" if j == best else f"{v:.3f}" for j, v in enumerate(mean)]
        lines.append(f"| {s.name} | {rate:.1%} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"label-quality rankings: AUPRC at finding flipped labels (mean of {seeds} data "
          f"set(s) of {n} samples, K = {K}, {NOISE_RATE:.0%} flipped; best in bold)\n")
    print(table)
    print("\nbest in: " + ", ".join(f"{k} {v}" for k, v in best_count.items() if v))
    if worst_deviation is not None:
        print(f"largest |hardscore - cleanlab 2.9| over every ranking and data set: "
              f"{worst_deviation:.3g}")
    print(f"{platform.python_version()}, {os.cpu_count()} CPUs, load {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f}, {time.perf_counter() - started:.0f} s")
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
