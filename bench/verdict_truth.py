"""Collection verdicts against planted ground truth on the project's own data.

The collection: the 540 held-out scikit-learn digits (the split the embedded model did not
train on) written as 32 x 32 grayscale PNGs (upscaled as the server's "resize" rule does, so
the model sees what it sees for the 8 x 8 originals), split 2/3 train, 1/3 test (seeded).
Planted into it, each from its own original (no original is used twice), with ``--seed``:

- exact duplicates: byte-identical copies of a digit, same split;
- augmented duplicates, one kind each: a 1-pixel shift (of the 32 x 32 image, zero fill), a
  brightness change (pixels x 0.9 or x 1.1), a PNG -> JPEG re-encode at quality 90; same split;
- duplicates across splits: a test copy of a train digit, exact, or augmented (the three kinds
  in turn);
- images from outside the collection: crops of scikit-learn's two sample photos, random noise,
  and letters drawn with Pillow's default font, each made like a digit (gray, 8 x 8 by area,
  then upscaled to 32 x 32), given a random digit label (a stray file in a class folder).

Every row is shuffled (seeded) and scored through a real server with embeddings
(``score_items(..., embeddings=True)``); ``collection_verdicts`` runs on them with the corrected
and the fiftyone variant. Printed: the composition, then precision and recall of each flag
against its planted truth, the recall of each kind of copy, and how continuous scores rank the
outside images (AUROC; and how many of the top-K hardest rows are outside images, before and
after ``diversity.hard_candidates``). Conventions (also in bench/README.md):

- ``exact_duplicate_of >= 0`` and FiftyOne's ``near_duplicate_of >= 0`` flag one row of a pair
  (the other is kept, the first in index order): the positive is the *later* of the two rows of
  each planted pair (copy or original, whichever the shuffle put second);
- Datalab's ``is_near_duplicate`` is symmetric: both rows of each planted pair are positives;
- ``leak`` flags both rows: the positives are the cross-split copies and their originals;
- ``is_outlier``: the outside images.

Unplanted digits that a verdict flags count against its precision, even where they are real
look-alikes: the truth here is only what was planted.

    .venv/bin/python bench/verdict_truth.py            # 720 rows: well under a minute
    .venv/bin/python bench/verdict_truth.py --quick    # 195 rows, for the tests
    .venv/bin/python bench/verdict_truth.py --json out.json --output out.md
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from common import BenchTimeout, Server, format_table, load_average, machine_header, time_limit
from PIL import Image, ImageDraw, ImageFont

from hardscore_client.dataset import Item, score_items
from hardscore_client.diversity import hard_candidates
from hardscore_client.embedding_store import aligned, store_of
from hardscore_client.tables import read_table
from hardscore_client.verdicts import centred, collection_verdicts, leaks, near_duplicates
from hardscore_server.tools.digits import heldout_split, upscale_rgb

PACKAGES = ("numpy", "scikit-learn", "pillow", "onnxruntime", "grpcio")
AUGMENTATIONS = ("shift", "brightness", "jpeg")
COPY_KINDS = ("exact", *AUGMENTATIONS, "cross-exact", "cross-augmented")
OUTSIDE_KINDS = ("photo", "noise", "letter")
LETTERS = "ACEFHKLMNPRTUVWXYacefhkmnprtuvwxy"
"""Pillow-drawn letters, each used once; the ones that read as digits (B, G, I, O, S, Z, b,
g, l, o, q, s, z ...) left out."""
THRESHOLDS = (0.2, 0.1, 0.05, 0.02, 0.01)
"""FiftyOne near-duplicate thresholds swept (0.2 is Brain's default)."""
TOP_FRACTION = 0.1
"""The share of the hardest rows looked at (hardness alone, and hard_candidates)."""
SIDE = 32


@dataclass(frozen=True)
class Plan:
    digits: int
    copies: dict[str, int]
    outside: dict[str, int]


FULL = Plan(540, {"exact": 25, "shift": 25, "brightness": 25, "jpeg": 25, "cross-exact": 15,
                  "cross-augmented": 15},
            {"photo": 20, "noise": 10, "letter": 20})
QUICK = Plan(150, {"exact": 5, "shift": 5, "brightness": 5, "jpeg": 5, "cross-exact": 4,
                   "cross-augmented": 6},
             {"photo": 6, "noise": 4, "letter": 5})


@dataclass
class Row:
    name: str
    data: bytes
    label: int
    split: str
    kind: str  # "digit", a copy kind, or an outside kind
    twin: str = ""  # a copy's original (and an original's copy)
    augmentation: str = ""  # the augmentation of an augmented copy


# ----------------------------------------------------------------------------- images


def png(gray: npt.NDArray[np.uint8]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gray, mode="L").save(out, format="PNG")
    return out.getvalue()


def jpeg(gray: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gray, mode="L").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def like_a_digit(small: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """An 8 x 8 gray image upscaled to 32 x 32 as the digits are (bilinear, upscale_rgb)."""
    return upscale_rgb(small[None], SIDE, SIDE)[0, :, :, 0]


def shifted(gray: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Moved one pixel up, down, left or right; the uncovered edge is background (0)."""
    axis, step = int(rng.integers(0, 2)), int(rng.choice([-1, 1]))
    out = np.roll(gray, step, axis=axis)
    edge = 0 if step == 1 else -1
    if axis == 0:
        out[edge, :] = 0
    else:
        out[:, edge] = 0
    return out


def brighter(gray: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    factor = float(rng.choice([0.9, 1.1]))
    return np.clip(np.round(gray.astype(np.float64) * factor), 0, 255).astype(np.uint8)


def augment(kind: str, gray: npt.NDArray[np.uint8], rng: np.random.Generator) -> bytes:
    if kind == "shift":
        return png(shifted(gray, rng))
    if kind == "brightness":
        return png(brighter(gray, rng))
    if kind == "jpeg":
        return jpeg(gray)
    raise ValueError(kind)


def photo_crops(count: int, rng: np.random.Generator) -> list[npt.NDArray[np.uint8]]:
    """Square crops (32 to 160 px) of scikit-learn's sample photos, gray, 8 x 8 by area."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(np.asarray(p, dtype=np.uint8)).convert("L")
              for p in load_sample_images().images]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(32, 161))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        small = photo.crop((left, top, left + side, top + side)).resize(
            (8, 8), Image.Resampling.BOX)
        out.append(like_a_digit(np.asarray(small, dtype=np.uint8)))
    return out


def noise_images(count: int, rng: np.random.Generator) -> list[npt.NDArray[np.uint8]]:
    return [like_a_digit(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(count)]


def letter_images(count: int, rng: np.random.Generator) -> list[npt.NDArray[np.uint8]]:
    """Letters drawn with Pillow's default font, bright on dark like the digits, their ink
    scaled to fill 8 rows (as a digit does) and centred in 8 x 8."""
    font = ImageFont.load_default()
    out = []
    for letter in rng.choice(list(LETTERS), size=count, replace=False):
        canvas = Image.new("L", (48, 48), 0)
        ImageDraw.Draw(canvas).text((8, 8), letter, fill=255, font=font)
        ink = canvas.crop(canvas.getbbox())
        width = max(2, min(8, round(8 * ink.width / ink.height)))
        small = ink.resize((width, 8), Image.Resampling.BOX)
        frame = Image.new("L", (8, 8), 0)
        frame.paste(small, ((8 - width) // 2, 0))
        values = np.asarray(frame, dtype=np.float64)
        out.append(like_a_digit(np.round(values * 255.0 / max(values.max(), 1.0))
                                .astype(np.uint8)))
    return out


# ----------------------------------------------------------------------------- the collection


def build(plan: Plan, seed: int) -> list[Row]:
    """The collection in its (shuffled) index order."""
    rng = np.random.default_rng(seed)
    _, _, images, labels = heldout_split()
    chosen = np.sort(rng.choice(len(images), size=plan.digits, replace=False))
    gray = upscale_rgb(images[chosen], SIDE, SIDE)[:, :, :, 0]
    labels = labels[chosen]
    splits = np.where(rng.permutation(plan.digits) < round(plan.digits * 2 / 3), "train", "test")
    rows = [Row(f"digit-{i:04d}.png", png(g), int(y), str(s), "digit")
            for i, (g, y, s) in enumerate(zip(gray, labels, splits, strict=True))]

    train = [i for i, r in enumerate(rows) if r.split == "train"]
    cross_total = plan.copies["cross-exact"] + plan.copies["cross-augmented"]
    cross_src = [int(i) for i in rng.choice(train, size=cross_total, replace=False)]
    rest = [i for i in range(plan.digits) if i not in set(cross_src)]
    same_total = sum(n for k, n in plan.copies.items() if not k.startswith("cross"))
    same_src = [int(i) for i in rng.choice(rest, size=same_total, replace=False)]
    planted: list[Row] = []
    sources = iter(same_src)
    for kind in ("exact", *AUGMENTATIONS):
        for _ in range(plan.copies[kind]):
            i = next(sources)
            data = rows[i].data if kind == "exact" else augment(kind, gray[i], rng)
            suffix = "jpg" if kind == "jpeg" else "png"
            planted.append(Row(f"copy-{kind}-{i:04d}.{suffix}", data, rows[i].label,
                               rows[i].split, kind, rows[i].name,
                               "" if kind == "exact" else kind))
    sources = iter(cross_src)
    for j in range(cross_total):
        i = next(sources)
        kind = "cross-exact" if j < plan.copies["cross-exact"] else "cross-augmented"
        aug = "" if kind == "cross-exact" else AUGMENTATIONS[j % len(AUGMENTATIONS)]
        data = rows[i].data if not aug else augment(aug, gray[i], rng)
        suffix = "jpg" if aug == "jpeg" else "png"
        planted.append(Row(f"copy-{kind}-{i:04d}.{suffix}", data, rows[i].label, "test",
                           kind, rows[i].name, aug))
    by_name = {r.name: r for r in rows}
    for copy in planted:
        by_name[copy.twin].twin = copy.name

    makers: dict[str, Callable[[int, np.random.Generator], list[npt.NDArray[np.uint8]]]] = {
        "photo": photo_crops, "noise": noise_images, "letter": letter_images}
    for kind in OUTSIDE_KINDS:
        for j, image in enumerate(makers[kind](plan.outside[kind], rng)):
            split = "train" if rng.random() < 2 / 3 else "test"
            planted.append(Row(f"outside-{kind}-{j:02d}.png", png(image),
                               int(rng.integers(0, 10)), split, kind))
    everything = rows + planted
    return [everything[i] for i in rng.permutation(len(everything))]


# ----------------------------------------------------------------------------- scoring


def score(rows: list[Row], folder: Path, timeout: float) -> dict[str, np.ndarray]:
    """Writes the files, scores them through a local server with embeddings; the table's
    columns in the order of ``rows`` plus ``embeddings``."""
    images = folder / "images"
    images.mkdir()
    items = []
    for r in rows:
        path = images / r.name
        path.write_bytes(r.data)
        items.append(Item(str(path), str(r.label), r.split))
    table = folder / "scores.parquet"
    server = Server().start(timeout)
    try:
        summary = score_items(items, [server.target], table, embeddings=True, progress=False)
    finally:
        server.stop()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} images failed: {summary.failures[:3]}")
    columns = read_table(table)
    where = {str(p): i for i, p in enumerate(columns["path"])}
    order = np.array([where[it.path] for it in items])
    out = {name: np.asarray(values)[order] for name, values in columns.items()}
    embeddings, missing = aligned([it.path for it in items], store_of(table))
    if missing:
        raise RuntimeError(f"{missing} rows have no embedding")
    out["embeddings"] = embeddings
    return out


# ----------------------------------------------------------------------------- truth and figures


def auroc(score: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Area under the ROC curve of ``score`` (higher = more positive); ties count half."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.arange(1, len(s) + 1)
    for value in np.unique(s[np.isfinite(s)]):  # average the ranks of ties
        tied = s == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    pos, neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class Truth:
    """Masks over the rows (index order)."""

    later: dict[str, npt.NDArray[np.bool_]]  # per copy kind: the later row of each pair
    members: dict[str, npt.NDArray[np.bool_]]  # per copy kind: both rows of each pair
    outside: dict[str, npt.NDArray[np.bool_]]  # per outside kind
    planted_pair: npt.NDArray[np.bool_]  # any row of any planted pair


def truth_of(rows: list[Row]) -> Truth:
    n = len(rows)
    index = {r.name: i for i, r in enumerate(rows)}
    later = {k: np.zeros(n, dtype=bool) for k in COPY_KINDS}
    members = {k: np.zeros(n, dtype=bool) for k in COPY_KINDS}
    for i, r in enumerate(rows):
        if r.kind in COPY_KINDS:
            j = index[r.twin]
            later[r.kind][max(i, j)] = True
            members[r.kind][[i, j]] = True
    outside = {k: np.array([r.kind == k for r in rows]) for k in OUTSIDE_KINDS}
    planted_pair = np.logical_or.reduce(list(members.values()))
    return Truth(later, members, outside, planted_pair)


def union(masks: dict[str, npt.NDArray[np.bool_]], kinds: tuple[str, ...]
          ) -> npt.NDArray[np.bool_]:
    return np.logical_or.reduce([masks[k] for k in kinds])


def flag_row(verdict: str, truth: str, variant: str, flagged: npt.NDArray[np.bool_],
             positive: npt.NDArray[np.bool_]) -> dict[str, object]:
    hits = int((flagged & positive).sum())
    return {"verdict": verdict, "planted truth": truth, "variant": variant,
            "planted": int(positive.sum()), "flagged": int(flagged.sum()), "hits": hits,
            "precision": hits / flagged.sum() if flagged.any() else float("nan"),
            "recall": hits / positive.sum() if positive.any() else float("nan")}


def figures(rows: list[Row], scored: dict[str, np.ndarray]) -> dict[str, object]:
    t = truth_of(rows)
    n = len(rows)
    classes = [c[2:] for c in scored if c.startswith("p_")]
    probabilities = np.stack([scored[f"p_{c}"] for c in classes], axis=1).astype(np.float64)
    labels = np.array([classes.index(str(r.label)) for r in rows], dtype=np.int64)
    started = time.perf_counter()
    verdicts = {variant: collection_verdicts(
        scored["embeddings"], probabilities=probabilities, labels=labels,
        splits=[r.split for r in rows], digests=[str(d) for d in scored["sha256"]],
        variant=variant).columns for variant in ("corrected", "fiftyone")}
    seconds = time.perf_counter() - started
    cols = verdicts["corrected"]

    def differs(name: str) -> bool:
        a, b = cols[name], verdicts["fiftyone"][name]
        return not np.array_equal(a, b, equal_nan=True)

    exact_kinds = ("exact", "cross-exact")
    outside = union(t.outside, OUTSIDE_KINDS)
    cross = union(t.members, ("cross-exact", "cross-augmented"))
    flags = [
        flag_row("exact_duplicate_of >= 0", "later row of exact pairs", "both",
                 cols["exact_duplicate_of"] >= 0, union(t.later, exact_kinds)),
        flag_row("near_duplicate_of >= 0 (FiftyOne, 0.2)", "later row of every copy pair",
                 "both", cols["near_duplicate_of"] >= 0, union(t.later, COPY_KINDS)),
        flag_row("is_near_duplicate (Datalab)", "both rows of every copy pair", "both",
                 cols["is_near_duplicate"] == 1, union(t.members, COPY_KINDS)),
        flag_row("is_outlier (Datalab)", "outside images", "both", cols["is_outlier"] == 1,
                 outside),
    ]
    for variant in ("corrected", "fiftyone") if differs("leak") else ("both",):
        leak = verdicts["corrected" if variant == "both" else variant]["leak"] == 1
        flags.append(flag_row("leak", "cross-split copies and originals", variant, leak, cross))

    kinds = []
    fo_flag = cols["near_duplicate_of"] >= 0
    dl_flag = cols["is_near_duplicate"] == 1
    leak_flag = cols["leak"] == 1
    copies = np.array([r.kind in COPY_KINDS for r in rows])
    for kind in COPY_KINDS:
        kinds.append({
            "kind": kind, "pairs": int(t.later[kind].sum()),
            "FiftyOne recall": float((fo_flag & t.later[kind]).sum() / t.later[kind].sum()),
            "Datalab recall": float((dl_flag & t.members[kind]).sum() / t.members[kind].sum()),
            **{f"leak recall, {who}": (float((leak_flag & mask).sum() / mask.sum())
                                       if kind.startswith("cross") else float("nan"))
               for who, mask in (("copies", copies & t.members[kind]),
                                 ("originals", ~copies & t.members[kind]))}})
    for kind in OUTSIDE_KINDS:
        mask = t.outside[kind]
        kinds.append({"kind": f"outside: {kind}", "pairs": int(mask.sum()),
                      "outlier recall": float(((cols["is_outlier"] == 1) & mask).sum()
                                              / mask.sum())})

    ranks = [{"score": "1 - outlier_score (Datalab)", "truth": "outside images",
              "variant": "both", "AUROC": auroc(1 - cols["outlier_score"], outside)}]
    for variant in ("corrected", "fiftyone") if differs("uniqueness") else ("both",):
        u = verdicts["corrected" if variant == "both" else variant]["uniqueness"]
        ranks.append({"score": "uniqueness", "truth": "outside images", "variant": variant,
                      "AUROC": auroc(u, outside)})
        ranks.append({"score": "1 - uniqueness", "truth": "rows of copy pairs",
                      "variant": variant, "AUROC": auroc(1 - u, t.planted_pair)})
    ranks.append({"score": "1 - near_duplicate_score (Datalab)", "truth": "rows of copy pairs",
                  "variant": "both",
                  "AUROC": auroc(1 - cols["near_duplicate_score"], t.planted_pair)})
    hardness = np.asarray(scored["hardness"], dtype=np.float64)
    ranks.append({"score": "hardness (entropy)", "truth": "outside images", "variant": "both",
                  "AUROC": auroc(hardness, outside)})
    ranks.append({"score": "per_sample_loss", "truth": "outside images", "variant": "both",
                  "AUROC": auroc(cols["per_sample_loss"], outside)})

    k = int(np.ceil(TOP_FRACTION * n))
    top = np.zeros(n, dtype=bool)
    top[np.argsort(-hardness, kind="stable")[:k]] = True
    kept = hard_candidates(hardness, is_outlier=cols["is_outlier"],
                           duplicate_of=cols["near_duplicate_of"],
                           exact_duplicate_of=cols["exact_duplicate_of"],
                           top_fraction=TOP_FRACTION)
    hard = {"K": k, "top-K outside": int((top & outside).sum()),
            "top-K copies (later row)": int((top & union(t.later, COPY_KINDS)).sum()),
            "hard_candidates": int(kept.sum()), "hard_candidates outside": int(
                (kept & outside).sum()),
            "hard_candidates per outside kind": {
                kind: f"{int((kept & m).sum())}/{int((top & m).sum())}"
                for kind, m in t.outside.items()}}
    without_duplicates = hard_candidates(hardness, is_outlier=cols["is_outlier"],
                                         top_fraction=TOP_FRACTION)
    hard["hard_candidates, outliers only"] = int(without_duplicates.sum())
    hard["hard_candidates, outliers only, outside"] = int((without_duplicates & outside).sum())

    sweep = []
    copies_later = union(t.later, COPY_KINDS)
    for threshold in THRESHOLDS:
        near = near_duplicates(scored["embeddings"], threshold=threshold)
        flagged = near.representative >= 0
        leak = leaks(near.representative, [r.split for r in rows])
        row = flag_row("near_duplicate_of >= 0", "later row of every copy pair", "both",
                       flagged, copies_later)
        leak_row = flag_row("leak", "", "corrected", leak, cross)
        sweep.append({"threshold": threshold, "flagged": row["flagged"],
                      "precision": row["precision"], "recall": row["recall"],
                      **{f"{kind} recall": float((flagged & t.later[kind]).sum()
                                                 / t.later[kind].sum())
                         for kind in ("shift", "brightness", "jpeg")},
                      "leak flagged": leak_row["flagged"], "leak precision": leak_row["precision"],
                      "leak recall": leak_row["recall"]})
    unplanted = ~(t.planted_pair | outside)
    stray = {"near_duplicate_of >= 0": int((fo_flag & unplanted).sum()),
             "is_near_duplicate": int((dl_flag & unplanted).sum()),
             "is_outlier": int(((cols["is_outlier"] == 1) & unplanted).sum()),
             "leak": int(((cols["leak"] == 1) & unplanted).sum())}
    # the cosine distance (centred, FiftyOne's scale) of each copy to its own original, and
    # of the unplanted digits to their nearest other row: what a threshold would have to split
    x = centred(scored["embeddings"]).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = {r.name: i for i, r in enumerate(rows)}
    distances: dict[str, list[float]] = {}
    for kind in COPY_KINDS:
        pairs = [(i, index[r.twin]) for i, r in enumerate(rows) if r.kind == kind]
        d = [1.0 - float(x[i] @ x[j]) for i, j in pairs]
        distances[f"{kind} (median, max)"] = [float(np.median(d)), float(np.max(d))]
    digit_rows = np.flatnonzero(unplanted)
    similarity = x[digit_rows] @ x.T
    similarity[np.arange(len(digit_rows)), digit_rows] = -np.inf
    nearest = 1.0 - similarity.max(axis=1)
    distances["unplanted digit to its nearest row (min, 5%, median)"] = [
        float(nearest.min()), float(np.percentile(nearest, 5)), float(np.median(nearest))]
    accuracy = float((np.asarray(scored["prediction"]).astype(str)
                      == np.array([str(r.label) for r in rows]))[
                          np.array([r.kind == "digit" for r in rows])].mean())
    return {"flags": flags, "kinds": kinds, "ranks": ranks, "hard": hard, "sweep": sweep,
            "unplanted_digit_flags": stray, "copy_distance": distances,
            "verdict_seconds": round(seconds, 3), "digit_accuracy": accuracy}


# ----------------------------------------------------------------------------- output


def num(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def composition(rows: list[Row]) -> dict[str, dict[str, int]]:
    """Rows per kind and split, digits first, then the copies, then the outside images."""
    out: dict[str, dict[str, int]] = {
        k: {"train": 0, "test": 0}
        for k in ("digit", *COPY_KINDS, *(f"outside: {o}" for o in OUTSIDE_KINDS))}
    for r in rows:
        kind = r.kind if r.kind == "digit" or r.kind in COPY_KINDS else f"outside: {r.kind}"
        out[kind][r.split] += 1
    return out


def plain(value: object) -> object:
    """JSON-safe: NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def markdown(comp: dict[str, dict[str, int]], result: dict[str, object]) -> str:
    parts = [format_table(["rows", "train", "test", "total"],
                          [[k, str(v["train"]), str(v["test"]), str(v["train"] + v["test"])]
                           for k, v in comp.items()], markdown=True)]
    flags = result["flags"]
    assert isinstance(flags, list)
    headers = ["verdict", "planted truth", "variant", "planted", "flagged", "hits",
               "precision", "recall"]
    parts.append(format_table(headers, [[num(f[h]) for h in headers] for f in flags],
                              markdown=True))
    kinds = result["kinds"]
    assert isinstance(kinds, list)
    headers = ["kind", "pairs", "FiftyOne recall", "Datalab recall", "leak recall, copies",
               "leak recall, originals", "outlier recall"]
    parts.append(format_table(headers, [[num(k.get(h, float("nan"))) for h in headers]
                                        for k in kinds], markdown=True))
    ranks = result["ranks"]
    assert isinstance(ranks, list)
    headers = ["score", "truth", "variant", "AUROC"]
    parts.append(format_table(headers, [[num(r[h]) for h in headers] for r in ranks],
                              markdown=True))
    sweep = result["sweep"]
    assert isinstance(sweep, list)
    headers = list(sweep[0])
    parts.append(format_table(headers, [[num(r[h], 3) for h in headers] for r in sweep],
                              markdown=True))
    hard = result["hard"]
    assert isinstance(hard, dict)
    parts.append(
        f"hardness alone: {hard['top-K outside']} of the top {hard['K']} hardest rows (10%) are "
        f"outside images ({hard['top-K copies (later row)']} are planted copies); "
        f"hard_candidates (top {hard['K']}, minus outliers and duplicates) keeps "
        f"{hard['hard_candidates']} rows, {hard['hard_candidates outside']} of them outside "
        f"images (kept/top-K per kind: {hard['hard_candidates per outside kind']}); minus "
        f"outliers only: {hard['hard_candidates, outliers only']} rows, "
        f"{hard['hard_candidates, outliers only, outside']} outside images")
    parts.append(f"unplanted digits flagged: {result['unplanted_digit_flags']}")
    distances = result["copy_distance"]
    assert isinstance(distances, dict)
    parts.append("cosine distance (centred embeddings) of each copy to its original: "
                 + "; ".join(f"{k} {' / '.join(num(v, 4) for v in vs)}"
                             for k, vs in distances.items()))
    parts.append(f"model accuracy on the held-out digits: {num(result['digit_accuracy'])}; "
                 f"verdicts (both variants) {result['verdict_seconds']} s")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="150 digits and fewer planted rows (195 in all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--output", type=Path, help="also write the markdown here")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    header = [*machine_header(PACKAGES), f"load average before: {load_average()}"]
    print("\n".join(header), flush=True)
    started = time.perf_counter()
    try:
        with time_limit(args.max_seconds), tempfile.TemporaryDirectory() as tmp:
            rows = build(plan, args.seed)
            scored = score(rows, Path(tmp), timeout=min(120.0, args.max_seconds))
            result = figures(rows, scored)
    except BenchTimeout as exc:
        print(f"benchmark stopped early: {exc}", file=sys.stderr)
        return 1
    comp = composition(rows)
    text = markdown(comp, result)
    footer = (f"load average after: {load_average()}; {len(rows)} rows, seed {args.seed}, "
              f"{time.perf_counter() - started:.1f} s in all")
    print(text)
    print(footer)
    if args.output:
        args.output.write_text("\n".join(header) + "\n\n" + text + "\n\n" + footer + "\n")
    if args.json:
        args.json.write_text(json.dumps(plain(
            {"rows": len(rows), "seed": args.seed, "quick": args.quick, "composition": comp,
             **result, "load_average_after": load_average()}), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
