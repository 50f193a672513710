"""Which model version computed a ScoreResult (issue 22, clients follow): the replies' tags
joined over the chunks of one call, a swap between chunks reported, the per-row columns, and
score-dir's rule that one table holds one model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hardscore_client import MixedVersions, ModelRun
from hardscore_client.dataset import Item, ServedModel, check_same_model, result_rows
from hardscore_client.errors import InputError
from hardscore_client.messages import ScoreResult, decode_scores
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire.tensors import fill_tensor


def _part(n: int, name: str = "digits", version: str = "1") -> ScoreResult:
    scores = pb.Scores(num_rows=n, ids=[f"r{i}" for i in range(n)])
    fill_tensor(scores.predicted_class, np.zeros(n, dtype=np.int32))
    for field in ("confidence", "margin", "hardness", "hardness_normalized"):
        fill_tensor(getattr(scores, field), np.full(n, 0.5))
    return decode_scores(scores, (), name, version)


def test_one_version_names_every_row():
    result = ScoreResult.concat([_part(3), _part(2), _part(0)])
    assert result.computed_by == [ModelRun(0, "digits", "1")]
    assert (result.model_name, result.model_version) == ("digits", "1")
    names, versions = result.row_models()
    assert names.tolist() == ["digits"] * 5 and versions.tolist() == ["1"] * 5


def test_a_swap_between_chunks_is_reported_row_by_row():
    result = ScoreResult.concat([_part(3), _part(0, version="2"), _part(2, version="1"),
                                 _part(4, version="2"), _part(1, version="2")])
    assert result.computed_by == [ModelRun(0, "digits", "1"), ModelRun(5, "digits", "2")]
    assert result.row_models()[1].tolist() == ["1"] * 5 + ["2"] * 5
    with pytest.raises(MixedVersions, match=r"rows 0-4 by digits version 1; rows 5-9 by "
                                            r"digits version 2"):
        _ = result.model_version


def test_untagged_replies_and_logits_name_no_model():
    result = ScoreResult.concat([_part(2, "", ""), _part(1, "", "")])
    assert result.computed_by == [] and result.model_version == "" and result.model_name == ""
    assert result.row_models()[0].tolist() == ["", "", ""]
    empty = ScoreResult.concat([_part(0), _part(0)])
    assert empty.computed_by == [ModelRun(0, "digits", "1")] and empty.model_version == "1"


def test_score_dir_rows_carry_the_model_version_of_their_reply():
    result = ScoreResult.concat([_part(2), _part(1, version="2")])
    items = [Item(f"/x/{i}.png") for i in range(3)]
    rows = result_rows(items, result, ["0", "1"])
    assert rows["model"].tolist() == ["digits"] * 3
    assert rows["model_version"].tolist() == ["1", "1", "2"]


def test_one_table_holds_one_model_version(tmp_path: Path):
    table = {"path": np.array(["/a", "/b", "/c", "/d"], dtype=object),
             "model": np.array(["digits", "digits", "", ""], dtype=object),
             "model_version": np.array(["1", "1", "", ""], dtype=object),
             "error": np.array(["", "", "decode", ""], dtype=object)}
    check_same_model(table, tmp_path / "t.csv", ServedModel("digits", "1", []))
    check_same_model({"path": table["path"]}, tmp_path / "t.csv",
                     ServedModel("digits", "2", []))  # a table from before the columns
    with pytest.raises(InputError, match=r"t\.csv holds scores of digits version 1; this run "
                                         r"scores with digits version 2\. One table holds one "
                                         r"model version"):
        check_same_model(table, tmp_path / "t.csv", ServedModel("digits", "2", []))
