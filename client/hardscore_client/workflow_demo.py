"""The data-set workflow on the bundled example: scikit-learn's digits as an image folder.

``write_digits_example`` writes the 540 held-out digits (the split the embedded model did not
train on) as PNG files in the class-folder layout, with 10% of the images put in a wrong class
folder (seeded; the same corruption as the demo's image part). ``dataset_part`` runs
score-dir -> report -> select on it against a server, as ``make demo`` does at its end.
"""

from __future__ import annotations

import csv
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.dataset import score_dir
from hardscore_client.report import write_report
from hardscore_client.selection import select, write_queue

NOISE_RATE = 0.10
SEED = 1
TRUTH_FILE = "TRUE_LABELS.csv"


def write_digits_example(out: Path, noise_rate: float = NOISE_RATE, seed: int = SEED) -> int:
    """Writes ``out/<given label>/digit-NNNN.png`` and ``out/TRUE_LABELS.csv`` (file, given,
    true) for the held-out digits; returns how many labels were corrupted."""
    from hardscore_client.demo import corrupt_labels
    from hardscore_server.digits import heldout_split
    from hardscore_server.preprocess import encode_png

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


def _table_suffix() -> str:
    return ".parquet" if importlib.util.find_spec("pyarrow") else ".csv"


def dataset_part(target: str, workdir: Path | None = None) -> Path:
    """Example folder -> score-dir -> report -> select; prints what it did and the report's
    path, and returns the path of index.html."""
    root = workdir or Path(tempfile.mkdtemp(prefix="hardscore-demo-"))
    images = root / "digits"
    corrupted = write_digits_example(images)
    print(f"\n=== data-set workflow: {images} (540 held-out digits in class folders, "
          f"{corrupted} in the wrong folder) ===")
    scores = root / f"scores{_table_suffix()}"
    summary = score_dir(images, [target], scores, progress=False)
    print(f"score-dir: {summary.scored} images scored in {summary.seconds:.2f} s "
          f"({summary.already_scored} already in {scores.name}), {len(summary.failures)} "
          f"failed -> {scores}")
    analysis = analyse(ScoreTable.load(scores))
    issues = analysis.issues
    if issues is not None:
        truth = {}
        with (images / TRUTH_FILE).open(newline="") as f:
            for row in csv.DictReader(f):
                truth[str((images / row["file"]).resolve())] = row["corrupted"] == "1"
        paths = analysis.table.paths
        hits = sum(truth.get(str(Path(paths[i]).resolve()), False)
                   for i in np.flatnonzero(analysis.flagged))
        print(f"confident learning: {issues.num_issues} estimated label issues, "
              f"{int(analysis.flagged.sum())} flagged ({hits} of them really corrupted, of "
              f"{corrupted}); label health score {issues.health:.3f}")
    written = write_queue(analysis, select(analysis, 60, "mistakes"), "mistakes",
                          root / "queue")
    print(f"select --strategy mistakes --budget 60: {written.csv} and {written.json}")
    index = write_report(analysis, root / "report", source=str(scores))
    print(f"report: {index}  (open it in a browser)")
    return index
