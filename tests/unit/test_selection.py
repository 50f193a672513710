"""``hardscore select`` on a generated score table: the queue of each strategy against a plain
reference implementation, the printed top 10, the CSV at full precision, and OUT.json only on
request."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.label_quality import METHODS
from hardscore_client.selection import (
    CSV_COLUMNS,
    file_uri,
    needed_column,
    per_class_quota,
    select,
    write_queue,
)
from hardscore_client.tables import read_table, write_table
from hardscore_client.workflow_cli import score_texts

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def score_table(n: int = 3000, seed: int = 5) -> dict[str, np.ndarray]:
    """A score-dir-like table: path, label (5% empty), prediction, the scores computed in float64
    from logits, float32-rounded p_<class> columns as the server returns them; some tied and
    some missing hardness values."""
    rng = np.random.default_rng(seed)
    k = len(NAMES)
    truth = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 1.5 + rng.gamma(2.0, 2.0, (n, 1)) * np.eye(k)[truth]
    labels = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), truth)
    labels[rng.random(n) < 0.05] = -1
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, -2:]
    hardness = -(probs * np.log(probs)).sum(axis=1)
    hardness[rng.choice(n, 40, replace=False)] = 1.0  # ties: the order keeps the row order
    hardness[rng.choice(n, 10, replace=False)] = np.nan  # never selected by hardness
    labelled = labels >= 0
    given = probs[np.arange(n), np.maximum(labels, 0)]
    return {
        "path": np.array([f"/data/{NAMES[t]}/img {i:05d}.png" for i, t in enumerate(truth)],
                         dtype=object),
        "label": np.array([NAMES[y] if y >= 0 else "" for y in labels], dtype=object),
        "prediction": np.array([NAMES[c] for c in probs.argmax(axis=1)], dtype=object),
        "predicted_class": probs.argmax(axis=1),
        "confidence": top2[:, 1], "margin": top2[:, 1] - top2[:, 0], "hardness": hardness,
        "given_label": labels, "mistakenness": rng.random(n),
        "label_issue_score": np.where(labelled, 1.0 - given, np.nan),
        **{f"p_{c}": probs[:, j].astype(np.float32).astype(np.float64)
           for j, c in enumerate(NAMES)},
    }


def reference(table: ScoreTable, method: str, adjust: bool, strategy: str,
              budget: int) -> list[int]:
    """The queue, spelled out row by row (Python sorts; ties keep the row order)."""
    analysis = analyse(table, method, adjust)
    n = len(table)
    hardness, margin = table.score("hardness"), table.score("margin")

    def by(values: np.ndarray, rows: list[int]) -> list[int]:
        return sorted((i for i in rows if math.isfinite(values[i])), key=lambda i: -values[i])

    if strategy == "hardest":
        return by(hardness, list(range(n)))[:budget]
    if strategy == "margin":
        return by(-margin, list(range(n)))[:budget]
    if strategy == "per-class":
        groups: dict[int, list[int]] = {}
        for i in range(n):
            c = int(table.labels[i]) if table.labels[i] >= 0 else int(table.predicted[i])
            if math.isfinite(hardness[i]) and c >= 0:
                groups.setdefault(c, []).append(i)
        k = len(table.class_names)
        sizes = np.array([len(groups.get(c, [])) for c in range(k)])
        means = np.array([np.mean(hardness[groups[c]]) if c in groups else 0.0
                          for c in range(k)])
        quota = per_class_quota(means, sizes, budget)
        picked = [i for c in range(k) for i in by(hardness, groups.get(c, []))[:quota[c]]]
        return sorted(picked, key=lambda i: -hardness[i])
    if method == "self_confidence" and not adjust:
        score = table.score("label_issue_score")
    else:
        score = 1.0 - analysis.label_quality()
    labelled = [i for i in range(n) if table.labels[i] >= 0]
    flagged = [i for i in labelled if analysis.flagged[i]]
    return (by(score, flagged) + by(score, [i for i in labelled if not analysis.flagged[i]])
            )[:budget]


def queue_paths(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [r["path"] for r in csv.DictReader(f)]


RANKINGS = [("self_confidence", False), ("normalized_margin", False),
            ("confidence_weighted_entropy", True)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_strategy_selects_as_the_reference(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    scores = tmp_path / f"scores{suffix}"
    write_table(scores, score_table())
    table = ScoreTable.load(scores)
    paths = table.paths
    cases = [(s, "self_confidence", False) for s in ("hardest", "margin", "per-class")]
    cases += [("mistakes", m, a) for m, a in RANKINGS]
    for strategy, method, adjust in cases:
        for budget in (0, 7, 400, 5000):
            expected = reference(table, method, adjust, strategy, budget)
            rows = select(analyse(table, method, adjust), budget, strategy)
            assert rows.tolist() == expected, (strategy, method, adjust, budget)
        out = tmp_path / f"q-{strategy}-{method}"
        assert cli.main(["select", str(scores), "--budget", "400", "--strategy", strategy,
                         "--method", method, *(["--adjust-pred-probs"] if adjust else []),
                         "--out", str(out)]) == 0
        assert queue_paths(out.with_suffix(".csv")) == [
            paths[i] for i in reference(table, method, adjust, strategy, 400)]


def test_select_reads_only_the_columns_it_needs(tmp_path):
    scores = tmp_path / "scores.csv"
    write_table(scores, score_table(200))
    every = read_table(scores)
    needed = read_table(scores, needed_column)
    assert "mistakenness" in every and "mistakenness" not in needed
    assert list(needed) == [c for c in every if needed_column(c)]
    for name, values in needed.items():
        assert values.dtype == every[name].dtype
        np.testing.assert_array_equal(values, every[name])


def test_the_csv_holds_every_score_at_full_precision(tmp_path):
    scores = tmp_path / "scores.csv"
    write_table(scores, score_table(500))
    analysis = analyse(ScoreTable.load(scores), "normalized_margin", True)
    rows = select(analysis, 300, "mistakes")
    written = write_queue(analysis, rows, "mistakes", tmp_path / "queue")
    with written.csv.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == list(CSV_COLUMNS) and len(records) == 300
    t = analysis.table
    expected = {"confidence": t.score("confidence"), "margin": t.score("margin"),
                "hardness": t.score("hardness"), "label_issue_score": analysis.issue_score(),
                "label_quality": analysis.label_quality()}
    for name, values in expected.items():
        cells = [float(r[name]) if r[name] else math.nan for r in records]
        np.testing.assert_array_equal(cells, values[rows])  # exact, NaN as an empty cell
    assert any(len(r["label_quality"]) > 12 for r in records)  # not rounded to 6 decimals
    assert records[0]["uri"] == Path(records[0]["path"]).as_uri()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tables_round_trip_float64_exactly(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.random(500), 1.0 - rng.random(100) * 1e-12,
                             rng.random(100) * 1e-300, [0.1, 1 / 3, 5e-324, 1.0, math.nan]])
    path = tmp_path / f"t{suffix}"
    write_table(path, {"label_quality": values, "p_cat": values[::-1].copy()})
    back = read_table(path)
    np.testing.assert_array_equal(back["label_quality"], values)
    np.testing.assert_array_equal(back["p_cat"], values[::-1])


def test_label_studio_json_only_when_asked(tmp_path, capsys):
    scores = tmp_path / "scores.csv"
    write_table(scores, score_table(300))
    out = tmp_path / "queue"
    assert cli.main(["select", str(scores), "--budget", "20", "--out", str(out)]) == 0
    assert (tmp_path / "queue.csv").exists() and not (tmp_path / "queue.json").exists()
    assert "queue.json" not in capsys.readouterr().err

    assert cli.main(["select", str(scores), "--budget", "20", "--strategy", "mistakes",
                     "--out", str(out), "--label-studio-json"]) == 0
    assert "queue.json" in capsys.readouterr().err
    tasks = json.loads((tmp_path / "queue.json").read_text())
    paths = queue_paths(tmp_path / "queue.csv")
    assert [t["data"]["path"] for t in tasks] == paths and len(tasks) == 20
    first = tasks[0]
    assert first["data"]["image"] == Path(paths[0]).as_uri()
    assert first["predictions"][0]["score"] == first["data"]["confidence"]
    assert first["predictions"][0]["result"][0]["value"]["choices"] == [
        first["data"]["predicted_label"]]

    # a queue written without it says that the JSON beside it is an old one
    assert cli.main(["select", str(scores), "--budget", "5", "--out", str(out)]) == 0
    assert "queue.json is from an earlier run" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "queue.json").read_text())) == 20  # left as it was

    analysis = analyse(ScoreTable.load(scores))
    written = write_queue(analysis, select(analysis, 0, "hardest"), "hardest",
                          tmp_path / "empty.csv", label_studio_json=True)
    assert written.rows == 0 and written.json is not None
    assert json.loads(written.json.read_text()) == []
    assert write_queue(analysis, np.arange(3), "hardest", tmp_path / "x").json is None


def test_the_printed_top_10_tells_close_scores_apart(tmp_path, capsys):
    columns = score_table(300)
    labelled = np.flatnonzero(columns["label"] != "")
    top = labelled[:10]
    issue = columns["label_issue_score"]
    issue[labelled] = np.minimum(issue[labelled], 0.99)
    issue[top] = 1.0 - np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) * 1e-7  # "1.000" at .3f each
    scores = tmp_path / "scores.csv"
    write_table(scores, columns)
    assert cli.main(["select", str(scores), "--budget", "50", "--strategy", "mistakes",
                     "--out", str(tmp_path / "q")]) == 0
    err = capsys.readouterr().err.splitlines()
    at = next(i for i, line in enumerate(err) if line.startswith("first 10: "))
    shown = err[at + 1:at + 11]
    assert len(shown) == 10
    assert [line.split()[0] for line in shown] == [str(r) for r in range(1, 11)]
    paths = queue_paths(tmp_path / "q.csv")
    assert [line.split("  ")[-1] for line in shown] == paths[:10]
    with (tmp_path / "q.csv").open(newline="") as f:
        values = [float(r["label_issue_score"]) for r in csv.DictReader(f)][:10]
    texts = score_texts(values)
    assert len(set(texts)) == len(set(values))
    assert all(text in line for text, line in zip(texts, shown, strict=True))


def test_score_texts():
    assert score_texts([0.5, 0.25, 2.302585092994046]) == ["0.5", "0.25", "2.303"]
    assert score_texts([1 - 2.3e-05, 1 - 2.4e-05]) == ["1 - 2.3e-05", "1 - 2.4e-05"]
    assert score_texts([1.0, math.nan, 0.0]) == ["1", "n/a", "0"]
    close = [0.3 + i * 1e-15 for i in range(10)] + [0.3]
    texts = score_texts(close)
    assert len(set(texts)) == len(set(close)) and texts[0] == texts[-1]
    assert [float(t) for t in texts] == close  # 17 digits at most: the value itself
    below_one = [1 - i * 2.0 ** -53 for i in range(1, 10)]
    assert len(set(score_texts(below_one))) == 9
    assert score_texts([]) == []


@pytest.mark.parametrize("path", [
    "/data/a b/ü#1?.png", "/data/x%20y.png", "/", "//net/share/a.png", "/data/./a.png",
    "/data/../a.png", "/data/dir/", "/data/a.png", "relative/a.png", "a.png",
])
def test_file_uri_is_path_as_uri(path):
    p = Path(path)
    assert file_uri(path) == (p.as_uri() if p.is_absolute() else path)


def test_rankings_use_float64_probabilities_when_the_table_holds_them(tmp_path):
    """Rows whose probabilities differ below float32's resolution keep their float64 order."""
    n = 8
    p_cat = 0.6 - np.arange(n) * 1e-12  # one float32 value, eight float64 ones
    assert len(set(p_cat.astype(np.float32).tolist())) == 1
    columns = {
        "path": np.array([f"/d/{i}.png" for i in range(n)], dtype=object),
        "label": np.array(["cat"] * n, dtype=object),
        "prediction": np.array(["cat"] * n, dtype=object),
        "p_cat": p_cat, "p_dog": 1.0 - p_cat,
    }
    columns["label"][0] = "dog"  # two given classes
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"s{suffix}"
        write_table(path, columns)
        for method in METHODS:
            analysis = analyse(ScoreTable.load(path), method)
            quality = analysis.label_quality()[1:]
            assert len(set(quality.tolist())) == n - 1, method
            rows = select(analysis, n, "mistakes")
            rest = [int(i) for i in rows if not analysis.flagged[i] and i != 0]
            assert rest == sorted(rest, key=lambda i: analysis.label_quality()[i])
