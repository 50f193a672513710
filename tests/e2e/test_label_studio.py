"""``hardscore label-studio`` against a real Label Studio (1.23, its own venv made by
``make label-studio``), driven with label-studio-sdk.

Label Studio runs on 127.0.0.1 with SQLite in a temporary folder; the test logs in, creates a
personal access token, and the driver (tests/e2e/label_studio_driver.py, in Label Studio's venv)
creates a digits project, uploads the 540 held-out digit PNGs, annotates 108 of them with the
example's labels (all 54 corrupted ones among them), connects the backend and retrieves
predictions. Every task's prediction must equal ScoreImages on the same PNG, and Label Studio's
own "prediction score" order for the label-QA model version must put the corrupted annotations
first.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests
from PIL import Image

from hardscore_client import ScoringClient

from conftest import chromium
from digits_example import write_digits_example
from server_process import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
LS_VENV = REPO / ".venv-label-studio"
LS_BIN = LS_VENV / "bin" / "label-studio"
DRIVER = Path(__file__).with_name("label_studio_driver.py")
EMAIL, PASSWORD = "qa@hardscore.test", "hardscore-test-password"
BACKEND_USER, BACKEND_PASSWORD = "labelling-platform", "backend-test-password"
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="digit" toName="image" choice="single">
    <Choice value="zero" alias="0"/><Choice value="one" alias="1"/><Choice value="two" alias="2"/>
    <Choice value="three" alias="3"/><Choice value="four" alias="4"/>
    <Choice value="five" alias="5"/><Choice value="six" alias="6"/>
    <Choice value="seven" alias="7"/><Choice value="eight" alias="8"/>
    <Choice value="nine" alias="9"/>
  </Choices>
</View>"""
CHOICES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_ANNOTATED = 108
LS_START_TIMEOUT = 420  # the first start runs Django's migrations: minutes on 2 busy cores

pytestmark = pytest.mark.timeout(900)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}: "
                               f"{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not up after {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def local_files_root(tmp_path_factory) -> Path:
    """Label Studio's LOCAL_FILES_DOCUMENT_ROOT in these tests."""
    root = tmp_path_factory.getbasetemp() / "label-studio-files"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory) -> Iterator[str]:
    if not LS_BIN.exists():
        pytest.fail(f"{LS_BIN} is missing: `make label-studio` makes it (`make test` does)")
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite",
           # The backend and its webhook are on 127.0.0.1: Label Studio blocks that by default.
           "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
           "LATEST_VERSION_CHECK": "false",
           # the verdict QA test's images, served as local files
           "LOCAL_FILES_SERVING_ENABLED": "true",
           "LOCAL_FILES_DOCUMENT_ROOT": str(local_files_root(tmp_path_factory)),
           "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = data / "label-studio.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data), "--username", EMAIL,
             "--password", PASSWORD], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_http(f"{url}/health", proc, LS_START_TIMEOUT, log)
        print(f"Label Studio up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield url
    finally:
        stop(proc)


@functools.cache
def personal_access_token(url: str) -> tuple[str, dict[str, str]]:
    """Logs in through the web form and creates a personal access token (POST /api/token/):
    Label Studio 1.23's token flow (legacy tokens are off by default). Returns the token and
    the session cookies (for the browser). Once per Label Studio: a user holds one valid
    token, a second POST is refused (409)."""
    s = requests.Session()
    s.get(f"{url}/user/login/", timeout=60).raise_for_status()
    r = s.post(f"{url}/user/login/", timeout=60, allow_redirects=False,
               data={"email": EMAIL, "password": PASSWORD,
                     "csrfmiddlewaretoken": str(s.cookies["csrftoken"])},
               headers={"Referer": f"{url}/user/login/"})
    assert r.status_code == 302, (r.status_code, r.text[:500])
    r = s.post(f"{url}/api/token/", timeout=60,
               headers={"X-CSRFToken": str(s.cookies["csrftoken"]), "Referer": f"{url}/"})
    assert r.status_code == 201, (r.status_code, r.text[:500])
    return str(r.json()["token"]), {c.name: str(c.value) for c in s.cookies}


@pytest.fixture(scope="module")
def hardscore() -> Iterator[ServerProcess]:
    server = start_server(["--host", "127.0.0.1", "--max-batch-size", "32"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run(label_studio, hardscore, tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("ls-run")
    write_digits_example(root / "digits")
    with (root / "digits" / "TRUE_LABELS.csv").open() as f:
        truth = list(csv.DictReader(f))
    token, cookies = personal_access_token(label_studio)
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_API_KEY": token, "LABEL_STUDIO_URL": label_studio,
           "HARDSCORE_LABEL_STUDIO_PASSWORD": BACKEND_PASSWORD}
    log = root / "backend.log"
    with log.open("wb") as out:
        backend = subprocess.Popen(
            [sys.executable, "-m", "hardscore_client.cli", "label-studio", "--server",
             hardscore.target, "--port", str(port), "--score", "hardness", "--batch-size", "64",
             "--basic-auth-user", BACKEND_USER],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", backend, 60, log)
        # The 54 corrupted labels and the first 54 clean ones are annotated.
        corrupted = [r for r in truth if r["corrupted"] == "1"]
        clean = [r for r in truth if r["corrupted"] == "0"][: N_ANNOTATED - len(corrupted)]
        spec = {
            "url": label_studio, "token": token, "backend": f"http://127.0.0.1:{port}",
            "basic_auth": [BACKEND_USER, BACKEND_PASSWORD],
            "label_config": LABEL_CONFIG,
            "images": [str(root / "digits" / r["file"]) for r in truth],
            "annotations": {Path(r["file"]).name: CHOICES[int(r["given_label"])]
                            for r in corrupted + clean},
            "fix": {Path(r["file"]).name: CHOICES[int(r["true_label"])]
                    for r in corrupted + clean},
        }
        (root / "spec.json").write_text(json.dumps(spec))
        started = time.monotonic()
        driver = subprocess.run(
            [str(LS_VENV / "bin" / "python"), str(DRIVER), str(root / "spec.json"),
             str(root / "out.json")], capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0, (driver.stderr[-4000:], log.read_text()[-3000:])
        out = json.loads((root / "out.json").read_text())
        out["driver_seconds"] = time.monotonic() - started
        out["truth"] = {Path(r["file"]).name: r for r in truth}
        out["root"] = str(root)
        out["backend_log"] = str(log)
        out["backend_url"] = spec["backend"]
        out["cookies"] = cookies
        out["token"] = token
        print(json.dumps({"seconds": out["seconds"]}), file=sys.stderr)
        for line in log.read_text().splitlines():
            if "predict:" in line:
                print(line, file=sys.stderr)
        yield out
    finally:
        stop(backend)


def test_label_studio_uses_a_personal_access_token(run):
    assert run["pat_parts"] == 3  # a JWT
    assert run["legacy_token_status"] == 401  # "Token <key>" is refused
    assert run["backend"]["state"] == "CO", run["backend"]  # connected
    assert run["backend"]["model_version"] == "hardscore-digits-resnet-v1-hardness"


def test_the_backend_asks_for_basic_auth_and_label_studio_sends_it(run):
    # Label Studio connected with "Basic auth" (test above: state CO) and every prediction
    # came through it; without the credentials, or with wrong ones, only liveness answers.
    url = run["backend_url"]
    body = {"tasks": [], "label_config": LABEL_CONFIG}
    assert requests.get(f"{url}/health", timeout=10).json()["status"] == "UP"
    for auth in (None, (BACKEND_USER, "wrong"), ("someone", BACKEND_PASSWORD)):
        for method, path in (("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"),
                             ("GET", "/versions")):
            r = requests.request(method, url + path, json=body, auth=auth, timeout=10)
            assert r.status_code == 401, (path, auth, r.status_code)
            assert r.headers["WWW-Authenticate"] == 'Basic realm="hardscore"'
            assert "basic auth required" in r.json()["error"]
    r = requests.post(f"{url}/predict", json=body, auth=(BACKEND_USER, BACKEND_PASSWORD),
                      timeout=10)
    assert r.status_code == 200 and r.json()["results"] == []
    assert BACKEND_PASSWORD not in Path(run["backend_log"]).read_text()


def test_every_task_gets_the_prediction_scoreimages_gives(run, hardscore):
    files = {int(k): v for k, v in run["files"].items()}
    annotated = {int(k): v for k, v in run["annotated"].items()}
    assert len(files) == 540 and len(annotated) == N_ANNOTATED
    version = run["backend"]["model_version"]
    by_task: dict[int, dict[str, dict]] = {}
    for p in run["predictions"]:
        assert p["model_version"] not in by_task.setdefault(p["task"], {})
        by_task[p["task"]][p["model_version"]] = p
    assert set(by_task) == set(files)
    assert {t for t, v in by_task.items() if version + "-label-qa" in v} == set(annotated)
    assert all(len(v) == (2 if t in annotated else 1) for t, v in by_task.items())

    ids = sorted(files)
    root = Path(run["root"]) / "digits"
    images = [(root / run["truth"][files[t]]["file"]).read_bytes() for t in ids]
    labels = [str(CHOICES.index(annotated[t])) if t in annotated else None for t in ids]
    with ScoringClient(hardscore.target) as client:
        ref = client.score_images(images, labels)
    assert not ref.errors
    agree = 0
    for row, t in enumerate(ids):
        main = by_task[t][version]
        assert main["result"] == [{"from_name": "digit", "to_name": "image", "type": "choices",
                                   "value": {"choices": [CHOICES[ref.predicted_class[row]]]}}]
        assert main["score"] == pytest.approx(float(ref.hardness[row]), abs=1e-12)
        if t in annotated:
            qa = by_task[t][version + "-label-qa"]
            assert qa["result"] == main["result"]
            assert qa["score"] == pytest.approx(float(ref.label_issue_score[row]), abs=1e-12)
        agree += 1
    assert agree == 540


def test_label_studio_sorts_hardest_first_and_wrong_annotations_first(run, hardscore):
    files = {int(k): v for k, v in run["files"].items()}
    annotated = {int(k): v for k, v in run["annotated"].items()}
    scores = {(p["task"], p["model_version"]): p["score"] for p in run["predictions"]}
    version = run["backend"]["model_version"]

    # Hardest first: Label Studio's order is descending hardness.
    order = run["hardness_order"]
    assert sorted(order) == sorted(files)
    hardness = [scores[(t, version)] for t in order]
    assert hardness == sorted(hardness, reverse=True)

    # Label QA: the annotated tasks, most likely wrong first, then the rest (no QA score).
    qa = run["qa_order"]
    assert sorted(qa) == sorted(files)
    qa_scores = [scores[(t, version + "-label-qa")] for t in qa[:N_ANNOTATED]]
    assert set(qa[:N_ANNOTATED]) == set(annotated)
    assert qa_scores == sorted(qa_scores, reverse=True)
    corrupted = [run["truth"][files[t]]["corrupted"] == "1" for t in qa[:N_ANNOTATED]]
    n_corrupted = sum(corrupted)
    assert n_corrupted == 54
    # The embedded model finds every one of the 54 wrong annotations before any right one.
    assert corrupted[:54] == [True] * 54, corrupted[:60]
    assert np.isfinite(qa_scores).all()


def test_fixing_an_annotation_refreshes_its_qa_prediction_through_the_webhook(run, hardscore):
    """The annotator corrects the top-ranked annotation; Label Studio's webhook reaches the
    backend, which replaces the task's QA prediction with the score of the new label."""
    refreshed = run["refreshed"]
    assert refreshed is not None, "the QA prediction was not replaced within 120 s"
    task = refreshed["task"]
    assert task == run["qa_order"][0] and refreshed["count"] == 1
    row = run["truth"][run["files"][str(task)]]
    assert row["corrupted"] == "1"
    image = (Path(run["root"]) / "digits" / row["file"]).read_bytes()
    with ScoringClient(hardscore.target) as client:
        ref = client.score_images([image], [row["true_label"]])
    assert ref.label_issue_score is not None
    assert refreshed["score"] == pytest.approx(float(ref.label_issue_score[0]), abs=1e-12)
    assert refreshed["score"] < 0.5  # the right label: the model agrees with it now


SHOT_W, SHOT_H = 1400, 900



async def _cdp_screenshot(browser: str, url: str, cookies: dict[str, str], shot: Path,
                          profile: Path) -> dict:
    """Opens ``url`` in headless Chromium with the session ``cookies`` (Chrome DevTools
    Protocol over a websocket), waits for the data manager's thumbnails, saves a PNG."""
    proc = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--remote-debugging-port=0", f"--user-data-dir={profile}",
        f"--window-size={SHOT_W},{SHOT_H}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                page = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10_000))

                async def call(method: str, **params: object) -> dict:
                    i = next(ids)
                    await ws.send_json({"id": i, "method": method, "params": params})
                    while True:
                        msg = await ws.receive_json(timeout=60)
                        if msg.get("id") == i:
                            assert "error" not in msg, msg
                            return dict(msg["result"])

                async def evaluate(expr: str) -> object:
                    res = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                    return res["result"].get("value")

                await call("Network.enable")
                host = urllib.parse.urlsplit(url).hostname
                for name, value in cookies.items():
                    await call("Network.setCookie", name=name, value=value, domain=host,
                               path="/")
                await call("Emulation.setDeviceMetricsOverride", width=SHOT_W, height=SHOT_H,
                           deviceScaleFactor=1, mobile=False)
                await call("Page.navigate", url=url)
                loaded = 0
                for _ in range(240):
                    await asyncio.sleep(0.5)
                    loaded = int(await evaluate(  # type: ignore[call-overload]
                        "Array.from(document.images).filter("
                        "i => i.complete && i.naturalWidth > 0 && i.src.includes('/data/upload/')"
                        ").length") or 0)
                    if loaded >= 10:
                        break
                await asyncio.sleep(2.0)
                text = str(await evaluate("document.body.innerText"))
                data = (await call("Page.captureScreenshot", format="png"))["data"]
                shot.write_bytes(base64.b64decode(data))
                return {"thumbnails": loaded, "text": text}
    finally:
        proc.terminate()
        await proc.wait()


def test_browser_shows_the_project_sorted_by_hardness(run, label_studio, tmp_path):
    """The data manager in headless Chromium, on the "Hardest first" tab: the screenshot in
    docs/label-studio.png comes from this test (copy it from the path it prints)."""
    browser = chromium()
    shot = tmp_path / "label-studio.png"
    url = f"{label_studio}/projects/{run['project']}/data?tab={run['views']['hardness']}"
    page = asyncio.run(_cdp_screenshot(browser, url, run["cookies"], shot, tmp_path / "p"))
    keep = os.environ.get("HARDSCORE_SCREENSHOT_DIR")  # to refresh docs/label-studio.png
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
    assert "Hardest first" in page["text"] and "Label QA" in page["text"], page["text"][:500]
    assert page["thumbnails"] >= 10
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape == (SHOT_H, SHOT_W, 3)
    # A rendered page, not a blank one: many colours, and the dark digit thumbnails.
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    assert (image.max(axis=2) < 40).sum() > 500


def test_rescore_gives_label_qa_to_annotations_the_webhook_missed(run, label_studio, hardscore):
    """Annotations saved while the webhook could not reach the backend (here: its basic-auth
    header removed, as before it is added) got no label-QA score, and Retrieve Predictions
    skips tasks that have a prediction; `hardscore label-studio rescore` (and POST /rescore)
    score every annotated task again. Runs last: it changes the project."""
    project, token = run["project"], run["token"]
    access = requests.post(f"{label_studio}/api/token/refresh/", json={"refresh": token},
                           timeout=60).json()["access"]
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {access}"
    hooks = api.get(f"{label_studio}/api/webhooks/", params={"project": project},
                    timeout=60).json()
    [hook] = [h for h in hooks if h["url"] == run["backend_url"] + "/webhook"]
    api.patch(f"{label_studio}/api/webhooks/{hook['id']}/", json={"headers": {}},
              timeout=60).raise_for_status()

    files = {int(k): v for k, v in run["files"].items()}
    annotated = {int(k) for k in run["annotated"]}
    fresh = sorted(set(files) - annotated)[:6]
    labels = {}
    for n, task in enumerate(fresh):
        true = int(run["truth"][files[task]]["true_label"])
        label = true if n % 2 == 0 else (true + 1) % 10  # three right, three wrong
        labels[task] = label
        api.post(f"{label_studio}/api/tasks/{task}/annotations/", timeout=60, json={"result": [{
            "from_name": "digit", "to_name": "image", "type": "choices",
            "value": {"choices": [CHOICES[label]]}}]}).raise_for_status()
    qa_version = run["backend"]["model_version"] + "-label-qa"

    def qa_predictions() -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for p in api.get(f"{label_studio}/api/predictions/", params={"project": project},
                         timeout=60).json():
            if p["model_version"] == qa_version:
                out.setdefault(p["task"], []).append(p["score"])
        return out

    time.sleep(3)  # the webhook, refused by the backend (401), changes nothing
    before = qa_predictions()
    assert not set(fresh) & set(before), "the webhook without credentials scored a task"
    assert set(before) == annotated

    env = {**os.environ, "LABEL_STUDIO_API_KEY": token}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_client.cli", "label-studio", "rescore", "--project",
         str(project), "--server", hardscore.target, "--label-studio-url", label_studio],
        env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(annotated) + len(fresh)
    assert f"project {project}: {n} annotated tasks, {n} label-QA predictions replaced, 0 not " \
        "scored" in proc.stdout, proc.stdout
    print(f"rescore of {n} annotated tasks: {seconds:.1f} s", file=sys.stderr)

    after = qa_predictions()
    assert set(after) == annotated | set(fresh)
    assert all(len(v) == 1 for v in after.values()), "one QA prediction per task, replaced"
    root = Path(run["root"]) / "digits"
    images = [(root / run["truth"][files[t]]["file"]).read_bytes() for t in fresh]
    with ScoringClient(hardscore.target) as client:
        ref = client.score_images(images, [str(labels[t]) for t in fresh])
    assert ref.label_issue_score is not None
    for row, task in enumerate(fresh):
        assert after[task][0] == pytest.approx(float(ref.label_issue_score[row]), abs=1e-12)
    wrong = [after[t][0] for n_, t in enumerate(fresh) if n_ % 2]
    right = [after[t][0] for n_, t in enumerate(fresh) if not n_ % 2]
    assert min(wrong) > max(right), (wrong, right)

    # the same through the running backend's route
    r = requests.post(run["backend_url"] + "/rescore", json={"project": project},
                      auth=(BACKEND_USER, BACKEND_PASSWORD), timeout=300)
    assert r.status_code == 200, r.text
    assert r.json() == {"project": project, "annotated": n, "rescored": n, "not_scored": 0}
    assert requests.post(run["backend_url"] + "/rescore", json={"project": project},
                         timeout=30).status_code == 401
    assert all(len(v) == 1 for v in qa_predictions().values())


def test_verdict_qa_view_imports_and_reads_back(label_studio, tmp_path_factory, tmp_path):
    """`hardscore label-studio qa-tasks` on a verdicts table: a project made with its config
    takes its tasks; the first task (a leak) has its kept duplicate's image beside it, served by
    Label Studio from local files; an annotation made through the SDK reads back as a decision.
    Needs only Label Studio (no scoring server)."""
    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from test_report_verdicts import LEAK, LEAK_KEPT, OUTLIER, _table

    from hardscore_client.label_studio_qa import qa_decisions
    from hardscore_client.tables import write_table

    files = local_files_root(tmp_path_factory)
    images = files / "qa-images"
    columns = _table(images)
    table = tmp_path / "scores.verdicts.csv"
    write_table(table, columns)
    proc = subprocess.run(
        [sys.executable, "-m", "hardscore_client.cli", "label-studio", "qa-tasks", str(table),
         "--out", str(tmp_path / "qa"), "--image-root", str(files),
         "--image-url", "/data/local-files/?d="], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    token, cookies = personal_access_token(label_studio)
    spec = {"url": label_studio, "token": token, "storage": str(images),
            "label_config": (tmp_path / "qa.xml").read_text(),
            "tasks": json.loads((tmp_path / "qa.json").read_text()),
            "decision": "remove duplicate"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    driver = subprocess.run(
        [str(LS_VENV / "bin" / "python"), str(REPO / "tests" / "e2e" /
                                              "label_studio_qa_driver.py"),
         str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300)
    assert driver.returncode == 0, driver.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    tasks = out["tasks"]
    assert [t["data"]["row"] for t in tasks] == [t["data"]["row"] for t in spec["tasks"]]
    first = tasks[0]["data"]
    assert (first["row"], first["other_row"], first["kind"], first["leak"]) == (
        LEAK, LEAK_KEPT, "near duplicate", True)
    assert tasks[-1]["data"]["row"] == OUTLIER and tasks[-1]["data"]["kind"] == "outlier"
    # Label Studio serves both images of the task (the session of a logged-in annotator)
    browser = requests.Session()
    browser.cookies.update(cookies)
    for key, row in (("image", LEAK), ("other_image", LEAK_KEPT)):
        r = browser.get(label_studio + first[key], timeout=60)
        assert r.status_code == 200, (key, first[key], r.status_code)
        assert r.content == Path(columns["path"][row]).read_bytes()
    # the SDK's annotation, read back as the QA decision
    [decision] = qa_decisions(tasks)
    assert (decision.row, decision.decision, decision.other_row) == (LEAK, "remove duplicate",
                                                                      LEAK_KEPT)
