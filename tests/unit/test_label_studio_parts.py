"""The Label Studio backend's pure parts: label configs, annotations, predictions, settings."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from hardscore_client.label_studio import (
    LabelConfigError,
    annotated_choice,
    class_labels,
    image_ref,
    parse_label_config,
    resolve_image_url,
    task_predictions,
)
from hardscore_client.messages import ScoreResult

CONFIG = """<View>
  <Header value="Which digit?"/>
  <Image name="img" value="$picture" zoom="true"/>
  <Choices name="label" toName="img">
    <Choice value="zero" alias="0"/><Choice value="one" alias="1"/><Choice value="2"/>
  </Choices>
</View>"""


def test_parse_label_config_finds_the_choices_over_the_image():
    control = parse_label_config(CONFIG)
    assert (control.from_name, control.to_name, control.value_key) == ("label", "img", "picture")
    assert control.choices == ("zero", "one", "2")
    assert dict(control.class_of_choice) == {"zero": "0", "one": "1", "2": "2"}
    assert control.choice_for_class("1") == "one" and control.choice_for_class("7") is None


@pytest.mark.parametrize("xml, message", [
    ("<View><Image", "not valid XML"),
    ('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
     '<Choice value="a"/></Choices></View>', "no <Choices> control over an <Image>"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>',
     "has no <Choice> values"),
])
def test_parse_label_config_says_what_is_wrong(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_annotated_choice_takes_the_latest_usable_annotation():
    control = parse_label_config(CONFIG)

    def ann(i, choices, cancelled=False, from_name="label"):
        return {"id": i, "was_cancelled": cancelled, "result": [
            {"from_name": from_name, "to_name": "img", "type": "choices",
             "value": {"choices": choices}}]}

    task = {"id": 7, "data": {"picture": "/data/upload/1/a.png"}, "annotations": [
        ann(3, ["one"]), ann(9, ["zero"]), ann(12, ["2"], cancelled=True),
        ann(15, ["zero", "one"]), ann(20, ["one"], from_name="other")]}
    assert annotated_choice(task, control) == "zero"
    assert annotated_choice({"id": 8, "annotations": []}, control) is None
    assert image_ref(task, control) == "/data/upload/1/a.png"
    with pytest.raises(ValueError, match=r"task 8 has no data.picture"):
        image_ref({"id": 8, "data": {}}, control)
    # Labels go to the server as model class names; unknown classes become "no label".
    unknown = {"annotations": [ann(1, ["one"])]}
    assert class_labels([task, {"id": 8}, unknown], control, ["0", "2"]) == ["0", None, None]


def _result(label_issue: list[float] | None) -> ScoreResult:
    return ScoreResult(
        predicted_class=np.array([1, 2, -1, 0], dtype=np.int32),
        confidence=np.array([0.9, 0.6, np.nan, 0.5]),
        margin=np.array([0.8, 0.2, np.nan, 0.1]),
        hardness=np.array([0.3, 0.9, np.nan, 1.0]),
        hardness_normalized=np.array([0.1, 0.3, np.nan, 0.33]),
        label_issue_score=None if label_issue is None else np.array(label_issue),
        class_names=["0", "1", "2"],
    )


def test_task_predictions_carry_the_class_the_score_and_the_qa_score():
    control = parse_label_config(CONFIG)
    result = _result([0.95, math.nan, math.nan, 0.25])
    first = task_predictions(result, 0, control, "v1", "hardness", qa=True)
    region = [{"from_name": "label", "to_name": "img", "type": "choices",
               "value": {"choices": ["one"]}}]
    assert first == [{"result": region, "score": 0.3, "model_version": "v1"},
                     {"result": region, "score": 0.95, "model_version": "v1-label-qa"}]
    # No label: no QA prediction. A failed row: no prediction at all.
    assert task_predictions(result, 1, control, "v1", "margin", qa=True) == [{
        "result": [{**region[0], "value": {"choices": ["2"]}}], "score": 0.2,
        "model_version": "v1"}]
    assert task_predictions(result, 2, control, "v1", "hardness", qa=True) == []
    assert len(task_predictions(result, 3, control, "v1", "confidence", qa=False)) == 1
    assert task_predictions(_result(None), 0, control, "v1", "confidence", qa=True) == [
        {"result": region, "score": 0.9, "model_version": "v1"}]


def test_backend_settings_are_checked():
    from hardscore_client.label_studio_server import BackendSettings

    with pytest.raises(ValueError, match="score must be one of"):
        BackendSettings(score="entropy")
    with pytest.raises(ValueError, match="fetch_concurrency must be >= 1"):
        BackendSettings(fetch_concurrency=0)
    with pytest.raises(ValueError, match="predict_deadline must be > 0"):
        BackendSettings(predict_deadline=0)
    with pytest.raises(ValueError, match="basic auth needs both a user and a password"):
        BackendSettings(basic_auth_user="annotators")
    with pytest.raises(ValueError, match="basic auth needs both a user and a password"):
        BackendSettings(basic_auth_password="secret")
    with pytest.raises(ValueError, match="must not contain ':'"):
        BackendSettings(basic_auth_user="a:b", basic_auth_password="secret")
    assert "secret" not in repr(BackendSettings(basic_auth_user="a", basic_auth_password="secret"))


def test_the_cli_needs_the_extra_only_to_run_the_backend(monkeypatch):
    """Without aiohttp the CLI (and its parser) still loads; the command says what to install."""
    import hardscore_client
    from hardscore_client import cli

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp raises ImportError
    monkeypatch.delitem(sys.modules, "hardscore_client.label_studio_server", raising=False)
    monkeypatch.delattr(hardscore_client, "label_studio_server", raising=False)
    args = cli.build_parser().parse_args(["label-studio", "--port", "9999"])
    assert (args.port, args.score, args.host) == (9999, "hardness", "127.0.0.1")
    with pytest.raises(SystemExit, match=r"needs the label-studio extra: pip install "
                                         r"'hardscore\[label-studio\]'"):
        cli.main(["label-studio"])


def test_image_references_resolve_to_label_studio_or_go_without_the_key():
    ls = "http://ls.example:8080/"
    assert resolve_image_url("/data/upload/3/ab12cd34-x.png", ls) == (
        "http://ls.example:8080/data/upload/3/ab12cd34-x.png", True)
    assert resolve_image_url("/data/local-files/?d=img/1.png", ls) == (
        "http://ls.example:8080/data/local-files/?d=img/1.png", True)
    assert resolve_image_url("http://ls.example:8080/data/upload/1/a.png", ls)[1] is True
    # Another host (or another port or scheme) never sees Label Studio's key.
    assert resolve_image_url("http://ls.example:9000/a.png", ls)[1] is False
    assert resolve_image_url("https://ls.example:8080/a.png", ls)[1] is False
    assert resolve_image_url("https://cdn.example/a.png", None) == ("https://cdn.example/a.png",
                                                                    False)
    with pytest.raises(ValueError, match="needs Label Studio's URL"):
        resolve_image_url("/data/upload/1/a.png", None)
    with pytest.raises(ValueError, match="scheme s3: serve it through Label Studio"):
        resolve_image_url("s3://bucket/a.png", ls)
