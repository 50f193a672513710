"""The report's collection-verdict sections (hardscore_client.report_verdicts) on a synthetic
verdicts table with real PNG thumbnails: a planted leak, an exact and a near duplicate pair
side by side, the flagged outlier first, the counts, the 2-D map, the CLI's embeddings."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.embedding_store import write_part
from hardscore_client.report import write_report
from hardscore_client.report_verdicts import (
    default_embeddings,
    pca_2d,
    verdict_rows,
)
from hardscore_client.tables import write_table

N = 40
LEAK, LEAK_KEPT = 7, 3  # near duplicate across splits
EXACT, EXACT_KEPT = 5, 2  # same file content
NEAR, NEAR_KEPT = 12, 10  # near duplicate, same split
OUTLIER, MILD = 9, 11  # flagged outlier (lowest score), unflagged low score


def _table(folder: Path, verdicts: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(N):
        pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        path = folder / f"img-{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    labels = np.array(["a", "b"], dtype=object)[np.arange(N) % 2]
    p_a = np.clip(rng.random(N), 0.02, 0.98)
    p_a[labels == "a"] = np.maximum(p_a[labels == "a"], 0.6)
    columns: dict[str, np.ndarray] = {
        "path": np.array(paths, dtype=object), "label": labels,
        "split": np.array(["train"] * (N - 5) + ["test"] * 5, dtype=object),
        "prediction": np.where(p_a >= 0.5, "a", "b").astype(object),
        "confidence": np.maximum(p_a, 1 - p_a),
        "margin": np.abs(2 * p_a - 1),
        "hardness": -(p_a * np.log(p_a) + (1 - p_a) * np.log(1 - p_a)),
        "p_a": p_a, "p_b": 1 - p_a,
    }
    columns["split"][LEAK] = "test"
    if not verdicts:
        return columns
    near_of = np.full(N, -1, dtype=np.int64)
    near_dist = np.full(N, np.nan)
    near_of[[LEAK, NEAR]] = [LEAK_KEPT, NEAR_KEPT]
    near_dist[[LEAK, NEAR]] = [0.08, 0.02]
    exact_of = np.full(N, -1, dtype=np.int64)
    exact_of[EXACT] = EXACT_KEPT
    outlier_score = np.linspace(0.9, 0.5, N)
    outlier_score[[OUTLIER, MILD]] = [0.05, 0.2]
    is_outlier = np.zeros(N, dtype=np.int64)
    is_outlier[OUTLIER] = 1
    leak = np.zeros(N, dtype=np.int64)
    leak[LEAK] = 1
    columns.update({
        "near_duplicate_of": near_of, "near_duplicate_distance": near_dist,
        "exact_duplicate_of": exact_of, "leak": leak, "outlier_score": outlier_score,
        "is_outlier": is_outlier, "is_knn_label_issue": np.zeros(N, dtype=np.int64),
        "uniqueness": rng.random(N),
    })
    return columns


def _embeddings() -> np.ndarray:
    x = np.random.default_rng(4).normal(size=(N, 8)).astype(np.float32)
    x[OUTLIER] += 25.0
    return x


class _Page(HTMLParser):
    """Pairs (their figures' rows) and the outlier gallery's figures, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[dict[str, object]] = []
        self.outliers: list[tuple[int, str]] = []
        self.in_outliers = False
        self.srcs: list[str] = []
        self.counts: dict[str, str] = {}
        self._count: str | None = None
        self._bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "div" and cls.split()[:1] == ["pair"]:
            self.pairs.append({"row": int(a["data-row"] or -1), "kept": int(a["data-kept"] or -1),
                               "kind": a["data-kind"], "leak": "leak" in cls.split(),
                               "figures": []})
        if tag == "div" and a.get("class") == "gallery":
            self.in_outliers = a.get("id") == "outliers"
        if tag == "figure":
            row = int(a["data-row"] or -1)
            if self.in_outliers:
                self.outliers.append((row, cls))
            elif self.pairs and len(self.pairs[-1]["figures"]) < 2:  # type: ignore[arg-type]
                self.pairs[-1]["figures"].append(row)  # type: ignore[attr-defined]
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag == "div" and a.get("data-count"):
            self._count = a["data-count"]
        if tag == "b" and self._count:
            self._bold = True

    def handle_data(self, data: str) -> None:
        if self._bold and self._count:
            self.counts[self._count] = data
            self._bold = False
            self._count = None


def test_verdict_sections(tmp_path):
    columns = _table(tmp_path / "images")
    index = write_report(ScoreTable.from_columns(columns), tmp_path / "report",
                         embeddings=_embeddings())
    page = index.read_text()
    dom = _Page()
    dom.feed(page)

    # the leak first, then the exact pair, then the near one; each duplicate beside its kept row
    assert [(p["row"], p["kept"], p["kind"], p["leak"]) for p in dom.pairs] == [
        (LEAK, LEAK_KEPT, "near", True), (EXACT, EXACT_KEPT, "exact", False),
        (NEAR, NEAR_KEPT, "near", False)]
    assert [p["figures"] for p in dom.pairs] == [[LEAK, LEAK_KEPT], [EXACT, EXACT_KEPT],
                                                 [NEAR, NEAR_KEPT]]
    assert page.count('class="leakmark"') == 1
    assert "distance 0.0800<br>test ↔ train" in page  # the duplicate's split, then the kept's
    # outliers: lowest score first, the flagged one marked
    assert dom.outliers[0] == (OUTLIER, dom.outliers[0][1])
    assert "outlier" in dom.outliers[0][1].split()
    assert dom.outliers[1][0] == MILD and "outlier" not in dom.outliers[1][1].split()
    assert len(dom.outliers) == 24
    # counts: the 10% hardest, split into clean and odd
    v = verdict_rows(analyse(ScoreTable.from_columns(columns)))
    assert dom.counts["hard"] == str(int(v.hard.sum())) == "4"
    assert int(dom.counts["hard but clean"]) + int(dom.counts["hard and outlier or duplicate"]) \
        == 4
    assert dom.counts["duplicates"] == "3" and dom.counts["outliers"] == "1"
    assert dom.counts["rows in a leak across splits"] == "1"
    # the map, and every image a file in the folder (offline, relative)
    assert 'id="verdict-map"' in page
    assert (tmp_path / "report" / "plots" / "verdict_map.png").stat().st_size > 5000
    for src in dom.srcs:
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        assert (tmp_path / "report" / src).is_file(), src
    assert len([s for s in dom.srcs if s.startswith("thumbs/")]) >= 6 + 24
    assert "http://" not in page and "https://" not in page


def test_no_verdict_columns_no_sections(tmp_path):
    page = write_report(ScoreTable.from_columns(_table(tmp_path / "i", verdicts=False)),
                        tmp_path / "r", embeddings=_embeddings()).read_text()
    assert "Collection verdicts" not in page and "duplicate-pairs" not in page
    assert not (tmp_path / "r" / "plots" / "verdict_map.png").exists()


def test_verdicts_without_embeddings_say_so(tmp_path):
    page = write_report(ScoreTable.from_columns(_table(tmp_path / "i")),
                        tmp_path / "r").read_text()
    assert 'id="verdict-map-missing"' in page and 'id="duplicate-pairs"' in page


def test_pca_2d_finds_the_main_axes():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 2] = rng.normal(size=200) * 10
    x[:, 4] = rng.normal(size=200)
    x[7] = np.nan
    points, share = pca_2d(x)
    assert np.isnan(points[7]).all() and np.isfinite(np.delete(points, 7, axis=0)).all()
    ok = np.delete(np.arange(200), 7)
    centred = x[ok] - x[ok].mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
    for axis in (0, 1):
        expected = centred @ vectors[:, -1 - axis]
        assert np.allclose(np.abs(points[ok, axis]), np.abs(expected))
    assert share == pytest.approx(values[::-1][:2] / values.sum())
    assert share[0] > 0.95


def test_cli_report_finds_the_store_of_the_scored_table(tmp_path):
    columns = _table(tmp_path / "images")
    scores = tmp_path / "scores.parquet"
    write_part(scores, [str(p) for p in columns["path"]], _embeddings())
    verdicts = tmp_path / "scores.verdicts.parquet"
    write_table(verdicts, columns)
    assert default_embeddings(verdicts) == tmp_path / "scores.parquet.embeddings"
    assert default_embeddings(tmp_path / "other.parquet") is None
    assert cli.main(["report", str(verdicts), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'id="verdict-map"' in page
    # an explicit .npy in row order works too
    np.save(tmp_path / "e.npy", _embeddings())
    assert cli.main(["report", str(verdicts), "--out", str(tmp_path / "r2"),
                     "--embeddings", str(tmp_path / "e.npy")]) == 0
    assert re.search(r'id="verdict-map"', (tmp_path / "r2" / "index.html").read_text())
