"""The ``hardscore`` command line against a real server: score-logits, top, score-images, info."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hardscore_client.tables import read_table
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.pipeline.scores import score_logits


def hardscore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hardscore_client.cli", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_score_logits_writes_a_table_that_top_ranks(tmp_path, logits_server, suffix):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(500, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=500)
    labels[7] = -1
    np.save(tmp_path / "x.npy", logits)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / f"scores{suffix}"
    proc = hardscore("score-logits", "--server", logits_server.target, "--logits",
                     str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                     "--class-names", "a,b,c,d", "--probabilities", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = read_table(out)
    expected = score_logits(logits, labels)
    assert table["row"].tolist() == list(range(500))
    np.testing.assert_allclose(table["hardness"], expected.hardness, rtol=1e-12)
    np.testing.assert_allclose(table["p_c"], expected.probabilities[:, 2], rtol=1e-6)
    assert np.isnan(table["mistakenness"][7])

    proc = hardscore("top", "--by", "label_issue_score", "-k", "5", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["row", "predicted_class", "given_label", "label_issue_score"]
    top_rows = [int(line.split("\t")[0]) for line in lines[1:]]
    assert top_rows == np.argsort(-np.nan_to_num(expected.label_issue_score, nan=-1.0),
                                  kind="stable")[:5].tolist()


def test_top_names_the_missing_column(tmp_path, logits_server):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), dtype=np.float32))
    out = tmp_path / "s.csv"
    assert hardscore("score-logits", "--server", logits_server.target, "--logits",
                     str(tmp_path / "x.npy"), "--out", str(out)).returncode == 0
    proc = hardscore("top", "--by", "mistakenness", str(out))
    assert proc.returncode != 0
    assert "has no column 'mistakenness'" in proc.stderr


def test_score_images_reports_unreadable_files_and_scores_the_rest(tmp_path, image_server):
    from hardscore_server.tools.digits import heldout_split

    _, _, images, labels = heldout_split()
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(encode_png(images[i]))
        paths.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "images.csv"
    proc = hardscore("score-images", "--server", image_server.target, *paths, str(broken),
                     "--labels", ",".join(str(v) for v in labels[:3]) + ",1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {broken}: decode" in proc.stderr
    table = read_table(out)
    assert table["predicted_class"][:3].tolist() == labels[:3].tolist()
    assert table["predicted_class"][3] == -1


def test_info_prints_the_model(image_server):
    proc = hardscore("info", "--server", image_server.target)
    assert proc.returncode == 0, proc.stderr
    assert 'name: "digits-resnet"' in proc.stdout
    assert 'execution_provider: "CPUExecutionProvider"' in proc.stdout


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tables_keep_number_like_class_names_as_text(tmp_path, suffix):
    from hardscore_client.tables import write_table

    if suffix == ".parquet":
        pytest.importorskip("pyarrow")  # the report extra; absent from the client-range venv

    out = tmp_path / f"t{suffix}"
    write_table(out, {
        "path": np.array(["a.png", "b.png", "c.png"], dtype=object),
        "label": np.array(["007", "1e3", ""], dtype=object),
        "prediction": np.array(["7", "007", "1.50"], dtype=object),
        "predicted_class": np.array([3, -1, 0]),
        "hardness": np.array([0.5, np.nan, 2.0]),
        "extra": np.array([1, 2, 3]),
    })
    table = read_table(out)
    assert table["label"].tolist() == ["007", "1e3", ""]
    assert table["prediction"].tolist() == ["7", "007", "1.50"]
    assert table["predicted_class"].dtype == np.int64
    assert table["predicted_class"].tolist() == [3, -1, 0]
    np.testing.assert_array_equal(table["hardness"], [0.5, np.nan, 2.0])
    assert table["extra"].tolist() == [1, 2, 3]  # unknown columns: typed from their values
