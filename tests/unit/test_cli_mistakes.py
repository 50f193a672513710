"""Ordinary mistakes on the ``hardscore`` command line end in one line on stderr and a
documented exit code, before any server is called (none runs here): missing files and folders,
counts that do not match, output tables that cannot be written, out-of-range flags, arrays
that are not probabilities. Also what ``top`` prints of each kind of table, and the class-name
columns of score-logits / score-images tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable
from hardscore_client.errors import InputError
from hardscore_client.messages import ScoreResult
from hardscore_client.tables import read_table, result_columns, write_table

NO_SERVER = ["--server", "127.0.0.1:9", "--connect-timeout", "0.5"]
"""Never reached: every mistake below is caught before a connection (port 9 is discard)."""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of ``hardscore argv`` run in this process; stdout must be empty."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    return status, captured.err


@pytest.fixture()
def arrays(tmp_path: Path) -> Path:
    """x.npy [6, 3] logits, y.npy 6 labels, y4.npy 4 labels, text.npy (not a .npy)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(6, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, -1, 0, 1]))
    np.save(tmp_path / "y4.npy", np.array([0, 1, 2, 0]))
    (tmp_path / "text.npy").write_text("0.1,0.9\n")
    return tmp_path


def test_score_logits_mistakes_are_one_line_before_any_call(
    arrays: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(arrays / "s.csv")
    x, y = str(arrays / "x.npy"), str(arrays / "y.npy")
    cases = {
        "missing logits": (["--logits", str(arrays / "missing.npy")],
                           f"{arrays / 'missing.npy'}: no such file"),
        "missing labels": (["--logits", x, "--labels", str(arrays / "none.npy")],
                           f"{arrays / 'none.npy'}: no such file"),
        "label count": (["--logits", x, "--labels", str(arrays / "y4.npy")],
                        f"--labels {arrays / 'y4.npy'} has shape [4], expected [6]: one class "
                        "index per row (-1 = none)"),
        "not a npy": (["--logits", str(arrays / "text.npy")],
                      f"{arrays / 'text.npy'}: not a .npy array of numbers (expected an [N, C] "
                      "array; write it with numpy.save)"),
        "class names": (["--logits", x, "--labels", y, "--class-names", "a,b"],
                        "--class-names a,b: 2 names for 3 classes (one per class, in index "
                        "order)"),
        "names file": (["--logits", x, "--class-names-file", str(arrays / "names.txt")],
                       f"{arrays / 'names.txt'}: no such file"),
    }
    for case, (flags, line) in cases.items():
        status, err = run(capsys, "score-logits", *NO_SERVER, *flags, "--out", out)
        assert (status, err) == (1, line + "\n"), case
    assert not Path(out).exists()


@pytest.mark.parametrize("command", ["score-logits", "score-images", "score-dir"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    command: str, arrays: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (arrays / "images").mkdir()
    (arrays / "images" / "a.png").write_bytes(b"not scored: refused before")
    inputs = {"score-logits": ["--logits", str(arrays / "x.npy")],
              "score-images": [str(arrays / "images" / "a.png")],
              "score-dir": [str(arrays / "images")]}[command]
    for out, line in [
        (arrays / "s.xlsx", f"{arrays / 's.xlsx'}: unknown table format '.xlsx'; use one of "
                            ".csv, .jsonl, .parquet"),
        (arrays / "nowhere" / "s.csv", f"{arrays / 'nowhere' / 's.csv'}: no such folder "
                                       f"'{arrays / 'nowhere'}' to write the table in"),
    ]:
        status, err = run(capsys, command, *NO_SERVER, *inputs, "--out", str(out))
        assert (status, err) == (1, line + "\n")


def test_score_images_and_score_dir_mistakes(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    out = str(tmp_path / "s.csv")
    status, err = run(capsys, "score-images", *NO_SERVER, str(tmp_path / "a.png"),
                      str(tmp_path / "gone.png"), "--out", out)
    assert (status, err) == (1, f"{tmp_path / 'gone.png'}: no such file\n")
    status, err = run(capsys, "score-images", *NO_SERVER, str(tmp_path / "a.png"),
                      "--labels", "cat,dog", "--out", out)
    assert (status, err) == (1, "--labels has 2 labels for 1 images: one class name per image, "
                                "in order, separated by commas\n")
    (tmp_path / "empty").mkdir()
    status, err = run(capsys, "score-dir", *NO_SERVER, str(tmp_path / "empty"), "--out", out,
                      "--no-progress")
    assert (status, err) == (1, f"{tmp_path / 'empty'}: no images to score (files ending .bmp, "
                                ".gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)\n")
    status, err = run(capsys, "score-dir", *NO_SERVER, str(tmp_path / "missing"), "--out", out)
    assert (status, err) == (1, f"{tmp_path / 'missing'}: not a folder\n")
    assert not Path(out).exists()


@pytest.mark.parametrize(("argv", "line"), [
    (["select", "t.csv", "--budget", "-3"],
     "hardscore select: error: argument --budget: must be >= 0, got -3 (see hardscore select "
     "--help)"),
    (["top", "t.csv", "-k", "many"],
     "hardscore top: error: argument -k: expected a whole number, got 'many' (see hardscore "
     "top --help)"),
    (["score-dir", "d", "--out", "s.csv", "--batch-size", "0"],
     "hardscore score-dir: error: argument --batch-size: must be >= 1, got 0 (see hardscore "
     "score-dir --help)"),
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], line: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_the_library_refuses_a_negative_budget_as_input_error() -> None:
    from hardscore_client.analysis import analyse
    from hardscore_client.selection import select

    table = ScoreTable.from_columns({"path": np.array(["/a.png"], dtype=object),
                                     "hardness": np.array([0.5])})
    with pytest.raises(InputError, match=r"^budget must be >= 0 \(how many samples to select\), "
                                         r"got -1$"):
        select(analyse(table), -1, "hardest")


def test_pred_probs_that_are_not_probabilities_get_the_right_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(8, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    half = probs.copy()
    half[5] *= 0.5
    nan = probs.copy()
    nan[2, 1] = np.nan
    cases = {
        "logits": (logits, "probabilities row 0 has a value outside [0, 1] ("
                   f"{logits[0][(logits[0] < 0) | (logits[0] > 1)][0]:.9g} in class "
                   f"{int(np.flatnonzero((logits[0] < 0) | (logits[0] > 1))[0])}): these look "
                   "like logits or log-probabilities: pass the file with --logits instead of "
                   "--pred-probs"),
        "half": (half, f"probabilities row 5 sums to {half[5].sum():.9g}, expected 1 within "
                 "0.001: if these are probabilities, divide each row by its sum; otherwise "
                 "check where they came from"),
        "nan": (nan, "probabilities row 2 has a non-finite value (nan in class 1)"),
    }
    for case, (values, line) in cases.items():
        path = tmp_path / f"{case}.npy"
        np.save(path, values)
        status, err = run(capsys, "score-logits", *NO_SERVER, "--pred-probs", str(path),
                          "--out", str(tmp_path / "s.csv"))
        assert (status, err) == (1, f"{path}: {line}\n"), case


def test_top_names_the_sample_and_the_classes(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    score_dir_table = tmp_path / "dir.csv"
    write_table(score_dir_table, {
        "path": np.array(["/d/3/a.png", "/d/7/b.png", "/d/7/c.png"], dtype=object),
        "label": np.array(["3", "7", "7"], dtype=object),
        "prediction": np.array(["3", "1", "7"], dtype=object),
        "predicted_class": np.array([3, 1, 7]), "given_label": np.array([3, 7, 7]),
        "label_issue_score": np.array([0.1, 0.9, 0.2]),
    })
    assert cli.main(["top", str(score_dir_table), "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "path\tprediction\tlabel\tlabel_issue_score",
        "/d/7/b.png\t1\t7\t0.900000",
        "/d/7/c.png\t7\t7\t0.200000",
    ]
    indices_only = tmp_path / "old.csv"  # a score-logits table without class names
    write_table(indices_only, {"row": np.arange(2), "predicted_class": np.array([0, 1]),
                               "hardness": np.array([0.3, 0.6])})
    assert cli.main(["top", str(indices_only), "--by", "hardness", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == ["row\tpredicted_class\thardness",
                                                    "1\t1\t0.600000"]


def test_score_tables_name_the_classes_beside_their_indices(tmp_path: Path) -> None:
    result = ScoreResult(
        predicted_class=np.array([2, 0, -1], dtype=np.int32),
        confidence=np.array([0.9, 0.8, np.nan]), margin=np.array([0.5, 0.4, np.nan]),
        hardness=np.array([0.1, 0.2, np.nan]), hardness_normalized=np.array([0.1, 0.2, np.nan]),
        given_label=np.array([2, 1, -1], dtype=np.int32),
        label_issue_score=np.array([0.1, 0.6, np.nan]),
        ids=["a.png", "b.png", "c.png"], class_names=["10", "2", "cat"],
    )
    path = tmp_path / "s.csv"
    write_table(path, result_columns(result))
    table = read_table(path)
    assert list(table)[:6] == ["row", "id", "label", "prediction", "predicted_class",
                               "confidence"]
    assert table["prediction"].tolist() == ["cat", "10", ""]
    assert table["label"].tolist() == ["cat", "2", ""]
    assert table["predicted_class"].tolist() == [2, 0, -1]  # the indices stay, as before
    analysed = ScoreTable.load(path)  # the names, in class index order
    assert analysed.class_names == ["10", "2", "cat"]
    assert analysed.labels.tolist() == [2, 1, -1] and analysed.predicted.tolist() == [2, 0, -1]
    result.class_names = []
    assert "prediction" not in result_columns(result)  # names unknown: indices only
