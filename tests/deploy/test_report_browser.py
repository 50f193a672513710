"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``, installed by
``make test``) loads the report from disk, renders it, dumps the DOM and takes a screenshot.

Checks that the page rendered its tables and galleries, that every image (plots and
thumbnails) loaded (the report's inline script records ``complete && naturalWidth > 0`` on
``<body>``), and that the screenshot shows the thumbnails (dark pixels of the digits).
"""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardscore_client.analysis import ScoreTable
from hardscore_client.dataset import score_dir
from hardscore_client.report import write_report

from conftest import chromium
from digits_example import write_digits_example

WIDTH, HEIGHT = 1280, 3000



class _Dom(HTMLParser):
    """Collects the body's attributes, the class table's rows and the galleries' figures."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.stack: list[str] = []
        self.table_rows = 0
        self.table_cells: list[str] = []
        self.in_table = False
        self.gallery: str | None = None
        self.figures: dict[str, int] = {}
        self.images = 0
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "table" and a.get("id") == "class-table":
            self.in_table = True
        if self.in_table and tag == "tr":
            self.table_rows += 1
        if self.in_table and tag == "td":
            self._cell = True
        if tag == "div" and "gallery" in (a.get("class") or ""):
            self.gallery = a.get("id")
        if tag == "figure" and self.gallery:
            self.figures[self.gallery] = self.figures.get(self.gallery, 0) + 1
        if tag == "img":
            self.images += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.in_table = False
        if tag == "td":
            self._cell = False

    def handle_data(self, data: str) -> None:
        if self._cell and self.table_rows and len(self.table_cells) < 7:
            self.table_cells.append(data)


@pytest.fixture(scope="module")
def report(image_server, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    write_digits_example(root / "digits")
    scores = root / "scores.parquet"
    score_dir(root / "digits", [image_server.target], scores, progress=False)
    return write_report(ScoreTable.load(scores), root / "report", source=str(scores))


def test_report_renders_in_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
         f"--screenshot={shot}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    dom = _Dom()
    dom.feed(run.stdout)

    # The script ran after every image settled, and every one of them loaded.
    assert dom.body.get("data-ready") == "true", run.stdout[:500]
    total = int(dom.body["data-images-total"] or 0)
    assert total == dom.images and total >= 3 + 36
    assert dom.body["data-images-loaded"] == str(total)
    # The class-wise table: header + one row per class, first cells as rendered.
    assert dom.table_rows == 11
    assert dom.table_cells[:2] == ["0", "52"]
    assert dom.figures["hardest"] == 24 and dom.figures["easiest"] == 12
    assert sum(v for k, v in dom.figures.items() if k.startswith("mistakes-")) >= 40

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image[:40].mean() < 80  # the dark header bar
    # The digit thumbnails (black backgrounds) are on screen; a page whose images failed
    # to load shows grey placeholders instead.
    assert (image.max(axis=2) < 16).sum() > 40_000
