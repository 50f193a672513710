"""The embeddings kept beside a score table (hardscore_client.embedding_store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardscore_client.embedding_store import aligned, read_embeddings, store_of, write_part
from hardscore_client.errors import InputError, InputNotFoundError


def test_parts_are_added_and_read_back_in_table_order(tmp_path: Path) -> None:
    table = tmp_path / "scores.parquet"
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    write_part(table, ["/a", "/b", "/c"], first)
    write_part(table, ["/d", "/b"], second)  # /b again: its last embedding wins
    assert sorted(p.name for p in store_of(table).iterdir()) == ["part-00001.npz",
                                                                 "part-00002.npz"]
    values, missing = aligned(["/d", "/a", "/x", "/b"], store_of(table))
    assert missing == 1
    np.testing.assert_array_equal(values[0], second[0].astype(np.float32))
    np.testing.assert_array_equal(values[1], first[0].astype(np.float32))
    assert np.isnan(values[2]).all()
    np.testing.assert_array_equal(values[3], second[1].astype(np.float32))
    assert write_part(table, [], np.zeros((0, 4))) is None


def test_embeddings_from_elsewhere(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "e.npy", values)
    got, missing = aligned(["a", "b", "c", "d"], tmp_path / "e.npy")
    assert missing == 0 and got.dtype == np.float32
    np.testing.assert_array_equal(got, values)
    with pytest.raises(InputError, match="4 rows of embeddings for a table of 3 rows"):
        aligned(["a", "b", "c"], tmp_path / "e.npy")
    np.savez(tmp_path / "e.npz", embedding=values, id=np.array(["w", "x", "y", "z"]))
    got, missing = aligned(["z", "w"], tmp_path / "e.npz")
    np.testing.assert_array_equal(got, values[[3, 0]])
    np.savez(tmp_path / "bad.npz", features=values)
    with pytest.raises(InputError, match="no 'embedding' array"):
        read_embeddings(tmp_path / "bad.npz")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(InputError, match="2-D array"):
        read_embeddings(tmp_path / "flat.npy")
    with pytest.raises(InputNotFoundError):
        read_embeddings(tmp_path / "absent.npy")
    with pytest.raises(InputError, match=r"must be a \.npy"):
        (tmp_path / "e.txt").write_text("1 2")
        read_embeddings(tmp_path / "e.txt")


def test_parts_of_two_widths_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    write_part(table, ["/a"], np.zeros((1, 3)))
    write_part(table, ["/b"], np.zeros((1, 5)))
    with pytest.raises(InputError, match="different widths"):
        read_embeddings(store_of(table))
