"""The client's data-set functions raise hardscore_client.errors exceptions (no SystemExit);
``hardscore`` prints their message as one line on stderr and exits with their exit_code."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

import hardscore_client
from hardscore_client import cli, dataset
from hardscore_client.analysis import ScoreTable
from hardscore_client.dataset import Item, check_labels, read_list, scan_folder, score_items
from hardscore_client.errors import (
    ConnectionFailed,
    InputError,
    InputNotFoundError,
    MissingExtraError,
    ServerUnavailableError,
    WorkflowError,
)
from hardscore_client.report import write_report
from hardscore_client.tables import Columns, read_table, write_table

ERRORS = [InputError, InputNotFoundError, MissingExtraError, ServerUnavailableError]


def test_every_error_is_a_workflow_error_exiting_1_as_systemexit_message_did() -> None:
    for error in [WorkflowError, *ERRORS]:
        assert issubclass(error, WorkflowError) and not issubclass(error, SystemExit)
        assert error.exit_code == 1
        assert getattr(hardscore_client, error.__name__) is error
    # cannot reach the server: its own exit code, still a ServerUnavailableError for callers
    assert issubclass(ConnectionFailed, ServerUnavailableError)
    assert ConnectionFailed.exit_code == 3
    assert hardscore_client.ConnectionFailed is ConnectionFailed
    assert issubclass(InputNotFoundError, FileNotFoundError)  # scan_folder raised that before
    assert issubclass(InputError, ValueError)  # read_table's unknown suffix raised that before


def test_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"/missing: not a folder$"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputNotFoundError, match=r"/file\.png: not a folder$"):
        scan_folder(tmp_path / "file.png")


def test_a_missing_table_or_list(tmp_path: Path) -> None:
    for name in ("none.csv", "none.jsonl", "none.parquet"):
        with pytest.raises(InputNotFoundError, match=rf"/{name}: no such file$"):
            read_table(tmp_path / name)
    with pytest.raises(InputNotFoundError, match=r"/none\.csv: no such file$"):
        ScoreTable.load(tmp_path / "none.csv")
    with pytest.raises(InputNotFoundError, match=r"/list\.txt: no such file$"):
        read_list(tmp_path / "list.txt")


def test_an_unknown_table_format(tmp_path: Path) -> None:
    columns: Columns = {"row": np.arange(2)}
    with pytest.raises(InputError, match=r"scores\.txt: unknown table format '\.txt'; use one of "
                                         r"\.csv, \.jsonl, \.parquet"):
        write_table(tmp_path / "scores.txt", columns)
    with pytest.raises(InputError, match=r"unknown table format '\.xlsx'"):
        read_table(tmp_path / "scores.xlsx")


def test_labels_that_are_not_classes() -> None:
    items = [Item("/a.png", "zero"), Item("/b.png", "zero"), Item("/c.png", "1"), Item("/d.png")]
    with pytest.raises(InputError, match=r"given labels that are not classes of the served "
                                         r"model: 'zero' \(2 images\); the model's classes are "
                                         r"0, 1\. Rename the folders"):
        check_labels(items, ["0", "1"])
    check_labels(items[2:], ["0", "1"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_answering(tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    port = _closed_port()
    with pytest.raises(ConnectionFailed, match=rf"^cannot connect to 127\.0\.0\.1:{port}: "
                                               rf"nothing listens on 127\.0\.0\.1:{port} \(is "
                                               r"the server running\? the default gRPC port is "
                                               r"8001\)$"):
        score_items([Item("/a.png")], [f"127.0.0.1:{port}"], out, timeout=0.5, progress=False)
    assert not out.exists()

    other = _closed_port()
    with pytest.raises(ConnectionFailed, match=rf"^no server answered: cannot connect to "
                                               rf"127\.0\.0\.1:{port}: .*; cannot connect to "
                                               rf"127\.0\.0\.1:{other}: nothing listens") as e:
        score_items([Item("/a.png")], [f"127.0.0.1:{port}", f"127.0.0.1:{other}"], out,
                    timeout=0.5, progress=False)
    assert e.value.cause == "refused"


def test_an_output_table_of_other_columns(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def classes(clients: object, wait_s: float, embeddings: bool = False,
                      model_name: str = "", model_version: str = "") -> dataset.ServedModel:
        return dataset.ServedModel("m", "1", ["0", "1"])

    monkeypatch.setattr(dataset, "_model_classes", classes)
    out = tmp_path / "old.csv"
    write_table(out, {"path": np.array(["/x.png"], dtype=object), "hardness": np.array([0.5])})
    with pytest.raises(InputError, match=r"old\.csv has other columns than this model's table"):
        score_items([Item("/a.png")], ["127.0.0.1:1"], out, progress=False)


def test_missing_extras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pyarrow", "pyarrow.parquet", "matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    columns: Columns = {"row": np.arange(2)}
    with pytest.raises(MissingExtraError, match=r"^writing \.parquet needs pyarrow: pip install "
                                                r"pyarrow$"):
        write_table(tmp_path / "s.parquet", columns)
    (tmp_path / "s.parquet").write_bytes(b"")
    with pytest.raises(MissingExtraError, match=r"^reading \.parquet needs pyarrow"):
        read_table(tmp_path / "s.parquet")
    table = ScoreTable.from_columns({
        "path": np.array(["/a.png", "/b.png"], dtype=object),
        "label": np.array(["0", "1"], dtype=object),
        "prediction": np.array(["0", "0"], dtype=object),
        "hardness": np.array([0.1, 0.9]),
    })
    with pytest.raises(MissingExtraError, match=r"^the report needs matplotlib: pip install "
                                                r"'hardscore\[report\]'$"):
        write_report(table, tmp_path / "report")


def test_the_cli_prints_one_line_and_exits_with_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = tmp_path / "none.csv"
    assert cli.main(["top", str(missing)]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"{missing}: no such file\n")

    folder = tmp_path / "nothing-here"
    assert cli.main(["score-dir", str(folder), "--out", str(tmp_path / "s.csv"),
                     "--no-progress"]) == 1
    assert capsys.readouterr().err == f"{folder}: not a folder\n"

    monkeypatch.setattr(InputNotFoundError, "exit_code", 3)  # the CLI uses the attribute
    assert cli.main(["label-issues", str(missing)]) == 3
    assert capsys.readouterr().err == f"{missing}: no such file\n"
