"""Label Studio ML backend, the part without HTTP: label configs, tasks and predictions.

Label Studio sends tasks (JSON objects with ``data``, ``annotations``, ...) and a label config
(XML); an image classification project has a ``<Choices>`` control whose ``toName`` is an
``<Image>`` object. This module reads that config, maps Label Studio's choice values to the
served model's class names, picks each task's image reference and current annotation, and turns
hardscore's scores into Label Studio predictions. The HTTP service is
``hardscore_client.label_studio_server`` (needs the ``label-studio`` extra).
"""

from __future__ import annotations

import math
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hardscore_client.messages import ScoreResult

#: Scores a prediction's ``score`` can carry, and the sort order that puts the hardest task
#: first in Label Studio's "Prediction score" column.
SCORE_CHOICES: dict[str, str] = {
    "confidence": "ascending",  # max probability, [1/C, 1]; high = confident pre-label
    "hardness": "descending",  # entropy, [0, ln C]
    "hardness_normalized": "descending",  # entropy / ln C, [0, 1]
    "margin": "ascending",  # top-1 minus top-2 probability, [0, 1]
}
QA_SUFFIX = "-label-qa"


class LabelConfigError(ValueError):
    """The project's label config has no Choices control over an Image (or is not XML)."""


@dataclass(frozen=True)
class ChoicesControl:
    """The control the backend fills: ``from_name`` (Choices name), ``to_name`` (Image name),
    ``value_key`` (the task data key of the image, ``$image`` -> ``image``), the choice values in
    config order and each value's model class name (its ``alias`` if set, else the value)."""

    from_name: str
    to_name: str
    value_key: str
    choices: tuple[str, ...]
    class_of_choice: Mapping[str, str]

    def choice_for_class(self, class_name: str) -> str | None:
        """The choice value a model class is shown as (None: not offered by the project)."""
        for choice, name in self.class_of_choice.items():
            if name == class_name:
                return choice
        return None


def parse_label_config(xml: str) -> ChoicesControl:
    """The first ``<Choices>`` whose ``toName`` names an ``<Image>`` with a ``$key`` value."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    for el in root.iter():
        if el.tag != "Choices":
            continue
        to_name = el.get("toName", "")
        value = images.get(to_name)
        if value is None or not value.startswith("$") or len(value) < 2:
            continue
        choices: list[str] = []
        class_of_choice: dict[str, str] = {}
        for choice in el.iter("Choice"):
            v = choice.get("value")
            if v is None:
                continue
            choices.append(v)
            class_of_choice[v] = choice.get("alias") or v
        if not choices:
            raise LabelConfigError(f"<Choices name={el.get('name')!r}> has no <Choice> values")
        return ChoicesControl(el.get("name", ""), to_name, value[1:], tuple(choices),
                              class_of_choice)
    raise LabelConfigError("label config has no <Choices> control over an <Image> with a "
                           "$data value: the backend serves image classification projects")


def image_ref(task: Mapping[str, Any], control: ChoicesControl) -> str:
    """The task's image reference (an upload path, a local-files URL, an http(s) URL)."""
    data = task.get("data")
    ref = data.get(control.value_key) if isinstance(data, Mapping) else None
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"task {task.get('id')} has no data.{control.value_key} image reference")
    return ref


def resolve_image_url(ref: str, label_studio_url: str | None) -> tuple[str, bool]:
    """(URL to fetch, whether to send Label Studio's API key) for an image reference.

    Paths (``/data/upload/...``, ``/data/local-files/?d=...``) are on Label Studio's host;
    http(s) URLs get the key only when they are on that host (same scheme and host:port).
    Raises ValueError for paths without a Label Studio URL and for other schemes (``s3://``).
    """
    base = (label_studio_url or "").rstrip("/")
    if ref.startswith(("http://", "https://")):
        if not base:
            return ref, False
        ls, url = urllib.parse.urlsplit(base), urllib.parse.urlsplit(ref)
        return ref, (url.scheme, url.netloc) == (ls.scheme, ls.netloc)
    if ref.startswith("/"):
        if not base:
            raise ValueError(f"image path {ref[:80]!r} needs Label Studio's URL: pass "
                             "--label-studio-url (or LABEL_STUDIO_URL)")
        return base + ref, True
    scheme = ref.split(":", 1)[0] if ":" in ref else ""
    raise ValueError(f"unsupported image reference {ref[:80]!r}"
                     + (f" (scheme {scheme}: serve it through Label Studio or as http(s))"
                        if scheme else ""))


def annotated_choice(task: Mapping[str, Any], control: ChoicesControl) -> str | None:
    """The choice of the task's latest non-cancelled annotation (None: no usable annotation).

    "Latest" is the highest annotation id; annotations without a choice for this control, or
    with several choices, do not count.
    """
    best: tuple[int, str] | None = None
    for ann in task.get("annotations") or ():
        if not isinstance(ann, Mapping) or ann.get("was_cancelled"):
            continue
        for item in ann.get("result") or ():
            if not isinstance(item, Mapping) or item.get("from_name") != control.from_name:
                continue
            picked = (item.get("value") or {}).get("choices")
            if isinstance(picked, list) and len(picked) == 1 and isinstance(picked[0], str):
                ann_id = ann.get("id")
                key = ann_id if isinstance(ann_id, int) else -1
                if best is None or key >= best[0]:
                    best = (key, picked[0])
    return None if best is None else best[1]


def choices_result(control: ChoicesControl, choice: str) -> list[dict[str, Any]]:
    """A prediction ``result``: one choices region for the control."""
    return [{
        "from_name": control.from_name,
        "to_name": control.to_name,
        "type": "choices",
        "value": {"choices": [choice]},
    }]


def task_predictions(
    result: ScoreResult,
    row: int,
    control: ChoicesControl,
    model_version: str,
    score_name: str,
    qa: bool,
) -> list[dict[str, Any]]:
    """Label Studio predictions of one scored row.

    The first carries the predicted class as a pre-annotation, ``model_version`` and the
    ``score_name`` score; when ``qa`` and the row has a given label, a second one (model version
    ``model_version + "-label-qa"``) carries ``label_issue_score`` (1 - p(annotated class), in
    [0, 1], higher = annotation more likely wrong). Empty if the row failed or the predicted
    class is not one of the project's choices.
    """
    predicted = int(result.predicted_class[row])
    if predicted < 0:
        return []
    choice = control.choice_for_class(result.class_names[predicted])
    if choice is None:
        return []
    region = choices_result(control, choice)
    out = [{"result": region, "score": float(getattr(result, score_name)[row]),
            "model_version": model_version}]
    if qa and result.label_issue_score is not None:
        issue = float(result.label_issue_score[row])
        if not math.isnan(issue):
            out.append({"result": region, "score": issue,
                        "model_version": model_version + QA_SUFFIX})
    return out


def class_labels(
    tasks: Sequence[Mapping[str, Any]], control: ChoicesControl, class_names: Sequence[str],
) -> list[str | None]:
    """Each task's annotated class name (None: no usable annotation, or a choice that is not a
    model class)."""
    known = set(class_names)
    out: list[str | None] = []
    for task in tasks:
        choice = annotated_choice(task, control)
        name = control.class_of_choice.get(choice) if choice is not None else None
        out.append(name if name in known else None)
    return out

