"""Imports the collection-verdict QA view into a real Label Studio with label-studio-sdk (run
by tests/e2e/test_label_studio.py in the Label Studio venv):

    python label_studio_qa_driver.py SPEC.json OUT.json

SPEC: ``url``, ``token`` (a personal access token), ``label_config`` and ``tasks`` (what
``hardscore label-studio qa-tasks`` wrote), ``storage`` (the folder of the images, under
Label Studio's LOCAL_FILES_DOCUMENT_ROOT), ``decision`` (the choice to annotate the first task
with). The driver creates a project with the config, connects the folder as local storage (not
synced: it only lets Label Studio serve those files), imports the tasks, annotates the first
and reads every task back with its annotations. OUT: the project, the tasks as read back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from label_studio_sdk import LabelStudio


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    ls = LabelStudio(base_url=spec["url"], api_key=spec["token"], timeout=300)
    project = ls.projects.create(title="verdict QA", label_config=spec["label_config"])
    ls.import_storage.local.create(project=project.id, path=spec["storage"],
                                   title="images", use_blob_urls=False)
    ls.projects.import_tasks(id=project.id, request=spec["tasks"])
    tasks = sorted(ls.tasks.list(project=project.id, page_size=1000), key=lambda t: t.id)
    first = tasks[0]
    ls.annotations.create(id=first.id, result=[{
        "from_name": "decision", "to_name": "image", "type": "choices",
        "value": {"choices": [spec["decision"]]}}])
    back = []
    for task in tasks:
        annotations = [{"id": a.id, "result": a.result, "was_cancelled": a.was_cancelled}
                       for a in ls.annotations.list(id=task.id)]
        back.append({"id": task.id, "data": task.data, "annotations": annotations})
    Path(out_path).write_text(json.dumps({"project": project.id, "tasks": back}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
