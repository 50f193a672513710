"""FiftyOne fields against FiftyOne itself: a real ``fiftyone`` install (its own venv, made by
``make fiftyone-venv``, with its bundled MongoDB) runs tests/e2e/fiftyone_check.py, which writes
the fields with hardscore_client.fiftyone_fields against a hardscore server started here, then
runs FiftyOne Brain's compute_hardness / compute_mistakenness on the same samples. Every written
value must equal FiftyOne's to 1e-12, and the label-issue scores the server's own. The
collection-verdict fields (variant "fiftyone") must equal what Brain's compute_uniqueness,
compute_representativeness, compute_near_duplicates and compute_leaky_splits write to 1e-9.
An image that fails gets None in every field (Brain's mistakenness would say 1.0 for a sample
with a ground truth and no prediction), and a model version of a server with several is scored
when named (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_repository_clients import write_version

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split

from server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
FIFTYONE_PYTHON = ROOT / ".venv-fiftyone" / "bin" / "python"
CHECK = Path(__file__).resolve().parent / "fiftyone_check.py"
TOLERANCE = 1e-12


def mongod_pids(db_dir: Path) -> list[int]:
    """Processes whose command line names ``db_dir`` (the mongod FiftyOne started for us)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "mongod" in cmdline and str(db_dir) in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A model repository: digits versions 1 and 2 (their temperatures differ), both serving."""
    repo = tmp_path_factory.mktemp("repo")
    write_version(repo, "digits", 1)
    write_version(repo, "digits", 2)
    with ServerProcess("--model-repository", str(repo), "--version-policy", "all").start() as s:
        yield s


@pytest.fixture(scope="module")
def report(image_server, repo_server, tmp_path_factory) -> dict:
    if not FIFTYONE_PYTHON.exists():
        pytest.fail("the FiftyOne venv is missing: make fiftyone-venv (make test makes it)")
    work = tmp_path_factory.mktemp("fiftyone")
    _, _, images, labels = heldout_split()
    rng = np.random.default_rng(0)
    samples = []
    for i in range(60):
        path = work / f"digit-{i:03d}.png"
        path.write_bytes(encode_png(images[i]))
        label: str | None = str(int(labels[i]))
        if i % 6 == 0:
            label = str(int(rng.integers(10)))  # some labels wrong (or right by chance)
        samples.append({"path": str(path), "label": label})
    samples[3]["label"] = None  # no ground truth
    samples[4]["label"] = "zebra"  # a ground truth that is no class of the model
    (work / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    samples.append({"path": str(work / "broken.png"), "label": "7"})  # no prediction
    spec = {"server": image_server.target, "images": samples, "seed": 1, "classes": 5,
            "logits_rows": 300, "collection": True,
            "repository": {"server": repo_server.target, "model": "digits", "version": "1"}}
    (work / "spec.json").write_text(json.dumps(spec))
    db_dir = work / "db"
    env = {**os.environ, "HOME": str(work), "FIFTYONE_DATABASE_DIR": str(db_dir),
           "FIFTYONE_DO_NOT_TRACK": "true", "PYTHONPATH": os.pathsep.join(
               str(ROOT / p) for p in ("client", "proto"))}
    proc = subprocess.run([str(FIFTYONE_PYTHON), str(CHECK), str(work / "spec.json")],
                          capture_output=True, text=True, timeout=420, env=env, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    deadline = time.monotonic() + 30  # FiftyOne stops its mongod when its last client exits
    while mongod_pids(db_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = mongod_pids(db_dir)
    for pid in leftover:
        os.kill(pid, 15)
    assert not leftover, f"mongod still running after the check: {leftover}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["samples"] = samples
    for source in ("images", "logits"):  # the figures (pytest -s shows them)
        print(source, {k: v for k, v in out[source].items() if isinstance(v, dict | int | float)})
    print("fiftyone", out["fiftyone"], "database ready after", out["database_ready_s"], "s;",
          "check", out["seconds"], "s")
    return out


@pytest.mark.parametrize("source", ["images", "logits"])
@pytest.mark.parametrize("name", ["hardness", "mistakenness", "mistakenness_logits"])
def test_written_fields_equal_fiftyone_brains_own(report, source, name):
    diff = report[source][name]
    # the broken file: None here; Brain's mistakenness says 1.0 (a ground truth, no prediction)
    failed = 1 if source == "images" and name != "hardness" else 0
    assert diff["none_mismatch"] == failed, diff
    assert diff["compared"] > 0 and diff["max_abs_diff"] <= TOLERANCE, diff


def test_images_scored_fields_and_edge_cases(report, image_client):
    images = report["images"]
    assert images["scored"] == 61 - 1 and len(images["failed"]) == 1
    assert images["failed"][0].startswith("decode")
    assert images["fields"] == ["hardscore", "hardness", "mistakenness", "label_issue_score",
                                "margin_issue_score"]
    assert images["hardness"]["nones"] == 1  # the broken file
    assert images["mistakenness"]["nones"] == 1  # the failed image: no score field at all
    samples = report["samples"]
    # The label-issue scores are the server's, where the label is a class of the model.
    paths = [s["path"] for s in samples[:-1]]
    labels = [int(s["label"]) if s["label"] not in (None, "zebra") else None for s in samples[:-1]]
    direct = image_client.score_images([Path(p).read_bytes() for p in paths], labels)
    got = np.array([np.nan if v is None else v for v in images["label_issue_score"][:-1]])
    np.testing.assert_allclose(got, direct.label_issue_score, rtol=0, atol=TOLERANCE)
    assert np.isnan(got[3]) and np.isnan(got[4])  # no label; a label that is no class
    margin = np.array([np.nan if v is None else v for v in images["margin_issue_score"][:-1]])
    np.testing.assert_allclose(margin, direct.margin_issue_score, rtol=0, atol=TOLERANCE)
    assert images["predicted"][:-1] == [str(c) for c in direct.predicted_class]
    assert images["predicted"][-1] is None


def test_stored_logits_label_scores(report):
    logits = report["logits"]
    assert logits["scored"] == 300 - 28  # every 11th sample has no prediction
    assert logits["label_issue_compared"] > 200
    assert logits["label_issue_vs_numpy"] <= TOLERANCE


def test_collection_fields_equal_brains_own(report):
    """uniqueness, representativeness, duplicates_view's type / id / distance fields and the
    leak tag, written from the same embeddings as Brain's functions."""
    got = report["collection"]
    assert got["fields"][:5] == ["uniqueness", "representativeness", "dup_type", "dup_id",
                                 "dup_dist"] and "tag:leak" in got["fields"]
    for name in ("uniqueness", "representativeness", "dup_dist"):
        diff = got[name]
        assert diff["none_mismatch"] == 0 and diff["compared"] > 0, (name, diff)
        assert diff["max_abs_diff"] <= 1e-9, (name, diff)
    assert got["dup_type_equal"] and got["dup_id_equal"] and got["duplicates"] >= 3
    assert got["planted"] == ["duplicate"] * 3  # the planted copies
    assert got["leaks"] == got["fo_leaks"] and got["leaks"]


def test_a_named_model_version_writes_its_scores(report, repo_server):
    """score_images(..., model_name=, model_version=) on a server with two versions: the fields
    are version 1's (not the highest), the failed image has None in every one."""
    named = report["named"]
    assert (named["model_name"], named["model_version"]) == ("digits", "1")
    assert named["scored"] == 60 and named["failed"][0].startswith("decode")
    paths = [s["path"] for s in report["samples"][:-1]]
    with ScoringClient(repo_server.target) as client:
        v1 = client.score_images([Path(p).read_bytes() for p in paths], model_name="digits",
                                 model_version="1")
        v2 = client.score_images([Path(p).read_bytes() for p in paths], model_name="digits",
                                 model_version="2")
    np.testing.assert_allclose(named["hardness"][:-1], v1.hardness, rtol=0, atol=TOLERANCE)
    assert np.abs(v1.hardness - v2.hardness).max() > 1e-3
    assert named["predicted"][:-1] == [str(c) for c in v1.predicted_class]
    for field in ("hardness", "mistakenness", "label_issue_score", "predicted"):
        assert named[field][-1] is None, field
