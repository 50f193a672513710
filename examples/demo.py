"""The digits demo: find corrupted labels with hardscore, on a real data set.

scikit-learn ships the handwritten digits (1,797 8x8 images, 10 classes). The demo corrupts 10%
of the labels to a random other class (seeded) and asks a running hardscore server to find them,
two ways:

1. **Logits path** (ScoreLogits): out-of-fold logits from a scikit-learn classifier (5-fold
   cross-validation: no sample is scored by a model that trained on it).
2. **Image path** (ScoreImages): the held-out split, PNG-encoded, scored by the server's
   embedded default model (a small ResNet trained on the other split).

Each part prints the 10 most likely label mistakes, precision at k (k = number of corrupted
labels), and the class-wise table of mean hardness and agreement with the given label. It ends
with the data-set workflow on the held-out images written as a class-folder data set
(score-dir, select, and the HTML report, whose path it prints).

    python examples/demo.py --start-server      # or: --server HOST:PORT
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_client.client import ScoringClient
from hardscore_client.messages import ScoreResult
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split
from hardscore_server.tools.local_server import start_server

from dataset_demo import dataset_part
from digits_example import corrupt_labels

NOISE_RATE = 0.10
SEED = 0


def out_of_fold_logits(
    features: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], seed: int
) -> npt.NDArray[np.float32]:
    """Logits of a 5-fold cross-validated logistic regression: each row from a model that
    never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    logits = cross_val_predict(model, features, labels, cv=folds, method="decision_function")
    return np.asarray(logits, dtype=np.float32)


def report(
    title: str, result: ScoreResult, noisy: npt.NDArray[np.int64], flipped: npt.NDArray[np.bool_],
    true_labels: npt.NDArray[np.int64],
) -> float:
    """Prints the likely mistakes, precision at k and the class-wise table; returns precision."""
    assert result.label_issue_score is not None
    print(f"\n=== {title}: {len(result)} samples, {int(flipped.sum())} labels corrupted ===")
    order = np.argsort(-result.label_issue_score, kind="stable")
    print("\n10 most likely label mistakes (by label_issue_score = 1 - p(given label)):")
    print(f"{'row':>5} {'given':>5} {'pred':>4} {'issue':>6} {'mistakenness':>12} "
          f"{'hardness':>8}  corrupted? (true label)")
    for i in order[:10]:
        mark = f"yes (true {true_labels[i]})" if flipped[i] else "no"
        assert result.mistakenness is not None
        print(f"{i:>5} {noisy[i]:>5} {result.predicted_class[i]:>4} "
              f"{result.label_issue_score[i]:>6.3f} {result.mistakenness[i]:>12.3f} "
              f"{result.hardness[i]:>8.3f}  {mark}")
    k = int(flipped.sum())
    precision = float(flipped[order[:k]].mean()) if k else float("nan")
    print(f"\nprecision at k={k} (label_issue_score): {precision:.3f}")
    assert result.mistakenness is not None
    m_order = np.argsort(-result.mistakenness, kind="stable")
    print(f"precision at k={k} (FiftyOne mistakenness): {flipped[m_order[:k]].mean():.3f}")

    print("\nclass-wise table (as the FiftyOne hard-sample tutorial):")
    print(f"{'class':>5} {'count':>5} {'mean hardness':>13} {'agrees with given':>17}")
    agree = result.predicted_class == noisy
    for c in range(int(noisy.max()) + 1):
        rows = noisy == c
        print(f"{c:>5} {int(rows.sum()):>5} {result.hardness[rows].mean():>13.4f} "
              f"{agree[rows].mean():>17.3f}")
    correct = result.predicted_class == true_labels
    print("\nmean hardness of correct vs incorrect predictions (against the true labels): "
          f"{_mean(result.hardness[correct])} ({int(correct.sum())}) vs "
          f"{_mean(result.hardness[~correct])} ({int((~correct).sum())})")
    return precision


def _mean(values: npt.NDArray[np.float64]) -> str:
    return f"{values.mean():.4f}" if len(values) else "n/a"


def logits_part(client: ScoringClient) -> float:
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    noisy, flipped = corrupt_labels(labels, 10, NOISE_RATE, SEED)
    logits = out_of_fold_logits(np.asarray(digits.data, dtype=np.float64), noisy, SEED)
    result = client.score_logits(logits, noisy, class_names=[str(c) for c in range(10)])
    return report("logits path (ScoreLogits, out-of-fold logistic regression)", result,
                  noisy, flipped, labels)


def image_part(client: ScoringClient) -> float:
    _, _, images, labels = heldout_split()
    noisy, flipped = corrupt_labels(labels, 10, NOISE_RATE, SEED + 1)
    pngs = [encode_png(img) for img in images]
    info = client.get_model_info()
    print(f"\nserver model: {info.name} v{info.version} on {info.execution_provider}, "
          f"batching up to {info.batching.max_batch_size}")
    started = time.perf_counter()
    result = client.score_images(pngs, [int(v) for v in noisy])
    seconds = time.perf_counter() - started
    print(f"scored {len(pngs)} PNG images in {seconds:.2f} s ({len(pngs) / seconds:.0f} img/s)")
    return report("image path (ScoreImages, embedded digits model, held-out split)", result,
                  noisy, flipped, labels)


@contextmanager
def running_server() -> Iterator[str]:
    """Starts hardscore-server with the embedded model on free local ports; stops it after."""
    server = start_server()
    try:
        print(f"started hardscore-server on {server.target}, metrics on {server.metrics_url}")
        yield server.target
    finally:
        code = server.stop()
        print(f"stopped hardscore-server (exit code {code})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hardscore label-QA demo on digits")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--server", help="host:port of a running server")
    group.add_argument("--start-server", action="store_true", help="start one for the demo")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the data-set part's images, table and report "
                             "(default: a new temporary folder)")
    args = parser.parse_args(argv)

    def run(target: str) -> None:
        with ScoringClient(target, timeout=120) as client:
            client.wait_ready(60)
            logits_part(client)
            image_part(client)
        # Last: the data-set workflow (score-dir -> report -> select) on the held-out digits.
        dataset_part(target, args.workdir)

    if args.start_server:
        with running_server() as target:
            run(target)
    else:
        run(args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
