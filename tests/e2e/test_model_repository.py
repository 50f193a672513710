"""End to end: a model repository (issue 22). Versions are loaded, swapped and unloaded while
callers score, through tritonclient's own repository calls (gRPC and REST) and hardscore.v1.

The versions are the embedded default model under manifests whose temperatures differ, so every
version's scores differ (its probabilities are softmax(logits / T) of the same logits): an
answer is checked against the scores of the version it says computed it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from hardscore_client import ScoringClient
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc
from hardscore_wire.tensors import from_tensor

from conftest import http, metric, scrape
from server_process import ServerProcess

TOKEN = "control-token-22"
CONTROL = {"hardscore-control-token": TOKEN}
ENV = {"HARDSCORE_REPOSITORY_CONTROL_TOKENS": TOKEN}
MODEL = "digits"


def temperature(version: int) -> float:
    return 0.5 + 0.25 * version


def write_version(repo: Path, version: int, name: str = MODEL, *, model: bool = True,
                  classes: int = 10) -> Path:
    """Version ``version`` of ``name``: the default model with its own temperature (a missing
    model.onnx, or a manifest of ``classes`` classes, for the failing loads)."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    if model:
        shutil.copy(DEFAULT_MODEL_DIR / "model.onnx", folder / "model.onnx")
    manifest = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text())
    manifest["temperature"] = temperature(version)
    manifest["class_names"] = manifest["class_names"][:classes]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def start(repo: Path, *flags: str) -> ServerProcess:
    return ServerProcess("--model-repository", str(repo), "--max-queue-size", "512",
                         *flags, env=ENV).start()


def softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits.astype(np.float64) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(stub: Any, pngs: list[bytes], version: str = "", name: str = MODEL
          ) -> pb.ScoreImagesResponse:
    return stub.ScoreImages(pb.ScoreImagesRequest(
        samples=[pb.ImageSample(encoded=p) for p in pngs], model_name=name,
        model_version=version,
        options=pb.ScoringOptions(include_logits=True, include_probabilities=True)), timeout=30)


def index_of(client: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """The repository index of either tritonclient (gRPC or REST), model names only."""
    if isinstance(client, tgrpc.InferenceServerClient):
        models = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        models = client.get_model_repository_index()
    return {(m["name"], m["version"]): (m["state"], m.get("reason", ""))
            for m in models if not m["name"].endswith(("-pixels", "-files"))}


@pytest.fixture(scope="module")
def pngs(digits) -> list[bytes]:
    images, _ = digits
    return [encode_png(i) for i in images[:6]]


def test_ten_swaps_while_eight_callers_score(tmp_path, pngs):
    """The issue's done-when: 0 failed calls, every answer tagged with its version and equal
    to that version's scores; the time from each load request to the first answer of the new
    version."""
    repo = tmp_path / "repo"
    write_version(repo, 1)
    with start(repo, "--model-control-mode", "explicit", "--load-model", MODEL) as server, \
            grpc.insecure_channel(server.target) as channel, \
            tgrpc.InferenceServerClient(server.target) as control:
        stub = pb_grpc.ScoringServiceStub(channel)
        reference = from_tensor(score(stub, pngs).scores.logits)
        answers: list[tuple[str, np.ndarray, np.ndarray]] = []
        failures: list[BaseException] = []
        stop = threading.Event()
        lock = threading.Lock()

        def caller() -> None:
            while not stop.is_set():
                try:
                    reply = score(stub, pngs)
                except grpc.RpcError as exc:
                    failures.append(exc)
                    continue
                with lock:
                    answers.append((reply.model_version, from_tensor(reply.scores.logits),
                                    from_tensor(reply.scores.probabilities)))

        callers = [threading.Thread(target=caller) for _ in range(8)]
        for t in callers:
            t.start()
        first_answer_s = []
        try:
            for version in range(2, 12):  # 10 swaps
                time.sleep(0.3)
                write_version(repo, version)
                started = time.monotonic()
                control.load_model(MODEL, headers=CONTROL)
                while score(stub, pngs).model_version != str(version):  # the next call's
                    pass
                first_answer_s.append(time.monotonic() - started)
            time.sleep(0.3)
        finally:
            stop.set()
            for t in callers:
                t.join()
        assert failures == []
        versions = {v for v, _, _ in answers}
        assert versions == {str(v) for v in range(1, 12)}, versions  # every one answered
        for version, logits, probabilities in answers:
            np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(probabilities, softmax(logits, temperature(int(version))),
                                       atol=2e-6)
        # the swaps retired every version but the last: the index says so
        index = index_of(control)
        assert index[(MODEL, "11")] == ("READY", "")
        for version in range(1, 11):
            state, reason = index[(MODEL, str(version))]
            assert state in ("UNAVAILABLE", "UNLOADING") and reason, (version, state, reason)
        assert control.is_model_ready(MODEL) and not control.is_model_ready(MODEL, "10")
        print(f"\n{len(answers)} answers, 0 failed; load request -> first answer of the new "
              f"version: median {np.median(first_answer_s):.3f}s, max {max(first_answer_s):.3f}s")


def test_failing_loads_leave_the_serving_version_untouched(tmp_path, pngs):
    repo = tmp_path / "repo"
    write_version(repo, 1)
    write_version(repo, 1, "other")
    with start(repo, "--model-control-mode", "explicit", "--load-model", MODEL,
               "--max-loaded-models", "1") as server, \
            grpc.insecure_channel(server.target) as channel, \
            tgrpc.InferenceServerClient(server.target) as control:
        stub = pb_grpc.ScoringServiceStub(channel)
        write_version(repo, 2, model=False)  # model.onnx missing
        with pytest.raises(InferenceServerException) as info:
            control.load_model(MODEL, headers=CONTROL)
        assert "model.onnx" in info.value.message()
        assert index_of(control)[(MODEL, "2")][0] == "UNAVAILABLE"
        assert "model.onnx" in index_of(control)[(MODEL, "2")][1]
        assert score(stub, pngs).model_version == "1"

        write_version(repo, 3, classes=9)  # 9 class names for a 10-class output
        with pytest.raises(InferenceServerException) as info:
            control.load_model(MODEL, headers=CONTROL)
        state, reason = index_of(control)[(MODEL, "3")]
        assert state == "UNAVAILABLE" and "class_names has 9 entries" in reason, reason
        assert "has 10 classes" in info.value.message()
        assert score(stub, pngs).model_version == "1"

        with pytest.raises(InferenceServerException) as info:  # a second model: over the limit
            control.load_model("other", headers=CONTROL)
        assert "max_loaded_models (1)" in info.value.message()
        assert "max_loaded_models (1)" in index_of(control)[("other", "1")][1]
        assert control.is_model_ready(MODEL) and not control.is_model_ready("other")
        assert score(stub, pngs).model_version == "1"
        samples = scrape(server.metrics_url)
        assert metric(samples, "hardscore_model_loads_total", model=MODEL, version="3",
                      outcome="failed") == 1
        assert metric(samples, "hardscore_models_loaded") == 1
    assert "model 'digits' version 3 failed to load" in server.output()


def test_a_load_over_the_memory_limit_is_refused(tmp_path, pngs):
    repo = tmp_path / "repo"
    write_version(repo, 1)
    write_version(repo, 1, "other")
    # one version is estimated at 2 x 224 KiB + 16 MiB: one fits 24 MiB, two do not
    with start(repo, "--model-control-mode", "explicit", "--load-model", MODEL,
               "--model-memory-limit-bytes", str(24 * 1024 * 1024)) as server, \
            thttp.InferenceServerClient(server.http_url.removeprefix("http://")) as control:
        with pytest.raises(InferenceServerException) as info:
            control.load_model("other", headers=CONTROL)
        assert "exceeds model_memory_limit_bytes (24.0 MiB)" in info.value.message()
        assert control.is_model_ready(MODEL) and not control.is_model_ready("other")


def test_control_needs_its_own_token_and_explicit_mode(tmp_path):
    repo = tmp_path / "repo"
    write_version(repo, 1)
    with start(repo, "--model-control-mode", "explicit", "--load-model", MODEL) as server, \
            tgrpc.InferenceServerClient(server.target) as control:
        for headers in (None, {"hardscore-control-token": "wrong"},
                        {"authorization": f"Bearer {TOKEN}"}):
            with pytest.raises(InferenceServerException) as info:
                control.unload_model(MODEL, headers=headers)
            assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        status, _, body = http(server, f"/v2/repository/models/{MODEL}/unload", b"{}")
        assert status == 403 and b"control token" in body
        assert control.is_model_ready(MODEL)
    write_version(repo, 1, "other")
    with start(repo) as server, tgrpc.InferenceServerClient(server.target) as control:
        with pytest.raises(InferenceServerException) as info:  # mode none: control is off
            control.load_model(MODEL, headers=CONTROL)
        assert "model_control_mode is none" in info.value.message()
        assert control.is_model_ready(MODEL) and control.is_model_ready("other")


def test_unload_drains_and_a_load_brings_the_model_back(tmp_path, pngs):
    repo = tmp_path / "repo"
    write_version(repo, 1)
    with start(repo, "--model-control-mode", "explicit", "--load-model", MODEL) as server, \
            thttp.InferenceServerClient(server.http_url.removeprefix("http://")) as control, \
            grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        # large images: each call decodes for a while, holding the version it was admitted by
        rng = np.random.default_rng(0)
        large = encode_png(rng.integers(0, 256, (1500, 1500, 3), dtype=np.uint8))
        in_flight = [stub.ScoreImages.future(pb.ScoreImagesRequest(
            samples=[pb.ImageSample(encoded=large)] * 6, model_name=MODEL), timeout=60)
            for _ in range(4)]
        deadline = time.monotonic() + 10
        while metric(scrape(server.metrics_url), "hardscore_image_decodes_total",
                     outcome="done") < 1:  # a call is admitted: its images are being decoded
            assert time.monotonic() < deadline
            time.sleep(0.005)
        control.unload_model(MODEL, headers=CONTROL)
        outcomes = []
        for f in in_flight:  # admitted before the unload: answered; after it: NOT_FOUND
            try:
                outcomes.append(f.result().model_version)
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
        assert "1" in outcomes and set(outcomes) <= {"1", "NOT_FOUND"}, outcomes
        assert not control.is_model_ready(MODEL)
        with pytest.raises(grpc.RpcError) as info:
            score(stub, pngs)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert index_of(control)[(MODEL, "1")] == ("UNAVAILABLE", "unloaded")
        control.load_model(MODEL, headers=CONTROL)
        assert score(stub, pngs).model_version == "1"


def test_versions_and_models_route_by_name_and_version(tmp_path, pngs):
    """version_policy all: both versions serve; an unversioned call goes to the highest; two
    models need a name; metadata and ListModels say what is loaded."""
    repo = tmp_path / "repo"
    write_version(repo, 1)
    write_version(repo, 2)
    write_version(repo, 5, "other")
    with start(repo, "--version-policy", "all") as server, \
            grpc.insecure_channel(server.target) as channel, \
            tgrpc.InferenceServerClient(server.target) as oip:
        stub = pb_grpc.ScoringServiceStub(channel)
        assert score(stub, pngs).model_version == "2"
        assert score(stub, pngs, "1").model_version == "1"
        assert score(stub, pngs, name="other").model_version == "5"
        with pytest.raises(grpc.RpcError) as info:
            score(stub, pngs, name="")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "name a model" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            score(stub, pngs, "3")
        assert "version 3 is not ready" in info.value.details()
        info_v1 = stub.GetModelInfo(pb.GetModelInfoRequest(model_name=MODEL, model_version="1"))
        assert (info_v1.name, info_v1.version, info_v1.temperature) == (MODEL, "1", 0.75)
        with ScoringClient(server.target) as sdk:  # the SDK names model and version too
            result = sdk.score_images(pngs, model_name=MODEL, model_version="1",
                                      include_probabilities=True)
            logits = from_tensor(score(stub, pngs, "1").scores.logits)
            np.testing.assert_allclose(result.probabilities, softmax(logits, 0.75), atol=2e-6)
            assert sdk.get_model_info(MODEL).version == "2"
        listed = stub.ListModels(pb.ListModelsRequest())
        assert [(m.name, m.version, m.state) for m in listed.models] == [
            (MODEL, "1", "READY"), (MODEL, "2", "READY"), ("other", "5", "READY")]
        assert oip.get_model_metadata(MODEL).versions == ["1", "2"]
        assert oip.is_model_ready(MODEL, "1") and oip.is_model_ready(f"{MODEL}-files", "2")
        files = np.array([[p] for p in pngs], dtype=np.object_)
        for version in ("1", "2", ""):
            x = tgrpc.InferInput("image_files", list(files.shape), "BYTES")
            x.set_data_from_numpy(files)
            result = oip.infer(f"{MODEL}-files", [x], model_version=version)
            assert result.get_response().model_version == (version or "2")
        status, _, body = http(server, f"/v2/models/{MODEL}/versions/1/stats")
        stats = json.loads(body)["model_stats"]
        assert status == 200 and [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
        stats = oip.get_inference_statistics(f"{MODEL}-files", as_json=True)["model_stats"]
        assert {(s["version"], s["inference_stats"]["success"].get("count", "0"))
                for s in stats} == {("1", "1"), ("2", "2")}


def test_poll_mode_picks_up_new_versions_and_removed_models(tmp_path, pngs):
    repo = tmp_path / "repo"
    write_version(repo, 1)
    write_version(repo, 1, "other")
    with start(repo, "--model-control-mode", "poll", "--repository-poll-s", "0.2") as server, \
            grpc.insecure_channel(server.target) as channel, \
            tgrpc.InferenceServerClient(server.target) as oip:
        stub = pb_grpc.ScoringServiceStub(channel)
        assert score(stub, pngs).model_version == "1"
        write_version(repo, 2, model=False)  # broken: tried once, version 1 serves on
        write_version(repo, 3)
        deadline = time.monotonic() + 20
        while score(stub, pngs).model_version != "3":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shutil.rmtree(repo / "other")
        while oip.is_model_ready("other"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        index = index_of(oip)
        assert index[(MODEL, "3")] == ("READY", "")
        assert index[(MODEL, "1")][0] in ("UNAVAILABLE", "UNLOADING")
        assert index[(MODEL, "2")] == ("UNAVAILABLE", "not selected by the version policy "
                                                      "(latest)")
        with pytest.raises(InferenceServerException) as info:  # poll: no API control
            oip.load_model(MODEL, headers=CONTROL)
        assert "model_control_mode is poll" in info.value.message()
