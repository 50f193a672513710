"""The clients against a model repository (issue 22, clients follow), on a real server serving
two models, one of them in two versions: score-dir and score-ray's ScoreBatch with --model and
--model-version record the version in every row and its scores are that version's; a resumed
table refuses another version; the SDK's ScoreResult names the version of every chunk, a swap
between the chunks of one call included; the Label Studio backend's HTTP app and `hardscore
info`. The versions are the embedded default model under manifests whose temperatures differ
(as tests/e2e/test_model_repository.py builds them), so each version's scores differ.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from hardscore_client import MixedVersions, ModelRun, ScoringClient, cli
from hardscore_client.dataset import score_dir
from hardscore_client.errors import InputError, ServerUnavailableError
from hardscore_client.tables import read_table
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.pipeline.preprocess import encode_png

from conftest import http
from server_process import ServerProcess

TOKEN = "control-token-clients"
MODEL, OTHER = "digits", "other"


def write_version(repo: Path, name: str, version: int) -> None:
    """``name`` at ``version``: the default model with a temperature of its own."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL_DIR / "model.onnx", folder / "model.onnx")
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    manifest["temperature"] = 0.5 + 0.25 * version + (0.1 if name == OTHER else 0.0)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """digits versions 1 and 2 and other version 1, all serving (version policy all)."""
    repo = tmp_path_factory.mktemp("repo")
    write_version(repo, MODEL, 1)
    write_version(repo, MODEL, 2)
    write_version(repo, OTHER, 1)
    with ServerProcess("--model-repository", str(repo), "--version-policy", "all").start() as s:
        yield s


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits) -> Path:
    """24 digits in class folders."""
    images, labels = digits
    root = tmp_path_factory.mktemp("images")
    for i in range(24):
        target = root / str(int(labels[i])) / f"d{i:02d}.png"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(encode_png(images[i]))
    return root


def direct(server: ServerProcess, paths: list[str], version: str) -> Any:
    with ScoringClient(server.target) as client:
        return client.score_images([Path(p).read_bytes() for p in paths], ids=paths,
                                   model_name=MODEL, model_version=version)


def test_score_dir_records_the_model_version_and_scores_with_it(repo_server, folder, tmp_path):
    out = tmp_path / "v1.parquet"
    summary = score_dir(folder, [repo_server.target], out, model_name=MODEL, model_version="1",
                        batch_size=5, progress=False)
    assert (summary.scored, summary.model_name, summary.model_version) == (24, MODEL, "1")
    table = read_table(out)
    assert set(table["model"].tolist()) == {MODEL} and set(table["model_version"]) == {"1"}
    paths = table["path"].tolist()
    v1, v2 = direct(repo_server, paths, "1"), direct(repo_server, paths, "2")
    np.testing.assert_array_equal(table["hardness"], v1.hardness)
    assert np.abs(v1.hardness - v2.hardness).max() > 1e-3  # the versions do differ
    # Resuming with another version would mix two versions in one table: refused.
    with pytest.raises(InputError, match=r"holds scores of digits version 1; this run scores "
                                         r"with digits version 2"):
        score_dir(folder, [repo_server.target], out, model_name=MODEL, model_version="2",
                  progress=False)
    # The same version resumes (nothing left to score).
    again = score_dir(folder, [repo_server.target], out, model_name=MODEL, model_version="1",
                      progress=False)
    assert (again.already_scored, again.scored) == (24, 0)


def test_score_dir_command_without_a_version_pins_the_highest(repo_server, folder, tmp_path,
                                                             capsys):
    out = tmp_path / "latest.csv"
    assert cli.main(["score-dir", str(folder), "--server", repo_server.target, "--out", str(out),
                     "--model", MODEL, "--no-progress"]) == 0
    assert " img/s; digits version 2; 0:" in capsys.readouterr().err
    table = read_table(out)
    assert set(table["model_version"].tolist()) == {"2"}  # read back as text
    np.testing.assert_array_equal(table["hardness"],
                                  direct(repo_server, table["path"].tolist(), "2").hardness)
    # Two models and none named: the server cannot pick, the run says why.
    with pytest.raises(ServerUnavailableError, match="NOT_FOUND"):
        score_dir(folder, [repo_server.target], tmp_path / "none.csv", progress=False)


def test_score_batch_names_the_version(repo_server, folder, tmp_path):
    """score-ray's map_batches class (no Ray needed to call it) and its resume check."""
    pytest.importorskip("pyarrow")
    from hardscore_client.ray_scoring import ScoreBatch, _resolve_model
    from hardscore_client.tables import save_table

    paths = sorted(str(p) for p in folder.rglob("*.png"))[:6]
    columns = ScoreBatch([repo_server.target], model_name=MODEL, model_version="1")(
        {"uri": np.array(paths, dtype=object)})
    assert set(columns["model_version"].tolist()) == {"1"}
    np.testing.assert_array_equal(columns["hardness"], direct(repo_server, paths, "1").hardness)
    save_table(tmp_path / "part-0.parquet", columns)
    files = [tmp_path / "part-0.parquet"]
    assert _resolve_model([repo_server.target], tmp_path, files, MODEL, "1", None, None,
                          30.0) == (MODEL, "1")
    with pytest.raises(InputError, match=r"holds scores of digits version 1; this run scores "
                                         r"with digits version 2"):
        _resolve_model([repo_server.target], tmp_path, files, MODEL, "", None, None, 30.0)


def test_score_result_names_the_version_of_each_chunk(repo_server, folder):
    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.png"))[:10]]
    with ScoringClient(repo_server.target) as client:
        pinned = client.score_images(blobs, model_name=MODEL, model_version="1", chunk_size=3)
        latest = client.score_images(blobs, model_name=MODEL)
        other = client.score_images(blobs, model_name=OTHER)
    assert pinned.computed_by == [ModelRun(0, MODEL, "1")] and pinned.model_version == "1"
    assert (latest.model_name, latest.model_version) == (MODEL, "2")
    assert (other.model_name, other.model_version) == (OTHER, "1")


def test_a_swap_between_chunks_is_reported(tmp_path, folder):
    """Explicit control: version 2 is loaded (replacing 1) after the first chunk of a stream
    was answered; the result says which rows each version computed, and each stretch equals
    that version's own scores."""
    repo = tmp_path / "repo"
    write_version(repo, MODEL, 1)
    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.png"))[:8]]
    with ServerProcess("--model-repository", str(repo), "--model-control-mode", "explicit",
                       "--load-model", MODEL,
                       env={"HARDSCORE_REPOSITORY_CONTROL_TOKENS": TOKEN}).start() as server, \
            ScoringClient(server.target) as client:
        before = client.score_images(blobs)
        plan = client._images_plan

        def swapping_plan(*args: Any, **kwargs: Any) -> Any:
            requests = plan(*args, **kwargs)

            class Lazy:
                def __len__(self) -> int:
                    return len(requests)

                def __iter__(self) -> Iterator[Any]:
                    yield requests[0]
                    time.sleep(0.5)  # the first chunk is answered by version 1
                    write_version(repo, MODEL, 2)
                    status, _, body = http(server, f"/v2/repository/models/{MODEL}/load",
                                           b"{}", {"hardscore-control-token": TOKEN})
                    assert status == 200, body
                    deadline = time.monotonic() + 60
                    while not any(m.version == "2" and m.state == "READY"
                                  for m in client.list_models().models):
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                    yield from requests[1:]

            return Lazy()

        client._images_plan = swapping_plan  # type: ignore[method-assign]
        mixed = client.score_images(blobs, chunk_size=4)
        client._images_plan = plan  # type: ignore[method-assign]
        after = client.score_images(blobs)
    assert mixed.computed_by == [ModelRun(0, MODEL, "1"), ModelRun(4, MODEL, "2")]
    assert mixed.row_models()[1].tolist() == ["1"] * 4 + ["2"] * 4
    with pytest.raises(MixedVersions):
        _ = mixed.model_version
    assert (before.model_version, after.model_version) == ("1", "2")
    np.testing.assert_array_equal(mixed.hardness[:4], before.hardness[:4])
    np.testing.assert_array_equal(mixed.hardness[4:], after.hardness[4:])


def test_info_lists_the_loaded_models(repo_server, capsys):
    assert cli.main(["info", "--server", repo_server.target]) == 0
    out = capsys.readouterr()
    assert "model versions (ListModels):" in out.out
    for name, version in ((MODEL, "1"), (MODEL, "2"), (OTHER, "1")):
        assert f"  {name}\t{version}\tREADY" in out.out
    assert "pass --model NAME" in out.err
    assert cli.main(["info", "--server", repo_server.target, "--model", MODEL,
                     "--model-version", "1"]) == 0
    assert 'version: "1"' in capsys.readouterr().out


CONFIG = """<View><Image name="img" value="$image"/>
<Choices name="label" toName="img">""" + "".join(
    f'<Choice value="{k}"/>' for k in range(10)) + "</Choices></View>"


async def _predict(server: ServerProcess, settings: Any, tasks: list[dict[str, Any]]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    from hardscore_client.label_studio_server import make_app

    runner = web.AppRunner(make_app(settings, server.target))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/setup",
                                    json={"schema": CONFIG}) as reply:
                setup = await reply.json()
            async with session.post(f"http://127.0.0.1:{port}/predict",
                                    json={"tasks": tasks, "label_config": CONFIG}) as reply:
                assert reply.status == 200, await reply.text()
                return setup, await reply.json()
    finally:
        await runner.cleanup()


def test_label_studio_backend_scores_with_the_named_version(repo_server, folder):
    from hardscore_client.label_studio_server import BackendSettings

    paths = sorted(str(p) for p in folder.rglob("*.png"))[:5]
    tasks = [{"id": i, "data": {"image": "data:image/png;base64,"
                                + base64.b64encode(Path(p).read_bytes()).decode()}}
             for i, p in enumerate(paths)]
    for version, tag in (("1", "hardscore-digits-v1-hardness"),
                         ("", "hardscore-digits-v2-hardness")):
        settings = BackendSettings(model_name=MODEL, model_version=version, qa=False)
        setup, answer = asyncio.run(_predict(repo_server, settings, tasks))
        assert setup["model_version"] == tag
        expected = direct(repo_server, paths, version or "2")
        got = [preds[0] for preds in answer["results"]]
        assert [p["model_version"] for p in got] == [tag] * 5
        np.testing.assert_array_equal([p["score"] for p in got], expected.hardness)
