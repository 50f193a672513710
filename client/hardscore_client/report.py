"""``hardscore report scores.parquet --out report/``: a self-contained HTML report.

One folder: ``index.html``, ``plots/*.png`` (matplotlib, Agg) and ``thumbs/*.png`` (thumbnails
made from the image paths in the table), all referenced by relative paths, nothing fetched from
the network: it opens offline, from disk, and can be copied or zipped as a whole.

The page holds the summary (images, accuracy against the given labels, estimated label issues,
label-health score), the class-wise table, the hardness distribution of correct vs incorrect
predictions, class accuracy against mean hardness, and galleries of the most likely label
mistakes per class, the hardest and the easiest samples (given label, prediction, scores).
A table with collection verdicts (``hardscore verdicts``) adds their sections
(hardscore_client.report_verdicts): duplicate pairs side by side, the outliers, hard-but-clean
counts and, given the embeddings, a 2-D map of the collection coloured by verdict.
A small inline script marks ``<body>`` with how many of its images loaded
(``data-images-loaded`` / ``data-images-total``), which the browser test reads.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hardscore_client.analysis import Analysis, ScoreTable, analyse
from hardscore_client.errors import MissingExtraError
from hardscore_client.label_quality import DEFAULT_METHOD
from hardscore_client.report_verdicts import CSS as VERDICT_CSS
from hardscore_client.report_verdicts import has_verdicts
from hardscore_client.report_verdicts import sections as verdict_sections

THUMB_SIZE = 96
IntArray = npt.NDArray[np.int64]

CSS = """
:root { --fg: #1d2430; --muted: #5b6475; --line: #dde2ea; --bad: #b42318; --good: #067647;
        --accent: #2e5aac; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1d2430; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; color: #c5ccd8; }
main { padding: 8px 32px 40px; max-width: 1500px; }
h2 { margin: 28px 0 8px; font-size: 18px; border-bottom: 2px solid var(--line);
     padding-bottom: 4px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
.note { color: var(--muted); margin: 4px 0 10px; max-width: 70em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
.stat { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px;
        min-width: 150px; }
.stat b { display: block; font-size: 22px; } .stat span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: right;
         font-size: 13px; }
th { background: #eef1f5; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
tr.warn td { background: #fff4f2; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plots img { background: #fff; border: 1px solid var(--line); border-radius: 6px;
             max-width: 100%; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.card { margin: 0; width: 132px; background: #fff; border: 1px solid var(--line);
        border-radius: 6px; padding: 6px; font-size: 11.5px; }
.card.flagged { border-color: var(--bad); box-shadow: inset 0 0 0 1px var(--bad); }
.card img, .card .missing { display: block; margin: 0 auto 4px; width: 96px; height: 96px;
        object-fit: contain; image-rendering: pixelated; background: #eee; }
.card .missing { display: flex; align-items: center; justify-content: center; color: #999; }
.card .labels b { font-size: 13px; } .wrong { color: var(--bad); } .right { color: var(--good); }
.card .path { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.scores { color: var(--muted); }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded.length));
  document.body.setAttribute("data-ready", "true");
});
"""


@dataclass(frozen=True)
class ReportOptions:
    hardest: int = 24
    easiest: int = 12
    mistakes_per_class: int = 8
    duplicate_pairs: int = 24
    outliers: int = 24
    thumb_size: int = THUMB_SIZE
    title: str = "hardscore data-set report"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def make_thumbnail(source: str, target: Path, size: int) -> bool:
    """A PNG thumbnail fitting size x size (small images enlarged by whole pixels); False when
    the source cannot be read. Needs Pillow (the ``report`` extra)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            im.load()
            image = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    w, h = image.size
    if max(w, h) <= size:
        factor = max(1, size // max(w, h))
        image = image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    else:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    image.save(target, format="PNG", optimize=True)
    return True


class _Thumbs:
    def __init__(self, folder: Path, size: int) -> None:
        self.folder = folder
        self.size = size
        self.made: dict[str, str | None] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def src(self, path: str) -> str | None:
        if path not in self.made:
            name = hashlib.sha1(path.encode()).hexdigest()[:20] + ".png"
            ok = make_thumbnail(path, self.folder / name, self.size)
            self.made[path] = f"{self.folder.name}/{name}" if ok else None
        return self.made[path]


def _plots(analysis: Analysis, folder: Path) -> list[tuple[str, str]]:
    """Renders the plots; returns (file relative to the report, alt text)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError(
            "the report needs matplotlib: pip install 'hardscore[report]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    t = analysis.table
    hardness = t.score("hardness")
    out: list[tuple[str, str]] = []

    def save(fig: Any, name: str, alt: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name)
        plt.close(fig)
        out.append((f"plots/{name}", alt))

    fig, ax = plt.subplots(figsize=(5.4, 3.5), dpi=110)
    finite = np.isfinite(hardness)
    top = float(np.nanmax(hardness)) if finite.any() else 1.0
    bins = np.linspace(0.0, max(top, 1e-6), 31).tolist()
    labelled = t.labelled & finite
    if labelled.any():
        correct = labelled & (t.predicted == t.labels)
        wrong = labelled & (t.predicted != t.labels)
        ax.hist(hardness[correct], bins=bins, alpha=0.65, color="#2e7d32",
                label=f"prediction = given label ({int(correct.sum())})")
        ax.hist(hardness[wrong], bins=bins, alpha=0.75, color="#c62828",
                label=f"prediction ≠ given label ({int(wrong.sum())})")
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.hist(hardness[finite], bins=bins, color="#2e5aac", label="all (unlabelled)")
    ax.set_yscale("log")
    ax.set_xlabel("hardness (entropy of the prediction)")
    ax.set_ylabel("images (log scale)")
    ax.set_title("Hardness: correct vs incorrect predictions", fontsize=11)
    save(fig, "hardness.png", "hardness histogram, correct vs incorrect predictions")

    stats = [s for s in analysis.class_stats() if s.count and not math.isnan(s.accuracy)]
    if stats:
        fig, ax = plt.subplots(figsize=(5.4, 3.5), dpi=110)
        x = np.array([s.mean_hardness for s in stats])
        y = np.array([s.accuracy for s in stats])
        sizes = np.array([s.count for s in stats], dtype=np.float64)
        ax.scatter(x, y, s=30 + 170 * sizes / sizes.max(), color="#2e5aac", alpha=0.7,
                   edgecolor="white")
        for s, xi, yi in zip(stats, x, y, strict=True):
            ax.annotate(s.name, (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set_xlabel("mean hardness")
        ax.set_ylabel("accuracy against the given label")
        ax.set_title("Classes: accuracy vs mean hardness (size = count)", fontsize=11)
        ax.grid(alpha=0.3)
        save(fig, "classes.png", "class accuracy against mean hardness")

    if analysis.issues is not None:
        joint = analysis.issues.calibrated_joint
        names = analysis.issues.class_names
        k = len(names)
        side = min(5.5, 2.2 + 0.25 * k)
        fig, ax = plt.subplots(figsize=(side + 0.5, side), dpi=85)
        shown = np.log1p(joint.astype(np.float64))
        ax.imshow(shown, cmap="Blues")
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if joint[i, j]:
                        ax.text(j, i, str(joint[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if shown[i, j] > shown.max() * 0.6 else "#1d2430")
            ax.set_xticks(range(k), names, fontsize=8, rotation=90 if k > 10 else 0)
            ax.set_yticks(range(k), names, fontsize=8)
        ax.set_xlabel("likely true label")
        ax.set_ylabel("given label")
        ax.set_title("Estimated joint of given and true labels", fontsize=11)
        save(fig, "joint.png", "confident joint of given and likely true labels")
    return out


def _card(analysis: Analysis, i: int, thumbs: _Thumbs, extra: str = "",
          classes: str = "") -> str:
    """One sample's figure; ``extra``: more caption html (trusted), ``classes``: more css."""
    t = analysis.table
    path = t.paths[i]
    src = thumbs.src(path)
    given = t.name(int(t.labels[i]))
    pred = t.name(int(t.predicted[i]))
    name = Path(path).name or path
    image = (f'<img src="{_esc(src)}" alt="{_esc(name)}" loading="eager">' if src
             else '<div class="missing">no image</div>')
    if given:
        cls = "right" if given == pred else "wrong"
        labels = f'given <b>{_esc(given)}</b> → pred <b class="{cls}">{_esc(pred)}</b>'
    else:
        labels = f"pred <b>{_esc(pred)}</b>"
    scores = (f"hardness {_fmt(t.score('hardness')[i])}<br>"
              f"confidence {_fmt(t.score('confidence')[i])}")
    if analysis.ranking == DEFAULT_METHOD:
        issue = analysis.issue_score()[i]
        if not math.isnan(issue):
            scores += f"<br>label issue {_fmt(issue)}"
    else:  # the chosen ranking's own score, as label-issues and select show it
        quality = analysis.label_quality()[i]
        if not math.isnan(quality):
            scores += f"<br>label quality {_fmt(quality)}"
    if extra:
        scores += f"<br>{extra}"
    flagged = " flagged" if analysis.flagged[i] else ""
    more = f" {_esc(classes)}" if classes else ""
    return (f'<figure class="card{flagged}{more}" title="{_esc(path)}" data-row="{i}">{image}'
            f'<figcaption><div class="labels">{labels}</div><div class="scores">{scores}</div>'
            f'<div class="path">{_esc(name)}</div></figcaption></figure>')


def _gallery(analysis: Analysis, rows: Sequence[int], thumbs: _Thumbs, gallery_id: str) -> str:
    cards = "".join(_card(analysis, int(i), thumbs) for i in rows)
    return f'<div class="gallery" id="{_esc(gallery_id)}">{cards}</div>'


def _class_table(analysis: Analysis) -> str:
    has_issues = analysis.issues is not None
    head = ["class", "count", "mean hardness", "accuracy vs given", "flagged",
            "est. label noise", "likely true label"]
    if not has_issues:
        head = head[:4]
    rows = []
    for s in analysis.class_stats():
        cells = [_esc(s.name), str(s.count), _fmt(s.mean_hardness), _pct(s.accuracy)]
        if has_issues:
            cells += [str(s.flagged), _pct(s.noise_rate), _esc(s.likely_true or "-")]
        warn = ' class="warn"' if has_issues and s.noise_rate >= 0.1 else ""
        rows.append(f"<tr{warn}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return (f'<table id="class-table"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _summary(analysis: Analysis) -> str:
    t = analysis.table
    labelled = t.labelled
    hardness = t.score("hardness")
    stats = [("images", f"{len(t):,}"), ("labelled", f"{int(labelled.sum()):,}")]
    if labelled.any():
        accuracy = float((t.predicted[labelled] == t.labels[labelled]).mean())
        stats.append(("accuracy vs given labels", _pct(accuracy)))
    stats.append(("mean hardness", _fmt(float(np.nanmean(hardness)) if len(t) else math.nan)))
    if analysis.issues is not None:
        issues = analysis.issues
        stats += [
            ("estimated label issues", f"{issues.num_issues:,}"),
            ("flagged for review", f"{int(analysis.flagged.sum()):,}"),
            ("label health score", f"{issues.health:.3f}"),
        ]
    cards = "".join(f'<div class="stat"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>'
                    for k, v in stats)
    return f'<div class="cards" id="summary">{cards}</div>'


def _ranking_words(analysis: Analysis) -> str:
    if analysis.ranking == DEFAULT_METHOD:
        return "label_issue_score (self-confidence)"
    return f"label quality ({analysis.ranking}, lowest first)"


def write_report(
    table: ScoreTable | Analysis, out: Path, options: ReportOptions | None = None,
    *, source: str = "", embeddings: npt.ArrayLike | None = None,
) -> Path:
    """Writes the report folder ``out``; returns the path of its index.html (MissingExtraError
    without matplotlib). A table with collection-verdict columns (``hardscore verdicts``) also
    gets their sections; ``embeddings`` ([N, D] in the table's row order, NaN rows for none)
    adds the 2-D map to them."""
    opts = options or ReportOptions()
    analysis = table if isinstance(table, Analysis) else analyse(table)
    t = analysis.table
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(analysis, out / "plots")
    thumbs = _Thumbs(out / "thumbs", opts.thumb_size)
    hardness = t.score("hardness")
    finite = np.flatnonzero(np.isfinite(hardness))
    by_hardness = finite[np.argsort(-hardness[finite], kind="stable")]

    parts = [f"<header><h1>{_esc(opts.title)}</h1><p>{_esc(source)} · {len(t):,} images · "
             f"{len(t.class_names)} classes · written "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p></header><main>"]
    parts.append(_summary(analysis))
    parts.append('<p class="note">Label-issue estimates are confident learning over the '
                 "model's probabilities and the given labels; they are only meaningful when the "
                 "probabilities are out-of-sample (from a model that did not train on these "
                 "images). Accuracy is against the given labels, which may themselves be "
                 "wrong.</p>")
    parts.append("<h2>Classes</h2>")
    parts.append('<p class="note">Samples grouped by given label (unlabelled ones by '
                 "prediction). Estimated label noise: the share of the class's labels that "
                 "confident learning estimates wrong (rows at 10% or more are tinted), and "
                 "the class most of them truly belong to.</p>")
    joint = [p for p in plots if p[0].endswith("joint.png")]
    parts.append(f'<div class="plots"><div>{_class_table(analysis)}</div>')
    parts += [f'<img src="{_esc(src)}" alt="{_esc(alt)}">' for src, alt in joint]
    parts.append('</div><h2>Hardness</h2><div class="plots">')
    parts += [f'<img src="{_esc(src)}" alt="{_esc(alt)}">' for src, alt in plots
              if (src, alt) not in joint]
    parts.append("</div>")

    if analysis.issues is not None:
        issue_rows = analysis.issue_rows
        parts.append(f"<h2>Most likely label mistakes</h2><p class=\"note\">{len(issue_rows)} "
                     "samples flagged by confident learning (pruning by noise rate), most likely "
                     f"first by {_esc(_ranking_words(analysis))}, at most "
                     f"{opts.mistakes_per_class} per given class. A red border "
                     "marks a flagged sample everywhere in the report.</p>")
        shown = 0
        for k, name in enumerate(t.class_names):
            rows = [int(i) for i in issue_rows if t.labels[i] == k]
            if not rows:
                continue
            shown += 1
            parts.append(f"<h3>given label {_esc(name)}: {len(rows)} flagged</h3>")
            parts.append(_gallery(analysis, rows[: opts.mistakes_per_class], thumbs,
                                  f"mistakes-{k}"))
        if not shown:
            parts.append('<p class="note">No sample is flagged.</p>')
    parts += verdict_sections(
        analysis, lambda i, extra, classes: _card(analysis, i, thumbs, extra, classes),
        esc=_esc, plots=out / "plots", embeddings=embeddings,
        pairs_shown=opts.duplicate_pairs, outliers_shown=opts.outliers)
    parts.append(f"<h2>Hardest samples</h2><p class=\"note\">The {opts.hardest} samples the "
                 "model is least sure about (highest entropy): candidates to label next or to "
                 "add to a test set.</p>")
    parts.append(_gallery(analysis, by_hardness[: opts.hardest].tolist(), thumbs, "hardest"))
    parts.append(f"<h2>Easiest samples</h2><p class=\"note\">The {opts.easiest} samples with "
                 "the lowest hardness.</p>")
    parts.append(_gallery(analysis, by_hardness[::-1][: opts.easiest].tolist(), thumbs,
                          "easiest"))
    parts.append("</main>")

    css = CSS + (VERDICT_CSS if has_verdicts(analysis) else "")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(opts.title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{css}</style><script>{SCRIPT}</script></head>"
        f'<body data-report="hardscore">{"".join(parts)}</body></html>\n'
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
