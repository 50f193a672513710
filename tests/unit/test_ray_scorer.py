"""``ScoreInProcess`` (hardscore_server.tools.ray_scorer) without Ray: a batch scored in
process equals the server's image pipeline around the same model directory, with the columns of
the client's score tables; failed images are rows with their reason, in input order."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardscore_client.dataset import table_columns as client_columns
from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.model.runner import ModelRunner
from hardscore_server.pipeline.image_pipeline import ImageBatch, ImagePipeline, ImageScores
from hardscore_server.tools.ray_scorer import ScoreInProcess, main, read_uri
from hardscore_wire.scores import SCORE_NAMES


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scorer() -> ScoreInProcess:
    return ScoreInProcess(embeddings=True, execution_provider="cpu", threads=1)


@pytest.fixture(scope="module")
def blobs(digits) -> tuple[list[bytes], list[str]]:
    images, labels = digits
    picked = range(0, 540, 45)
    return ([png(images[i]) for i in picked],
            [str(int(labels[i])) for i in picked])


def served(blobs: list[bytes], labels: list[str | None]) -> ImageScores:
    """The same images through the server's pipeline around the same model directory."""
    async def run() -> ImageScores:
        runner = ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cpu", intra_op_threads=1)
        pipeline = ImagePipeline(runner, ServerConfig(), ServerMetrics())
        try:
            return await pipeline.score(ImageBatch(blobs, labels=labels,
                                                   include_embeddings=True), deadline=None)
        finally:
            await pipeline.close()

    return asyncio.run(run())


def test_a_batch_scores_as_the_servers_pipeline_with_the_clients_columns(scorer, blobs):
    data, labels = blobs
    data = [*data, b"not an image", data[0]]
    labels = [*labels, "3", "no-such-class"]
    paths = [f"/pool/{i}.png" for i in range(len(data))]
    batch = {"bytes": np.array(data, dtype=object), "path": np.array(paths, dtype=object),
             "label": np.array(labels, dtype=object), "split": np.full(len(data), "val",
                                                                       dtype=object)}
    got = scorer(batch)
    assert list(got) == [*client_columns(scorer.class_names), "embedding"]
    assert got["path"].tolist() == paths  # input order
    assert got["sha256"].tolist() == [hashlib.sha256(d).hexdigest() for d in data]
    assert got["split"].tolist() == ["val"] * len(data)

    ref = served(data, labels)
    errors = {i: e for i, e in ref.errors}
    assert sorted(errors) == [len(data) - 2, len(data) - 1]
    assert got["error"].tolist() == [errors[i].reason if i in errors else ""
                                     for i in range(len(data))]
    assert got["error"].tolist()[-2:] == ["decode", "label"]
    assert got["error_message"].tolist()[-2:] == [errors[i].message for i in sorted(errors)]
    for name in SCORE_NAMES:  # the same math on the same logits: equal, not close
        expected = getattr(ref.scores, name)
        np.testing.assert_array_equal(got[name], np.asarray(expected).astype(got[name].dtype),
                                      err_msg=name)
    probs = ref.scores.probabilities.astype(np.float32).astype(np.float64)  # as sent
    for c, name in enumerate(scorer.class_names):
        np.testing.assert_array_equal(got[f"p_{name}"], probs[:, c], err_msg=name)
    np.testing.assert_array_equal(got["embedding"], ref.embeddings)
    names = scorer.class_names
    assert got["prediction"].tolist() == [names[p] if p >= 0 else ""
                                          for p in got["predicted_class"].tolist()]
    assert (got["predicted_class"][-2:] == -1).all() and (got["given_label"][-2:] == -1).all()
    assert np.isnan(got["embedding"][-2:]).all()


def test_without_labels_the_label_scores_are_empty(scorer, blobs):
    data, _ = blobs
    got = scorer({"bytes": np.array(data[:3], dtype=object)})
    assert got["path"].tolist() == ["", "", ""]
    assert (got["given_label"] == -1).all() and np.isnan(got["label_issue_score"]).all()
    assert np.isfinite(got["confidence"]).all()


def test_uris_are_read_in_the_actor(scorer, blobs, tmp_path):
    data, labels = blobs
    (tmp_path / "a.png").write_bytes(data[0])
    (tmp_path / "empty.png").write_bytes(b"")
    uris = ["a.png", (tmp_path / "a.png").as_uri(), str(tmp_path / "missing.png"),
            str(tmp_path / "empty.png")]
    scorer.base = str(tmp_path)
    try:
        got = scorer({"uri": np.array(uris, dtype=object),
                      "label": np.array([labels[0]] * 4, dtype=object)})
    finally:
        scorer.base = None
    assert got["path"].tolist() == [str(tmp_path / "a.png")] * 2 + uris[2:]
    assert got["error"].tolist() == ["", "", "read", "empty"]
    assert got["sha256"].tolist()[2:] == ["", ""]
    np.testing.assert_array_equal(got["label_issue_score"][0], got["label_issue_score"][1])
    assert isinstance(read_uri("file://elsewhere/x.png"), Exception)


def test_the_command_explains_itself(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hardscore-ray-score")
    for flag in ("--manifest", "--out", "--model-dir", "--actors", "--ray-address"):
        assert flag in out


def test_the_in_process_scorer_stays_out_of_serving_code():
    # tools/ stands aside: nothing that serves imports it (test_import_rules checks it too)
    root = Path(__file__).resolve().parents[2] / "server" / "hardscore_server"
    users = [p for p in root.rglob("*.py") if "ray_scorer" in p.read_text()
             and p.name != "ray_scorer.py"]
    assert users == []
