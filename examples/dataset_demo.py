"""The data-set workflow on the digits example folder (``digits_example``): ``dataset_part``
runs score-dir -> report -> select on it against a server, as ``make demo`` does at its end."""

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

from digits_example import TRUTH_FILE, write_digits_example


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
                          root / "queue", label_studio_json=True)
    print(f"select --strategy mistakes --budget 60: {written.csv} and {written.json}")
    index = write_report(analysis, root / "report", source=str(scores))
    print(f"report: {index}  (open it in a browser)")
    return index
