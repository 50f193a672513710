"""The data-set workflow end to end against a real server: score-dir (class folders, flat
folders, lists, several servers, resuming, bad files), select, label-issues and the report."""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.dataset import (
    RETRY_REASONS,
    Item,
    parts_of,
    path_from_entry,
    read_list,
    scan_folder,
    score_dir,
    score_items,
    table_columns,
)
from hardscore_client.errors import InputError
from hardscore_client.report import write_report
from hardscore_client.selection import CSV_COLUMNS, per_class_quota, select, write_queue
from hardscore_client.tables import read_table
from hardscore_wire.scores import SCORE_NAMES

from digits_example import TRUTH_FILE, write_digits_example

CLASSES = [str(k) for k in range(10)]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """The 540 held-out digits in class folders (54 in a wrong one), plus an undecodable PNG, a
    broken symlink and a text file."""
    root = tmp_path_factory.mktemp("data") / "digits"
    write_digits_example(root)
    (root / "3" / "broken.png").write_bytes(b"this is not a png")
    (root / "4" / "gone.png").symlink_to(root / "4" / "does-not-exist.png")
    (root / "5" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def scored(digits_folder, image_server, tmp_path_factory):
    """The folder scored into Parquet over two --server entries (same server, two channels)."""
    out = tmp_path_factory.mktemp("scores") / "scores.parquet"
    summary = score_dir(digits_folder, [image_server.target, image_server.target], out,
                        batch_size=16, concurrency=3, progress=False)
    return summary, out


def test_scan_folder_layouts(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "deep").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("cat/a.jpg", "cat/deep/b.PNG", "c.webp", ".hidden/d.png", "cat/e.txt"):
        (tmp_path / name).write_bytes(b"x")
    items = scan_folder(tmp_path)
    assert items == [
        Item(str(tmp_path / "c.webp"), ""),
        Item(str(tmp_path / "cat" / "a.jpg"), "cat"),
        Item(str(tmp_path / "cat" / "deep" / "b.PNG"), "cat"),
    ]
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "missing")


def test_score_dir_class_folders_two_servers(scored, digits_folder):
    summary, out = scored
    assert summary.found == 542 and summary.scored == 540 and summary.already_scored == 0
    reasons = {Path(f.path).name: f.reason for f in summary.failures}
    assert reasons == {"broken.png": "decode", "gone.png": "read"}
    assert all(n > 0 for n in summary.per_server.values()) and len(summary.per_server) == 2
    table = read_table(out)
    assert list(table) == table_columns(CLASSES)
    # Every image found is a row: the two that failed with their reason and no scores.
    assert len(table["path"]) == 542
    assert list(table["path"]) == sorted(table["path"])
    failed = table["error"] != ""
    assert {Path(p).name: (e, bool(m)) for p, e, m in zip(
        table["path"][failed], table["error"][failed], table["error_message"][failed],
        strict=True)} == {"broken.png": ("decode", True), "gone.png": ("read", True)}
    assert set(table["prediction"][failed]) == {""}
    assert np.isnan(table["hardness"][failed]).all() and (table["predicted_class"][failed]
                                                          == -1).all()
    assert table["sha256"][failed].tolist() == [
        "" if Path(p).name == "gone.png" else __import__("hashlib").sha256(
            Path(p).read_bytes()).hexdigest() for p in table["path"][failed]]
    assert set(table["error_message"][~failed]) == {""}
    columns = {k: v[~failed] for k, v in table.items()}
    assert len(columns["path"]) == 540
    # What analyses the table (select, label-issues, report, verdicts) leaves them out.
    loaded = ScoreTable.load(out)
    assert len(loaded) == 540 and loaded.failed == 2 and np.isfinite(loaded.probabilities).all()
    assert all(Path(p).parent.name == lab for p, lab in zip(columns["path"], columns["label"],
                                                              strict=True))
    probs = np.stack([columns[f"p_{c}"] for c in CLASSES], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(columns["predicted_class"], probs.argmax(axis=1))
    assert list(columns["prediction"]) == [CLASSES[i] for i in columns["predicted_class"]]
    np.testing.assert_array_equal(columns["given_label"], [int(v) for v in columns["label"]])
    entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=1)
    np.testing.assert_allclose(columns["hardness"], entropy, atol=1e-4)
    # The embedded model is right on every held-out image: it disagrees exactly with the
    # corrupted labels.
    with (digits_folder / TRUTH_FILE).open() as f:
        truth = {str(digits_folder / r["file"]): int(r["true_label"]) for r in csv.DictReader(f)}
    assert [truth[p] for p in columns["path"]] == list(columns["predicted_class"])


def test_resume_skips_scored_paths_and_csv_roundtrip(digits_folder, image_server, tmp_path):
    folder = tmp_path / "part"
    shutil.copytree(digits_folder / "7", folder / "7")
    out = tmp_path / "scores.csv"
    first = score_dir(folder, [image_server.target], out, progress=False)
    assert first.scored == 58 and first.already_scored == 0
    before = read_table(out)
    shutil.copytree(digits_folder / "1", folder / "1")
    second = score_dir(folder, [image_server.target], out, progress=False, checkpoint_s=0.0)
    assert second.scored == 56 and second.already_scored == 58
    after = read_table(out)
    assert len(after["path"]) == 114
    # Earlier rows are kept exactly (labels that look like numbers stay text).
    old = {p: i for i, p in enumerate(before["path"])}
    for i, path in enumerate(after["path"]):
        if path in old:
            for name in table_columns(CLASSES):
                a, b = after[name][i], before[name][old[path]]
                assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    assert set(after["label"]) == {"1", "7"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    third = score_dir(folder, [image_server.target], out, progress=False)
    assert third.scored == 0 and third.already_scored == 114


def test_interrupted_run_keeps_its_rows_and_resumes(digits_folder, image_server, tmp_path):
    """Cancelled mid-run (as by Ctrl-C): the rows scored so far are saved; the next run scores
    only the rest."""
    import asyncio

    from hardscore_client.dataset import score_items_async

    items = scan_folder(digits_folder)
    out = tmp_path / "scores.parquet"

    async def interrupted() -> None:
        task = asyncio.create_task(score_items_async(
            items, [image_server.target], out, batch_size=8, concurrency=1, checkpoint_s=0.0,
            progress=False))
        while not any(parts_of(out).glob("part-*.parquet")):  # a checkpoint was written
            await asyncio.sleep(0.005)
        assert not out.exists()  # parts only, until the run ends
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    saved = read_table(out)  # merged when it was cancelled, the parts removed
    assert not parts_of(out).exists()
    assert 0 < len(saved["path"]) < 542
    retried = sum(e in RETRY_REASONS for e in saved["error"])
    kept = len(saved["path"]) - retried
    summary = score_dir(digits_folder, [image_server.target], out, progress=False)
    assert summary.already_scored + summary.already_failed == kept
    assert summary.retried == retried
    assert summary.scored + len(summary.failures) == 542 - kept
    table = read_table(out)
    assert len(table["path"]) == len(set(table["path"])) == 542  # none twice, none missing
    assert (table["error"] != "").sum() == 2


def test_killed_run_leaves_parts_the_next_run_skips(digits_folder, image_server, tmp_path):
    """A run killed before it merged (SIGKILL: no finally) leaves only parts; the next run
    reads them with the table, scores the rest, merges, and removes them."""
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "hardscore_client.cli", "score-dir", str(digits_folder),
               "--server", image_server.target, "--out", str(out), "--batch-size", "4",
               "--concurrency", "1", "--checkpoint-s", "0", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (len(list(parts_of(out).glob("part-*.csv"))) < 3 and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists()
    parts = sorted(parts_of(out).glob("part-*.csv"))
    in_parts = {p for part in parts for p in read_table(part)["path"]}
    assert len(parts) >= 3 and in_parts
    summary = score_dir(digits_folder, [image_server.target], out, progress=False)
    assert summary.already_scored + summary.already_failed + summary.retried == len(in_parts)
    assert summary.scored + len(summary.failures) == 542 - len(in_parts) + summary.retried
    table = read_table(out)
    assert len(table["path"]) == len(set(table["path"])) == 542
    assert not parts_of(out).exists()


def test_ctrl_c_saves_the_rows_and_says_how_to_resume(digits_folder, image_server, tmp_path):
    """SIGINT in the middle of ``hardscore score-dir``: one line naming the rows saved, exit
    130; the same command again scores the rest."""
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "hardscore_client.cli", "score-dir", str(digits_folder),
               "--server", image_server.target, "--out", str(out), "--batch-size", "1",
               "--concurrency", "1", "--checkpoint-s", "0", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not any(parts_of(out).glob("part-*.csv")) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)  # the first part is written: it is scoring
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    table = read_table(out)
    saved = len(table["path"])
    assert 0 < saved < 542
    lines = err.splitlines()
    assert lines[0] == "found 542 images (542 with a given label)"
    assert lines[-1] == (f"interrupted: saved {saved} rows to {out}, run the same command "
                         "again to resume")
    assert all(line.startswith("failed ") for line in lines[1:-1])  # broken.png, gone.png
    kept = saved - sum(e in RETRY_REASONS for e in table["error"])

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 4, resumed.stderr  # broken.png and gone.png failed
    assert resumed.stderr.splitlines()[-1].endswith(
        f"; {kept} already in {out}; 2 failed (rows with their reason in 'error')")
    assert len(read_table(out)["path"]) == 542


def test_flat_folder_and_from_list(digits_folder, image_server, tmp_path, monkeypatch, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    pngs = sorted((digits_folder / "2").glob("*.png"))[:5]
    for p in pngs:
        shutil.copy(p, flat / p.name)
    out = tmp_path / "flat.jsonl"
    summary = score_dir(flat, [image_server.target], out, progress=False)
    assert summary.scored == 5
    columns = read_table(out)
    assert set(columns["label"]) == {""}
    assert (columns["given_label"] == -1).all() and np.isnan(columns["label_issue_score"]).all()

    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([
        "# a comment", "",
        f"flat/{pngs[0].name}",
        f"{(flat / pngs[1].name).as_uri()}\t2",
        f"{flat / pngs[2].name}\t3",
        "https://example.com/x.png",
        "flat/missing.png",
    ]) + "\n")
    items, failures = read_list(listing)
    assert [it.label for it in items] == ["", "2", "3", ""]
    assert items[0].path == str(flat / pngs[0].name)
    assert [f.reason for f in failures] == ["uri"]
    out = tmp_path / "listed.csv"
    summary = score_items(items, [image_server.target], out, progress=False, failures=failures)
    assert summary.scored == 3
    assert sorted(f.reason for f in summary.failures) == ["read", "uri"]
    columns = read_table(out)
    assert sorted(zip(columns["error"], columns["label"], strict=True)) == [
        ("", ""), ("", "2"), ("", "3"), ("read", ""), ("uri", "")]
    assert path_from_entry("file:///tmp/a%20b.png") == "/tmp/a b.png"
    capsys.readouterr()
    # some failed (the https:// entry, the missing file), the others scored: exit 4
    assert cli.main(["score-dir", "--from-list", str(listing), "--server", image_server.target,
                     "--out", str(tmp_path / "cli.csv"), "--no-progress"]) == 4
    table = read_table(tmp_path / "cli.csv")
    assert sorted(zip(table["error"], table["path"], strict=True)) == [
        ("", str(flat / pngs[i].name)) for i in range(3)] + [
        ("read", str(flat / "missing.png")), ("uri", "https://example.com/x.png")]
    err = capsys.readouterr().err.splitlines()
    assert "failed https://example.com/x.png: uri: https://example.com/x.png: only local " \
           "paths and file:// URIs are supported" in err
    assert err[-1].startswith("scored 3 images in ")
    assert err[-1].endswith(f"; 0 already in {tmp_path / 'cli.csv'}; 2 failed (rows with "
                            "their reason in 'error')")
    # again: the 3 and the permanent failure (uri) are kept, the read failure is tried again
    assert cli.main(["score-dir", "--from-list", str(listing), "--server", image_server.target,
                     "--out", str(tmp_path / "cli.csv"), "--no-progress"]) == 4
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err if line.startswith("failed ")] == [
        "failed https", f"failed {flat / 'missing.png'}"]
    assert err[-1].startswith("scored 0 images in ")
    assert err[-1].endswith(f"; 4 already in {tmp_path / 'cli.csv'}; 2 failed (rows with "
                            "their reason in 'error')")
    assert len(read_table(tmp_path / "cli.csv")["path"]) == 5
    # none scored: exit 1, the two rows written
    listing.write_text("flat/missing.png\nflat/gone.png\n")
    assert cli.main(["score-dir", "--from-list", str(listing), "--server", image_server.target,
                     "--out", str(tmp_path / "none.csv"), "--no-progress"]) == 1
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "; 2 failed (rows with their reason in 'error')")
    assert list(read_table(tmp_path / "none.csv")["error"]) == ["read", "read"]


def test_unknown_folder_labels_are_refused(image_server, digits_folder, tmp_path):
    shutil.copytree(digits_folder / "0", tmp_path / "zero")
    with pytest.raises(InputError, match="'zero' \\(52 images\\)"):
        score_dir(tmp_path, [image_server.target], tmp_path / "s.csv", progress=False)
    summary = score_dir(tmp_path, [image_server.target], tmp_path / "s.csv", progress=False,
                        unlabelled=True)
    assert summary.scored == 52


def test_dead_server_work_goes_to_the_live_one(image_server, digits_folder, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "s.csv"
    summary = score_dir(digits_folder / "8", [dead, image_server.target], out,
                        progress=False, timeout=2.0)
    assert summary.scored == 50
    assert summary.per_server == {f"1:{image_server.target}": 50}


def test_per_class_quota():
    quota = per_class_quota(np.array([1.0, 2.0, 1.0]), np.array([10, 3, 10]), 10)
    assert quota.tolist() == [4, 3, 3] or quota.tolist() == [3, 3, 4]
    assert per_class_quota(np.array([1.0, 3.0]), np.array([100, 100]), 8).tolist() == [2, 6]
    assert per_class_quota(np.array([0.0, 0.0]), np.array([5, 1]), 4).tolist() == [3, 1]
    assert per_class_quota(np.array([1.0, 1.0]), np.array([2, 1]), 10).tolist() == [2, 1]


def test_select_strategies(scored, tmp_path):
    _, out = scored
    analysis = analyse(ScoreTable.load(out))
    t = analysis.table
    hardness, margin = t.score("hardness"), t.score("margin")

    rows = select(analysis, 25, "hardest")
    assert len(rows) == 25 and hardness[rows[-1]] >= np.sort(hardness)[-25]
    assert (np.diff(hardness[rows]) <= 0).all()
    rows = select(analysis, 25, "margin")
    assert (np.diff(margin[rows]) >= 0).all() and margin[rows[-1]] <= np.sort(margin)[24]

    rows = select(analysis, 40, "per-class")
    assert len(rows) == 40 and len(set(rows.tolist())) == 40
    per_class = np.bincount(t.labels[rows], minlength=10)
    means = np.array([hardness[t.labels == k].mean() for k in range(10)])
    expected = 40 * means / means.sum()
    assert np.abs(per_class - expected).max() < 1.0 + 1e-9

    rows = select(analysis, 70, "mistakes")
    n_flagged = int(analysis.flagged.sum())
    assert 40 <= n_flagged < 70
    assert analysis.flagged[rows[:n_flagged]].all() and not analysis.flagged[rows[n_flagged:]].any()
    score = t.score("label_issue_score")
    assert (np.diff(score[rows[:n_flagged]]) <= 0).all()

    written = write_queue(analysis, rows[:10], "mistakes", tmp_path / "queue.csv",
                          label_studio_json=True)
    assert written.csv == tmp_path / "queue.csv" and written.json == tmp_path / "queue.json"
    with written.csv.open() as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == list(CSV_COLUMNS) and len(records) == 10
    assert records[0]["rank"] == "1" and records[0]["flagged_label_issue"] == "True"
    assert records[0]["given_label"] != records[0]["predicted_label"]
    tasks = json.loads(written.json.read_text())
    assert len(tasks) == 10
    first = tasks[0]
    assert first["data"]["image"] == Path(records[0]["path"]).as_uri()
    assert first["data"]["path"] == records[0]["path"]
    result = first["predictions"][0]["result"][0]
    assert result["value"]["choices"] == [records[0]["predicted_label"]]
    assert (result["from_name"], result["to_name"], result["type"]) == ("label", "image",
                                                                        "choices")


def test_label_issues_on_scored_folder(scored, digits_folder):
    _, out = scored
    analysis = analyse(ScoreTable.load(out))
    assert analysis.issues is not None
    with (digits_folder / TRUTH_FILE).open() as f:
        corrupted = {str(digits_folder / r["file"]) for r in csv.DictReader(f)
                     if r["corrupted"] == "1"}
    flagged = {analysis.table.paths[i] for i in np.flatnonzero(analysis.flagged)}
    assert len(flagged & corrupted) >= 0.9 * len(corrupted)
    assert len(flagged - corrupted) <= 2
    stats = analysis.class_stats()
    assert sum(s.count for s in stats) == 540
    assert sum(s.flagged for s in stats) == len(flagged)


def test_cli_score_dir_select_report_label_issues(digits_folder, image_server, tmp_path,
                                                  capsys):
    out = tmp_path / "scores.csv"
    shutil.copytree(digits_folder / "9", tmp_path / "data" / "9")
    assert cli.main(["score-dir", str(tmp_path / "data"), "--server", image_server.target,
                     "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "scored 53 images" in err and "found 53 images (53 with a given label)" in err
    assert cli.main(["select", str(out), "--budget", "5", "--strategy", "hardest",
                     "--out", str(tmp_path / "q")]) == 0
    assert not (tmp_path / "q.json").exists()  # the Label Studio tasks only when asked
    assert cli.main(["select", str(out), "--budget", "5", "--strategy", "hardest",
                     "--out", str(tmp_path / "q"), "--label-studio-json"]) == 0
    assert len(json.loads((tmp_path / "q.json").read_text())) == 5
    with pytest.raises(SystemExit, match="at least two classes"):
        cli.main(["label-issues", str(out)])  # one class only
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report" / "index.html")


def test_cli_label_issues(scored, capsys):
    _, out = scored
    assert cli.main(["label-issues", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 540
    assert len(summary["classes"]) == 10 and len(summary["flagged_paths"]) == summary["flagged"]
    assert 0.85 < summary["label_health_score"] < 0.95
    assert cli.main(["label-issues", str(out), "-k", "3"]) == 0
    text = capsys.readouterr().out
    assert "estimated label issues" in text and "most likely label mistakes" in text


def test_report_folder(scored, tmp_path):
    _, out = scored
    index = write_report(ScoreTable.load(out), tmp_path / "report", source="scores.parquet")
    page = index.read_text()
    assert page.count("<tr") == 11  # header + 10 classes
    for gallery in ("hardest", "easiest", "mistakes-0"):
        assert f'id="{gallery}"' in page
    for plot in ("hardness", "classes", "joint"):
        assert (tmp_path / "report" / "plots" / f"{plot}.png").stat().st_size > 5000
    thumbs = list((tmp_path / "report" / "thumbs").glob("*.png"))
    assert len(thumbs) >= 36
    assert "http://" not in page and "https://" not in page  # nothing fetched: opens offline
    # Every image reference is a file inside the folder.
    import re

    for src in re.findall(r'src="([^"]+)"', page):
        assert (tmp_path / "report" / src).is_file(), src
    assert "out-of-sample" in page


def test_report_without_probabilities_or_labels(tmp_path):
    """A score-images style table (no p_ columns, index labels) still gives a report."""
    from hardscore_client.tables import write_table

    n = 12
    rng = np.random.default_rng(0)
    columns = {"row": np.arange(n), "id": np.array([f"img{i}.png" for i in range(n)],
                                                     dtype=object),
               "predicted_class": rng.integers(0, 3, n), "hardness": rng.random(n),
               "confidence": rng.random(n), "margin": rng.random(n)}
    write_table(tmp_path / "t.csv", columns)
    table = ScoreTable.load(tmp_path / "t.csv")
    assert table.class_names == ["0", "1", "2"] and not table.labelled.any()
    page = write_report(table, tmp_path / "r").read_text()
    assert 'id="class-table"' in page and "no image" in page
    assert set(SCORE_NAMES) >= {"hardness"}
