"""The ``hardscore`` command line against a real server: score-logits, top, score-images, info;
and how it ends when its reader goes away (``| head``) or on Ctrl-C."""

from __future__ import annotations

import signal
import socket
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
    # the class names beside the indices, as score-dir tables have them ("" = no label)
    names = np.array(["a", "b", "c", "d"])
    assert table["prediction"].tolist() == names[expected.predicted_class].tolist()
    assert table["label"].tolist() == [names[v] if v >= 0 else "" for v in labels]
    assert table["given_label"].tolist() == labels.tolist()

    proc = hardscore("top", "--by", "label_issue_score", "-k", "5", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["row", "prediction", "label", "label_issue_score"]
    top_rows = [int(line.split("\t")[0]) for line in lines[1:]]
    assert top_rows == np.argsort(-np.nan_to_num(expected.label_issue_score, nan=-1.0),
                                  kind="stable")[:5].tolist()
    assert [line.split("\t")[1:3] for line in lines[1:]] == [
        [names[expected.predicted_class[i]], names[labels[i]]] for i in top_rows]


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
    assert proc.returncode == 4, proc.stderr  # some skipped, the others scored
    assert f"skipped {broken}: decode" in proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"wrote 4 rows to {out}; 1 of 4 images skipped "
                                            "(listed above; class -1, no scores)")
    table = read_table(out)
    assert table["predicted_class"][:3].tolist() == labels[:3].tolist()
    assert table["predicted_class"][3] == -1
    assert table["prediction"].tolist() == [str(v) for v in labels[:3]] + [""]  # names
    assert table["id"].tolist() == [*paths, str(broken)]

    proc = hardscore("score-images", "--server", image_server.target, str(broken), str(broken),
                     "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # none scored
    assert proc.stderr.splitlines()[-1] == (f"wrote 2 rows to {out}, but no image was scored: "
                                            "every one was skipped (reasons above)")

    proc = hardscore("score-images", "--server", image_server.target, *paths, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"wrote 3 rows to {out}"]


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


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``hardscore top ... | head -n 2``: exit 141 (128 + SIGPIPE, as for tools SIGPIPE ends),
    nothing on stderr; the output is larger than the pipe's buffer, so the pipe does break."""
    from hardscore_client.tables import write_table

    n = 50_000
    write_table(tmp_path / "big.csv", {"row": np.arange(n),
                                       "hardness": np.linspace(0.0, 1.0, n)})
    proc = subprocess.Popen([sys.executable, "-m", "hardscore_client.cli", "top",
                             str(tmp_path / "big.csv"), "--by", "hardness", "-k", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == "row\thardness\n"
    assert proc.stdout.readline() == f"{n - 1}\t1.000000\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == ""


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT while ``info`` waits for a server that accepts the connection and never answers:
    ``hardscore info: interrupted``, exit 130 (128 + SIGINT)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        silent.settimeout(60)
        port = silent.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "hardscore_client.cli", "info",
                                 "--server", f"127.0.0.1:{port}", "--connect-timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        connection, _ = silent.accept()  # the command is in its call now
        with connection:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert (out, err) == ("", "hardscore info: interrupted\n")
