"""Collection verdicts end to end against a real server: score-dir --embeddings over the digits
folder (with planted exact copies and a split list), the store against the SDK's embeddings, an
interrupted run resumed with the store still aligned, ``hardscore verdicts`` (copies, leaks)
and ``select`` with the strategies that use the verdicts."""

from __future__ import annotations

import asyncio
import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hardscore_client import ScoringClient, cli
from hardscore_client.collection import default_out
from hardscore_client.dataset import parts_of, read_list, score_items, score_items_async
from hardscore_client.embedding_store import aligned, read_store, store_of
from hardscore_client.tables import read_table

from digits_example import write_digits_example

COPIES = {"3": 0, "5": 1, "7": 2, "8": 3}
"""Class folder -> index (in sorted order) of the image copied within it."""
LEAKED = "5"
"""The class whose copy is put in the test split (its original is in train): a leak."""
BUDGET = 20
THRESHOLD = "0.005"
"""The digits model's 48-d embeddings cluster tightly: at FiftyOne's 0.2, 507 of the 544 rows
are near duplicates of another; at 0.005, 18 (the 4 copies among them)."""


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The digits folder with four exact copies (x-copy-*.png, sorting after their originals),
    and a list file: PATH, label, split (train; test for every 9th image and the leaked copy).
    Returns the folder, the list and copy -> original."""
    root = tmp_path_factory.mktemp("collection") / "digits"
    write_digits_example(root)
    pairs: dict[str, str] = {}
    for label, index in COPIES.items():
        original = sorted((root / label).glob("digit-*.png"))[index]
        copy = original.with_name("x-copy-" + original.name)
        shutil.copyfile(original, copy)
        pairs[str(copy)] = str(original)
    lines = []
    for i, path in enumerate(sorted(root.glob("*/*.png"))):
        split = "test" if i % 9 == 0 else "train"
        if str(path) in pairs.values():
            split = "train"
        if str(path) in pairs:
            split = "test" if path.parent.name == LEAKED else "train"
        lines.append(f"{path}\t{path.parent.name}\t{split}")
    listing = root.parent / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return root, listing, pairs


@pytest.fixture(scope="module")
def scored(planted, image_server, tmp_path_factory) -> Path:
    _, listing, _ = planted
    out = tmp_path_factory.mktemp("scores") / "scores.parquet"
    code = cli.main(["score-dir", "--from-list", str(listing), "--out", str(out),
                     "--server", image_server.target, "--embeddings", "--no-progress",
                     "--batch-size", "32"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def verdicts(scored) -> tuple[Path, dict[str, np.ndarray]]:
    assert cli.main(["verdicts", str(scored), "--near-duplicate-threshold", THRESHOLD]) == 0
    out = default_out(scored)
    assert out.name == "scores.verdicts.parquet"
    return out, read_table(out)


def test_store_equals_the_sdks_embeddings(scored, image_server) -> None:
    table = read_table(scored)
    assert len(table["path"]) == 544 and set(table["split"]) == {"train", "test"}
    assert all(len(d) == 64 for d in table["sha256"])
    values, missing = aligned(list(table["path"]), store_of(scored))
    assert missing == 0
    with ScoringClient(image_server.target) as client:
        direct = client.score_images([Path(p).read_bytes() for p in table["path"]],
                                     include_embeddings=True)
    assert direct.embeddings is not None
    np.testing.assert_allclose(values, direct.embeddings, rtol=0, atol=1e-5)


def test_interrupted_and_resumed_store_stays_aligned(planted, image_server, tmp_path) -> None:
    _, listing, _ = planted
    items, _ = read_list(listing)
    out = tmp_path / "scores.parquet"

    async def interrupted() -> None:
        task = asyncio.create_task(score_items_async(
            items, [image_server.target], out, batch_size=8, concurrency=1, checkpoint_s=0.0,
            progress=False, embeddings=True))
        while not any(parts_of(out).glob("part-*")):  # a checkpoint was written
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    saved = list(read_table(out)["path"])
    assert 0 < len(saved) < len(items)
    stored, _ = read_store(store_of(out))
    assert set(stored) >= set(saved)  # a part is written before the table that lists it
    summary = score_items(items, [image_server.target], out, progress=False, embeddings=True)
    assert summary.already_scored == len(saved) and summary.scored == len(items) - len(saved)
    paths = list(read_table(out)["path"])
    stored, values = read_store(store_of(out))
    counts = Counter(stored)
    assert len(paths) == len(items) and all(counts[p] == 1 for p in paths)
    assert set(counts) == set(paths) and np.isfinite(values).all()


def test_verdicts_find_the_copies_and_the_leak(planted, verdicts) -> None:
    _, _, pairs = planted
    _, table = verdicts
    row = {p: i for i, p in enumerate(table["path"])}
    near = table["near_duplicate_of"]
    for copy, original in pairs.items():
        c, o = row[copy], row[original]
        assert table["exact_duplicate_of"][c] == o
        assert table["exact_duplicate_of"][o] == -1
        # The copy's embedding is the original's: it maps to the original, or to the kept row
        # the original itself maps to.
        assert near[c] == (o if near[o] < 0 else near[o])
        if near[o] < 0:
            assert table["near_duplicate_distance"][c] == pytest.approx(0.0, abs=1e-6)
        assert table["is_near_duplicate"][c] == 1
        leaked = Path(copy).parent.name == LEAKED
        assert table["leak"][c] == int(leaked)
        if leaked:
            assert table["leak"][near[c]] == 1
    assert (table["exact_duplicate_of"] >= 0).sum() == len(pairs)
    for name in ("uniqueness", "representativeness", "outlier_score", "knn_label_quality",
                 "per_sample_loss", "focal_weight"):
        assert np.isfinite(table[name]).all(), name
    assert (table["uniqueness"] >= 0).all() and (table["uniqueness"] <= 1).all()


def test_verdicts_without_embeddings_says_how_to_get_them(scored, tmp_path, capsys) -> None:
    bare = tmp_path / "bare.parquet"
    shutil.copyfile(scored, bare)
    assert cli.main(["verdicts", str(bare)]) == 1
    err = capsys.readouterr().err
    assert "score-dir" in err and "--embeddings" in err


@pytest.mark.parametrize("strategy", ["hard-clean", "diverse-hard", "activelab"])
def test_select_with_the_verdicts(verdicts, strategy, tmp_path) -> None:
    path, _ = verdicts
    out = tmp_path / "queue"
    assert cli.main(["select", str(path), "--budget", str(BUDGET), "--strategy", strategy,
                     "--out", str(out)]) == 0
    with (tmp_path / "queue.csv").open() as f:
        records = list(csv.DictReader(f))
    assert len(records) == BUDGET and len({r["path"] for r in records}) == BUDGET
    if strategy == "activelab":
        scores = [float(r["activelab_score"]) for r in records]
        assert scores == sorted(scores)
        return
    for r in records:  # no outlier, no copy of a kept row
        assert (r["is_outlier"], r["near_duplicate_of"], r["exact_duplicate_of"]) == (
            "0", "-1", "-1"), r
    if strategy == "hard-clean":
        hardness = [float(r["hardness"]) for r in records]
        assert hardness == sorted(hardness, reverse=True)


def test_a_loose_threshold_is_called_so_with_a_relative_one_suggested(scored, tmp_path,
                                                                      capsys) -> None:
    """FiftyOne's default 0.2 marks most of the digits as near duplicates of each other: the
    summary says so and suggests Datalab's relative rule, which leaves the planted copies."""
    out = tmp_path / "loose.parquet"
    capsys.readouterr()
    assert cli.main(["verdicts", str(scored), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "at --near-duplicate-threshold 0.2: too loose" in warning
    suggested = float(warning.rsplit("--near-duplicate-threshold ", 1)[1])
    assert 0 < suggested < 0.2
    tight = tmp_path / "tight.parquet"
    assert cli.main(["verdicts", str(scored), "--out", str(tight),
                     "--near-duplicate-threshold", str(suggested)]) == 0
    assert "warning:" not in capsys.readouterr().err
    columns = read_table(tight)
    marked = int((np.asarray(columns["near_duplicate_of"], dtype=np.int64) >= 0).sum())
    assert len(COPIES) <= marked <= 0.2 * len(columns["path"])
