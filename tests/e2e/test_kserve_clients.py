"""KServe's own Python clients (``kserve.InferenceRESTClient`` and ``InferenceGRPCClient``, the
kserve package in its own venv made by ``make kserve-venv``: its pins clash with the project's)
against a real hardscore server, unchanged.

The driver (tests/e2e/kserve_driver.py, run in `.venv-kserve`) makes every call below with both
clients: server live and ready, model ready (the three served names and an unknown one), model
metadata, inference with encoded PNG files (BYTES, on ``<model>-files`` and on ``<model>``),
FP32 pixels (binary and JSON / typed), UINT8 pixels, named outputs (``embedding`` among them;
JSON, binary per output and ``binary_data_output``), an unlabelled and labelled rows (NaN label
scores, ``null`` in REST's JSON), and two errors (an unknown model, a bad shape). Every answer
must equal tritonclient's for the same request (errors: the same code and the server's own
message in the client's exception), the embeddings the project's SDK's, and no call may fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from hardscore_client import ScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import upscale_rgb

from oip_inputs import model_input
from server_process import ServerProcess

REPO = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
DRIVER = Path(__file__).with_name("kserve_driver.py")
MODEL = "digits-resnet"
N = 6
TOL = 1e-5

pytestmark = pytest.mark.timeout(600)


def fp32(name: str = "images", array: str = "fp32", binary: bool = True) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "array": array, "binary": binary}


def outputs(*names: str, binary: bool = False) -> list[dict[str, Any]]:
    return [{"name": name, "binary": binary} for name in names]


NAMED = ("embedding", "logits", "predicted_class", "hardness")  # not the default order
LABEL = {"name": "label", "datatype": "INT64", "array": "labels", "binary": False}
INFERS: list[dict[str, Any]] = [
    {"name": "files", "model": f"{MODEL}-files",
     "inputs": [{"name": "image_files", "datatype": "BYTES", "array": "pngs", "shape": [N, 1]}]},
    {"name": "files_on_model", "model": MODEL,
     "inputs": [{"name": "images", "datatype": "BYTES", "array": "pngs"}]},
    {"name": "fp32", "model": MODEL, "inputs": [fp32()]},
    {"name": "fp32_json", "model": MODEL, "inputs": [fp32(binary=False)]},
    {"name": "pixels", "model": f"{MODEL}-pixels",
     "inputs": [{"name": "image_pixels", "datatype": "UINT8", "array": "pixels"}]},
    {"name": "named_outputs", "model": MODEL, "inputs": [fp32()], "outputs": outputs(*NAMED)},
    {"name": "named_outputs_binary", "model": MODEL, "inputs": [fp32(binary=False)],
     "outputs": outputs(*NAMED, binary=True), "transports": ["rest"]},
    {"name": "binary_data_output", "model": MODEL, "inputs": [fp32(binary=False)],
     "parameters": {"binary_data_output": True}, "transports": ["rest"]},
    {"name": "labelled", "model": MODEL, "inputs": [fp32(), {**LABEL, "binary": True}]},
    {"name": "labelled_json", "model": MODEL, "inputs": [fp32(binary=False), LABEL]},
    # binary and JSON inputs in one request: REST allows it; gRPC does not (raw_input_contents
    # holds every input or none, as Triton requires)
    {"name": "labelled_mixed", "model": MODEL, "inputs": [fp32(), LABEL], "transports": ["rest"]},
    {"name": "labelled_files", "model": f"{MODEL}-files",
     "inputs": [{"name": "image_files", "datatype": "BYTES", "array": "pngs", "shape": [N, 1]},
                {**LABEL, "binary": True}],
     "outputs": outputs("hardness", "mistakenness", "label_issue_score", "embedding")},
    {"name": "unknown_model", "model": "no-such-model", "inputs": [fp32()], "error": True},
    {"name": "bad_shape", "model": MODEL, "inputs": [fp32(array="fp32_bad")], "error": True},
]
READY = [MODEL, f"{MODEL}-files", f"{MODEL}-pixels", "no-such-model"]


def arrays(digits: tuple[Any, Any]) -> dict[str, np.ndarray]:
    images, labels = digits
    batch = images[:N]
    given = labels[:N].astype(np.int64)
    given[0] = -1  # an unlabelled row beside labelled ones: its label scores are NaN
    return {"fp32": model_input(batch),
            "fp32_bad": model_input(batch[:1])[:, :, :31, :],
            "pixels": np.ascontiguousarray(upscale_rgb(batch).transpose(0, 3, 1, 2)),
            "pngs": np.array([encode_png(img) for img in batch], dtype=np.object_),
            "labels": given}


def save_arrays(path: Path, values: dict[str, np.ndarray]) -> None:
    """The driver's input file: plain arrays, and each BYTES array as its items' bytes and
    lengths (no pickles)."""
    stored: dict[str, np.ndarray] = {}
    for name, array in values.items():
        if array.dtype == np.object_:
            items = [bytes(x) for x in array.reshape(-1)]
            stored[f"{name}.data"] = np.frombuffer(b"".join(items), dtype=np.uint8)
            stored[f"{name}.lengths"] = np.array([len(x) for x in items], dtype=np.int64)
        else:
            stored[name] = array
    np.savez(path, **stored)  # type: ignore[arg-type]  # keys are never allow_pickle


def triton_input(module: Any, item: dict[str, Any], values: dict[str, np.ndarray]) -> Any:
    array = values[item["array"]]
    if "shape" in item:
        array = array.reshape(item["shape"])
    tensor = module.InferInput(item["name"], list(array.shape), item["datatype"])
    tensor.set_data_from_numpy(array)
    return tensor


def triton_infer(module: Any, client: Any, infer: dict[str, Any],
                 values: dict[str, np.ndarray]) -> Any:
    inputs = [triton_input(module, item, values) for item in infer["inputs"]]
    requested = None
    if infer.get("outputs") is not None:
        requested = [module.InferRequestedOutput(o["name"]) for o in infer["outputs"]]
    return client.infer(infer["model"], inputs, outputs=requested)


def reference_outputs(result: Any) -> list[tuple[str, str, list[int], np.ndarray]]:
    return [(o.name, o.datatype, list(o.shape), result.as_numpy(o.name))
            for o in result.get_response().outputs]


def outcome(call: Any) -> tuple[str, Any]:
    """("value", what it returned) or ("error", (gRPC code name, message))."""
    try:
        return "value", call()
    except InferenceServerException as exc:
        return "error", (str(exc.status()).removeprefix("StatusCode."), exc.message())


def kserve_outcome(record: dict[str, Any]) -> tuple[str, Any]:
    if "error" in record:
        return "error", (record["error"]["code"], record["error"]["message"])
    return "value", record["value"]


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    if not KSERVE_PYTHON.exists():
        reason = f"{KSERVE_PYTHON} is missing: `make kserve-venv` makes it (`make test` does)"
        if "MAKELEVEL" in os.environ:  # under make the venv is a prerequisite: never skip
            pytest.fail(reason)
        pytest.skip(reason)
    return KSERVE_PYTHON


def test_kserve_clients_work_unchanged(kserve_python: Path, image_server: ServerProcess,
                                       digits: tuple[Any, Any], tmp_path: Path) -> None:
    values = arrays(digits)
    save_arrays(tmp_path / "arrays.npz", values)
    spec = {"rest_url": image_server.http_url, "grpc_target": image_server.target,
            "arrays": str(tmp_path / "arrays.npz"), "ready": READY, "metadata": [MODEL,
            f"{MODEL}-files", f"{MODEL}-pixels"], "infers": INFERS}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out_json, out_npz = tmp_path / "calls.json", tmp_path / "outputs.npz"
    run = subprocess.run([str(kserve_python), str(DRIVER), str(tmp_path / "spec.json"),
                          str(out_json), str(out_npz)], capture_output=True, text=True,
                         timeout=540, env={**os.environ, "PYTHONPATH": ""})
    print(run.stdout, run.stderr[-3000:], file=sys.stderr)
    assert run.returncode == 0, run.stderr[-5000:]
    report = json.loads(out_json.read_text())
    calls = {(c["transport"], c["call"]): c for c in report["calls"]}
    got = np.load(out_npz)

    failed = [(key, c.get("error"), c.get("traceback")) for key, c in calls.items()
              if not c["ok"]]
    assert failed == [], failed
    expected_calls = 4 + 2 * len(READY) + 2 * 3 + sum(
        len(i.get("transports", ["rest", "grpc"])) for i in INFERS)
    assert len(report["calls"]) == expected_calls

    http_client = thttp.InferenceServerClient(image_server.http_url.removeprefix("http://"))
    with tgrpc.InferenceServerClient(image_server.target) as grpc_client:
        for transport in ("rest", "grpc"):
            assert calls[(transport, "server_live")]["value"] is True
            assert calls[(transport, "server_ready")]["value"] is True
        for model in READY:
            rest = calls[("rest", f"model_ready:{model}")]
            assert rest["value"] == http_client.is_model_ready(model), model
            assert kserve_outcome(calls[("grpc", f"model_ready:{model}")]) == outcome(
                lambda m=model: grpc_client.is_model_ready(m)), model
        assert calls[("rest", f"model_ready:{MODEL}")]["value"] is True
        assert calls[("rest", "model_ready:no-such-model")]["value"] is False

        for model in (MODEL, f"{MODEL}-files", f"{MODEL}-pixels"):
            expected = http_client.get_model_metadata(model)
            expected = {key: expected.get(key) for key in
                        ("name", "versions", "platform", "inputs", "outputs")}
            assert calls[("rest", f"metadata:{model}")]["value"] == expected
            assert calls[("grpc", f"metadata:{model}")]["value"] == expected
        assert {"name": "embedding", "datatype": "FP32", "shape": [-1, 48]} in (
            calls[("grpc", f"metadata:{MODEL}")]["value"]["outputs"])

        for infer in INFERS:
            transports = infer.get("transports", ["rest", "grpc"])
            if infer.get("error"):
                code, message = outcome(lambda i=infer: triton_infer(tgrpc, grpc_client, i,
                                                                      values))[1]
                with pytest.raises(InferenceServerException) as rest_error:
                    triton_infer(thttp, http_client, infer, values)
                grpc_error = calls[("grpc", infer["name"])]["error"]
                assert (grpc_error["type"], grpc_error["code"], grpc_error["message"]) == (
                    "AioRpcError", code, message)
                rest_record = calls[("rest", infer["name"])]["error"]
                assert rest_record["type"] == "HTTPStatusError"
                assert rest_record["code"] == int(rest_error.value.status())
                # the server's own message, as KServe's client puts it in its exception
                assert rest_record["message"].startswith(rest_error.value.message() + ", '")
                continue
            expected = reference_outputs(triton_infer(tgrpc, grpc_client, infer, values))
            if infer.get("outputs") is not None:
                assert [e[0] for e in expected] == [o["name"] for o in infer["outputs"]]
            for transport in transports:
                record = calls[(transport, infer["name"])]
                binary = bool(infer.get("parameters")) or any(
                    o.get("binary") for o in infer.get("outputs") or [])
                if transport == "rest":
                    assert record["binary_reply"] == binary, infer["name"]
                assert [(o["name"], o["datatype"], o["shape"]) for o in record["outputs"]] == [
                    (name, dtype, shape) for name, dtype, shape, _ in expected], record
                for name, _, _, reference in expected:
                    array = got[f"{transport}/{infer['name']}/{name}"]
                    np.testing.assert_allclose(array, reference, rtol=TOL, atol=TOL,
                                               equal_nan=True,
                                               err_msg=f"{transport} {infer['name']} {name}")
    http_client.close()

    # the labelled call: the unlabelled row's label scores are NaN (null in REST's JSON), the
    # labelled rows' finite, over both clients
    for key in ("rest/labelled", "grpc/labelled", "rest/labelled_json", "grpc/labelled_json",
                "rest/labelled_mixed"):
        mistakenness = got[f"{key}/mistakenness"]
        assert np.isnan(mistakenness[0]) and np.isfinite(mistakenness[1:]).all(), key
    # the same PNGs, same logits whatever the input form; embeddings equal the project's SDK's
    np.testing.assert_allclose(got["rest/files/logits"], got["grpc/fp32/logits"], atol=1e-4)
    with ScoringClient(image_server.target) as sdk:
        sdk_result = sdk.score_images(list(values["pngs"]), include_embeddings=True)
    assert sdk_result.embeddings is not None
    for key in ("rest/named_outputs/embedding", "grpc/named_outputs/embedding",
                "rest/named_outputs_binary/embedding", "grpc/labelled_files/embedding"):
        np.testing.assert_allclose(got[key], sdk_result.embeddings, atol=1e-4, err_msg=key)
