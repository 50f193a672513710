"""collection.py (a score table's verdicts) and the selection strategies that use them, on
generated tables: names and stores found, rows without an embedding, row indices of the table,
hard-clean / diverse-hard / activelab."""

from __future__ import annotations

import numpy as np
import pytest

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.collection import (
    default_out,
    find_store,
    original_table,
    table_verdicts,
)
from hardscore_client.diversity import activelab_scores
from hardscore_client.embedding_store import store_of, write_part
from hardscore_client.errors import InputError, InputNotFoundError
from hardscore_client.selection import CSV_COLUMNS, VERDICT_COLUMNS, queue_columns, select
from hardscore_client.tables import read_table, write_table


def test_names(tmp_path) -> None:
    table = tmp_path / "scores.parquet"
    assert default_out(table) == tmp_path / "scores.verdicts.parquet"
    assert original_table(default_out(table)) == table
    assert original_table(table) is None
    assert find_store(table) is None
    store_of(table).mkdir()
    assert find_store(table) == store_of(table)
    assert find_store(tmp_path / "scores.verdicts.csv") == store_of(table)  # any suffix


def make_table(tmp_path, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    x[n - 1] = x[5]  # an exact copy of row 5 (embedding and bytes)
    probs = rng.dirichlet(np.ones(3), n)
    paths = [str(tmp_path / f"img{i:03d}.png") for i in range(n)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(f"image {5 if i == n - 1 else i}".encode())
    columns = {"path": np.array(paths, dtype=object),
               "label": np.array([str(v) for v in rng.integers(0, 3, n)], dtype=object),
               "split": np.array(["train"] * (n - 1) + ["test"], dtype=object),
               "hardness": -(probs * np.log(probs)).sum(axis=1),
               **{f"p_{c}": probs[:, c] for c in range(3)}}
    table = tmp_path / "t.csv"
    write_table(table, columns)
    return table, x, paths


def test_rows_without_an_embedding_and_table_row_indices(tmp_path) -> None:
    table, x, paths = make_table(tmp_path)
    keep = [i for i in range(len(paths)) if i not in (0, 7)]  # rows 0 and 7: no embedding
    write_part(table, [paths[i] for i in keep], x[keep])
    found = table_verdicts(table, near_duplicate_threshold=1e-6)
    cols = found.columns
    assert found.without_embedding == [paths[0], paths[7]] and found.digests == "computed"
    assert np.isnan(cols["uniqueness"][[0, 7]]).all() and (cols["is_outlier"][[0, 7]] == -1).all()
    assert np.isfinite(np.delete(cols["uniqueness"], [0, 7])).all()
    # Indices are rows of the table, not of the embedded subset.
    assert cols["near_duplicate_of"][59] == 5 and cols["exact_duplicate_of"][59] == 5
    assert cols["leak"][59] == 1 and cols["leak"][5] == 1 and (cols["leak"] == 1).sum() == 2
    assert list(cols)[:len(read_table(table))] == list(read_table(table))


def test_npy_embeddings_and_errors(tmp_path) -> None:
    table, x, _ = make_table(tmp_path)
    with pytest.raises(InputNotFoundError, match=r"score-dir .*--embeddings"):
        table_verdicts(table)
    np.save(tmp_path / "e.npy", x.astype(np.float32))
    found = table_verdicts(table, embeddings=tmp_path / "e.npy", split_column="label")
    assert found.splits == "label" and len(found.rows) == len(x)
    with pytest.raises(InputError, match="no column 'fold'"):
        table_verdicts(table, embeddings=tmp_path / "e.npy", split_column="fold")
    assert cli.main(["verdicts", str(table), "--embeddings", str(tmp_path / "e.npy"),
                     "--out", str(tmp_path / "v.jsonl")]) == 0
    assert "uniqueness" in read_table(tmp_path / "v.jsonl")


def test_new_strategies(tmp_path) -> None:
    table, x, _ = make_table(tmp_path)
    np.save(tmp_path / "e.npy", x)
    assert cli.main(["verdicts", str(table), "--embeddings", str(tmp_path / "e.npy")]) == 0
    analysis = analyse(ScoreTable.load(default_out(table)))
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in analysis.table.columns.items()
            if k in ("is_outlier", "near_duplicate_of", "exact_duplicate_of", "hardness")}
    flagged = (cols["is_outlier"] != 0) | (cols["near_duplicate_of"] >= 0) | (
        cols["exact_duplicate_of"] >= 0)
    rows = select(analysis, 100, "hard-clean")
    assert set(rows.tolist()) == set(np.flatnonzero(~flagged).tolist())
    hardness = cols["hardness"][rows]
    assert (np.diff(hardness) <= 0).all()
    picked = select(analysis, 10, "diverse-hard", x)
    assert len(set(picked.tolist())) == 10 and not flagged[picked].any()
    with pytest.raises(InputError, match="embeddings"):
        select(analysis, 10, "diverse-hard")
    t = analysis.table
    expected, _ = activelab_scores(t.probabilities, t.labels)
    order = select(analysis, 60, "activelab")
    np.testing.assert_array_equal(order, np.argsort(expected, kind="stable"))
    queue = queue_columns(analysis, order[:5], "activelab")
    assert list(queue) == [*CSV_COLUMNS, *VERDICT_COLUMNS["activelab"]]
    np.testing.assert_allclose(np.asarray(queue["activelab_score"], dtype=np.float64),
                               expected[order[:5]])
    plain = ScoreTable.load(table)
    with pytest.raises(InputError, match="hardscore verdicts"):
        select(analyse(plain), 5, "hard-clean")
