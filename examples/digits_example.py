"""The digits example data: scikit-learn's handwritten digits with some labels corrupted.

``corrupt_labels`` flips a share of the labels to a random other class (seeded);
``write_digits_example`` writes the 540 held-out digits (the split the embedded model did not
train on) as PNG files in the class-folder layout, 10% of them in a wrong class folder.

    python examples/digits_example.py OUT [--noise 0.10] [--seed 1]

Needs the server extra (PNG encoding, the held-out split) and scikit-learn (the data).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split

NOISE_RATE = 0.10
SEED = 1
TRUTH_FILE = "TRUE_LABELS.csv"


def corrupt_labels(
    labels: npt.NDArray[np.int64], n_classes: int, rate: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Flips ``rate`` of the labels to a uniformly random *other* class; returns (noisy, mask)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    flip = np.zeros(n, dtype=bool)
    flip[rng.choice(n, size=round(rate * n), replace=False)] = True
    noisy = labels.copy()
    shift = rng.integers(1, n_classes, size=int(flip.sum()))
    noisy[flip] = (labels[flip] + shift) % n_classes
    return noisy, flip


def write_digits_example(out: Path, noise_rate: float = NOISE_RATE, seed: int = SEED) -> int:
    """Writes ``out/<given label>/digit-NNNN.png`` and ``out/TRUE_LABELS.csv`` (file, given,
    true) for the held-out digits; returns how many labels were corrupted."""
    _, _, images, labels = heldout_split()
    noisy, flipped = corrupt_labels(labels, 10, noise_rate, seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / TRUTH_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "given_label", "true_label", "corrupted"])
        for i, (image, given, true) in enumerate(zip(images, noisy, labels, strict=True)):
            folder = out / str(int(given))
            folder.mkdir(exist_ok=True)
            name = f"digit-{i:04d}.png"
            (folder / name).write_bytes(encode_png(image))
            writer.writerow([f"{int(given)}/{name}", int(given), int(true), int(given != true)])
    return int(flipped.sum())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the digits example folder")
    parser.add_argument("out", help="folder to write (class subfolders)")
    parser.add_argument("--noise", type=float, default=NOISE_RATE,
                        help="share of labels to corrupt")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    corrupted = write_digits_example(Path(args.out), args.noise, args.seed)
    print(f"wrote 540 digit images to {Path(args.out) / '<label>'}/ ({corrupted} in a wrong "
          "folder; the truth is in TRUE_LABELS.csv)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
