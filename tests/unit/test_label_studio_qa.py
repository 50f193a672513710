"""The Label Studio QA view (hardscore_client.label_studio_qa, ``hardscore label-studio
qa-tasks``) on the synthetic verdicts table of test_report_verdicts: tasks in review order, each
image beside the one it is judged against, the config, decisions read back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_report_verdicts import (
    EXACT,
    EXACT_KEPT,
    LEAK,
    LEAK_KEPT,
    NEAR,
    NEAR_KEPT,
    OUTLIER,
    _table,
)

from hardscore_client import cli
from hardscore_client.analysis import ScoreTable, analyse
from hardscore_client.label_studio import parse_label_config
from hardscore_client.label_studio_qa import (
    QA_CHOICES,
    QA_LABEL_CONFIG,
    image_url_for,
    qa_decisions,
    qa_tasks,
)
from hardscore_client.tables import write_table


def test_config_shows_both_images_and_the_choices():
    root = ET.fromstring(QA_LABEL_CONFIG)
    assert [el.get("value") for el in root.iter("Image")] == ["$image", "$other_image"]
    control = parse_label_config(QA_LABEL_CONFIG)
    assert (control.from_name, control.to_name, control.choices) == ("decision", "image",
                                                                     QA_CHOICES)


def test_tasks_in_review_order(tmp_path):
    columns = _table(tmp_path / "images")
    analysis = analyse(ScoreTable.from_columns(columns))
    tasks = qa_tasks(analysis, image_url_for(tmp_path, "/data/local-files/?d="))
    data = [t["data"] for t in tasks]
    assert [(d["row"], d["other_row"], d["kind"], d["leak"]) for d in data] == [
        (LEAK, LEAK_KEPT, "near duplicate", True), (EXACT, EXACT_KEPT, "exact duplicate", False),
        (NEAR, NEAR_KEPT, "near duplicate", False), (OUTLIER, data[3]["other_row"], "outlier",
                                                     False)]
    leak = data[0]
    assert leak["image"] == f"/data/local-files/?d=images/img-{LEAK:02d}.png"
    assert leak["other_image"] == f"/data/local-files/?d=images/img-{LEAK_KEPT:02d}.png"
    assert "LEAK: test / train" in leak["title"] and "0.0800" in leak["title"]
    assert leak["near_duplicate_distance"] == 0.08 and leak["split"] == "test"
    outlier = data[3]
    # beside the outlier: the most typical row of its class (highest outlier score there,
    # the table having no representativeness), never an outlier or duplicate itself
    group = analysis.group()
    same = [i for i in range(len(group)) if group[i] == group[OUTLIER]
            and i not in (OUTLIER, LEAK, EXACT, NEAR)]
    assert outlier["other_row"] == max(same, key=lambda i: columns["outlier_score"][i])
    assert outlier["is_outlier"] and outlier["outlier_score"] == 0.05
    # every key of the config is in every task (Label Studio refuses the import otherwise)
    for d in data:
        assert {"image", "other_image", "title", "caption", "other_caption"} <= set(d)
    json.dumps(tasks, allow_nan=False)
    assert len(qa_tasks(analysis, str, ["outliers"])) == 1
    assert len(qa_tasks(analysis, str, limit=2)) == 2
    with pytest.raises(ValueError, match="unknown kinds"):
        qa_tasks(analysis, str, ["dupes"])


def test_image_urls(tmp_path):
    url = image_url_for(tmp_path, "http://files.test/x/")
    assert url(str(tmp_path / "a b" / "c#.png")) == "http://files.test/x/a%20b/c%23.png"
    assert url("/elsewhere/d.png") == "file:///elsewhere/d.png"
    assert image_url_for(None, None)("/e/f.png") == "file:///e/f.png"


def test_decisions_read_back():
    tasks = [
        {"data": {"row": 7, "path": "/a.png", "kind": "near duplicate", "other_row": 3},
         "annotations": [
             {"id": 1, "result": [{"from_name": "decision", "to_name": "image",
                                   "type": "choices", "value": {"choices": ["keep"]}}]},
             {"id": 2, "result": [{"from_name": "decision", "to_name": "image",
                                   "type": "choices",
                                   "value": {"choices": ["remove duplicate"]}}]}]},
        {"data": {"row": 9, "path": "/b.png", "kind": "outlier", "other_row": 1},
         "annotations": []},
    ]
    [d] = qa_decisions(tasks)
    assert (d.row, d.decision, d.other_row, d.kind) == (7, "remove duplicate", 3,
                                                        "near duplicate")


def test_cli_qa_tasks(tmp_path, capsys):
    table = tmp_path / "t.verdicts.csv"
    write_table(table, _table(tmp_path / "images"))
    out = tmp_path / "qa"
    assert cli.main(["label-studio", "qa-tasks", str(table), "--out", str(out),
                     "--image-root", str(tmp_path), "--image-url", "/data/local-files/?d="]) == 0
    said = capsys.readouterr().out
    assert "4 QA tasks (near duplicate: 2, exact duplicate: 1, outlier: 1; 1 leaks)" in said
    tasks = json.loads(Path(f"{out}.json").read_text())
    assert tasks[0]["data"]["row"] == LEAK
    assert Path(f"{out}.xml").read_text() == QA_LABEL_CONFIG
    write_table(tmp_path / "plain.csv", _table(tmp_path / "images", verdicts=False))
    with pytest.raises(SystemExit, match="no collection-verdict columns"):
        cli.main(["label-studio", "qa-tasks", str(tmp_path / "plain.csv")])
