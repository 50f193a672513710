"""Drives a real Label Studio with label-studio-sdk (run by tests/e2e/test_label_studio.py in
the Label Studio venv, which has the SDK; the project's venv does not need it).

    python label_studio_driver.py SPEC.json OUT.json

SPEC: ``url``, ``token`` (a personal access token: Label Studio 1.23's token flow, a JWT refresh
token the SDK exchanges for access tokens), ``images`` (PNG paths), ``annotations`` ({file
name: choice}), ``fix`` ({file name: the true choice}), ``backend`` (the ML backend's URL),
``label_config``. The driver creates a project, uploads the PNGs, annotates some, connects the
backend, retrieves predictions for every task, reads the data manager's order by prediction
score for the backend's model version and for its label-QA version, then corrects the top
QA-ranked annotation and waits for the backend's webhook to replace that task's QA prediction.
OUT: the token kind, tasks, predictions, orders, the refreshed prediction, timings (seconds).
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio


def access_token(url: str, pat: str) -> str:
    r = requests.post(f"{url}/api/token/refresh/", json={"refresh": pat}, timeout=60)
    r.raise_for_status()
    return str(r.json()["access"])


def ordered_ids(ls: LabelStudio, project: int, title: str) -> tuple[int, list[int]]:
    """A data manager tab sorted by prediction score, highest first: (its id, the task ids in
    its order)."""
    hidden = ["tasks:inner_id", "tasks:completed_at", "tasks:cancelled_annotations",
              "tasks:total_predictions", "tasks:annotators", "tasks:annotations_ids",
              "tasks:predictions_model_versions", "tasks:file_upload", "tasks:storage_filename",
              "tasks:created_at", "tasks:updated_at", "tasks:updated_by", "tasks:avg_lead_time",
              "tasks:draft_exists"]
    view = ls.views.create(project=project, data={
        "title": title, "ordering": ["-tasks:predictions_score"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden}})
    return view.id, [t.id for t in ls.tasks.list(project=project, view=view.id, page_size=1000)]


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    url = spec["url"]
    t = {}
    start = time.monotonic()
    pat = spec["token"]
    # A legacy token ("Token <key>") is refused by default in 1.23: prove it, then use the PAT.
    legacy = requests.get(f"{url}/api/projects/", timeout=60,
                          headers={"Authorization": f"Token {pat}"}).status_code
    ls = LabelStudio(base_url=url, api_key=pat, timeout=300)
    project = ls.projects.create(title="digits", label_config=spec["label_config"])
    t["token_and_project"] = time.monotonic() - start

    start = time.monotonic()
    paths = [Path(p) for p in spec["images"]]
    for at in range(0, len(paths), 100):  # Django accepts 100 files per request
        # One form field per file: Label Studio keeps one upload per field name.
        files = [(p.name, (p.name, p.read_bytes(), "image/png")) for p in paths[at:at + 100]]
        r = requests.post(f"{url}/api/projects/{project.id}/import", files=files, timeout=300,
                          headers={"Authorization": f"Bearer {access_token(url, pat)}"})
        assert r.status_code == 201, (r.status_code, r.text[:500])
    tasks = list(ls.tasks.list(project=project.id, page_size=1000))
    file_of = {}
    for task in tasks:
        name = re.sub(r"^[0-9a-f]{8}-", "", task.data["image"].rsplit("/", 1)[-1])
        file_of[task.id] = name
    t["upload"] = time.monotonic() - start

    start = time.monotonic()
    annotated = {}
    for task_id, name in file_of.items():
        choice = spec["annotations"].get(name)
        if choice is not None:
            ls.annotations.create(id=task_id, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [choice]}}])
            annotated[task_id] = choice
    t["annotate"] = time.monotonic() - start

    start = time.monotonic()
    user, password = spec["basic_auth"]
    backend = ls.ml.create(project=project.id, url=spec["backend"], title="hardscore",
                           is_interactive=False, auth_method="BASIC_AUTH",
                           basic_auth_user=user, basic_auth_pass=password)
    # Label Studio made a project webhook to <backend>/webhook for annotation events; it sends
    # no credentials of its own: it gets the basic-auth header (docs/label-studio.md).
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    [hook] = [w for w in ls.webhooks.list(project=str(project.id))
              if w.url == spec["backend"].rstrip("/") + "/webhook"]
    ls.webhooks.update(id=hook.id, headers={"Authorization": f"Basic {basic}"})
    t["connect"] = time.monotonic() - start
    start = time.monotonic()
    # "Retrieve Predictions" on 135 tasks at a time: Label Studio sends each selection to the
    # backend in one request and waits for it at most 100 s (ML_TIMEOUT_PREDICT).
    ids = sorted(file_of)
    for at in range(0, len(ids), 135):
        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": False, "included": ids[at:at + 135]})
    t["predict"] = time.monotonic() - start
    backend = ls.ml.get(id=backend.id)

    predictions = [
        {"task": p.task, "model_version": p.model_version, "score": p.score, "result": p.result}
        for p in ls.predictions.list(project=project.id)
    ]
    version = backend.model_version
    ls.projects.update(id=project.id, model_version=version)
    hardness_view, hardness_order = ordered_ids(ls, project.id, "Hardest first")
    ls.projects.update(id=project.id, model_version=version + "-label-qa")
    qa_view, qa_order = ordered_ids(ls, project.id, "Label QA")

    # Label QA after annotating: the annotator fixes the top-ranked annotation; the
    # backend's webhook scores the task again and replaces its QA prediction.
    start = time.monotonic()
    fixed = qa_order[0]
    [ann] = ls.annotations.list(id=fixed)
    ls.annotations.update(id=ann.id, result=[{
        "from_name": "digit", "to_name": "image", "type": "choices",
        "value": {"choices": [spec["fix"][file_of[fixed]]]}}])
    qa_version = version + "-label-qa"
    refreshed = None
    while refreshed is None and time.monotonic() - start < 120:
        time.sleep(0.5)
        qa = [p for p in ls.predictions.list(task=fixed) if p.model_version == qa_version]
        before = [p for p in predictions
                  if p["task"] == fixed and p["model_version"] == qa_version]
        if len(qa) == 1 and qa[0].score != before[0]["score"]:
            refreshed = {"task": fixed, "score": qa[0].score, "count": len(qa)}
    t["webhook"] = time.monotonic() - start
    ls.projects.update(id=project.id, model_version=version)  # hardest first, for the browser

    out = {
        "legacy_token_status": legacy, "pat_parts": len(pat.split(".")),
        "project": project.id, "files": {str(k): v for k, v in file_of.items()},
        "annotated": {str(k): v for k, v in annotated.items()},
        "backend": {"state": backend.state, "model_version": version,
                    "error": backend.error_message},
        "predictions": predictions, "hardness_order": hardness_order, "qa_order": qa_order,
        "refreshed": refreshed, "views": {"hardness": hardness_view, "qa": qa_view},
        "seconds": t,
    }
    Path(out_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
