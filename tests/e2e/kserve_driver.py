"""Calls a hardscore server with KServe's own Python clients (run by
tests/e2e/test_kserve_clients.py in `.venv-kserve`, which holds the kserve package; the project's
venv does not need it).

    python kserve_driver.py SPEC.json OUT.json OUT.npz

SPEC: ``rest_url``, ``grpc_target``, ``arrays`` (an .npz of the input arrays; a BYTES array
``x`` is stored as ``x.data`` (the items concatenated, uint8) and ``x.lengths``), ``ready``
(model names), ``metadata`` (model names) and ``infers``: each ``{"name", "model", "inputs":
[{"name", "datatype", "array", "binary"}], "outputs": null or [{"name", "binary"}],
"parameters" (the request's), "transports": ["rest", "grpc"], "error": true when the call
must fail}``.

Every call goes through ``kserve.InferenceRESTClient`` (protocol v2) and
``kserve.InferenceGRPCClient`` unchanged. Neither client has a model metadata call: that one
goes through KServe's own generated gRPC stub (the client's channel) and, over REST, KServe's
own pydantic data model (``ModelMetadataResponse``) reads the reply of a GET on the client's
HTTP connection pool.

OUT.json: ``kserve`` (its version) and ``calls``, each ``{"transport", "call", "ok", "value"
or "error": {"type", "message", "code"}, "outputs": [{"name", "datatype", "shape"}]}``, and
over REST ``binary_reply`` (the reply carried binary tensor data); ``ok`` is false when a call
raised where it should have answered, or answered where it should have raised. OUT.npz: each
output's array as ``<transport>/<call>/<output>``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

TIMEOUT = 120.0


def load_arrays(path: str) -> dict[str, np.ndarray]:
    stored = np.load(path)
    arrays: dict[str, np.ndarray] = {}
    for key in stored.files:
        if key.endswith(".lengths"):
            name = key[: -len(".lengths")]
            data = stored[f"{name}.data"].tobytes()
            ends = np.cumsum(stored[key])
            items = [data[end - n:end] for n, end in zip(stored[key], ends, strict=True)]
            arrays[name] = np.array(items, dtype=np.object_)
        elif not key.endswith(".data"):
            arrays[key] = stored[key]
    return arrays


def request(spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> InferRequest:
    inputs = []
    for item in spec["inputs"]:
        array = arrays[item["array"]]
        if "shape" in item:
            array = array.reshape(item["shape"])
        tensor = InferInput(item["name"], list(array.shape), item["datatype"])
        tensor.set_data_from_numpy(array, binary_data=item.get("binary", True))
        inputs.append(tensor)
    outputs = None
    if spec.get("outputs") is not None:
        outputs = [RequestedOutput(o["name"], {"binary_data": True} if o.get("binary") else None)
                   for o in spec["outputs"]]
    return InferRequest(model_name=spec["model"], infer_inputs=inputs, request_outputs=outputs,
                        parameters=spec.get("parameters"))


def error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, grpc.aio.AioRpcError):
        return {"type": type(exc).__name__, "code": exc.code().name,
                "message": exc.details() or ""}
    response = getattr(exc, "response", None)
    return {"type": type(exc).__name__, "message": str(exc),
            "code": getattr(response, "status_code", None)}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}

    async def call(self, transport: str, name: str, answer: Awaitable[Any],
                   expect_error: bool = False, headers: dict[str, str] | None = None) -> None:
        record: dict[str, Any] = {"transport": transport, "call": name}
        try:
            value = await answer
        except Exception as exc:  # every failure is recorded, none stops the run
            record["error"] = error_of(exc)
            record["ok"] = expect_error
            if not expect_error:
                record["traceback"] = traceback.format_exc()[-3000:]
        else:
            record["ok"] = not expect_error
            if hasattr(value, "outputs"):  # an InferResponse
                record["outputs"] = []
                for output in value.outputs:
                    array = output.as_numpy()
                    self.arrays[f"{transport}/{name}/{output.name}"] = array
                    record["outputs"].append({"name": output.name, "datatype": output.datatype,
                                              "shape": list(output.shape)})
            else:
                record["value"] = value
        if headers is not None:  # REST: whether the reply carried binary tensor data
            record["binary_reply"] = "inference-header-content-length" in {
                key.lower() for key in headers}
        self.calls.append(record)


def grpc_metadata(reply: pb.ModelMetadataResponse) -> dict[str, Any]:
    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"name": reply.name, "versions": list(reply.versions), "platform": reply.platform,
            "inputs": tensors(reply.inputs), "outputs": tensors(reply.outputs)}


async def run(spec: dict[str, Any], rec: Recorder) -> None:
    arrays = load_arrays(spec["arrays"])
    url = spec["rest_url"]
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=TIMEOUT))
    grpc_client = InferenceGRPCClient(spec["grpc_target"], timeout=TIMEOUT)
    try:
        await rec.call("rest", "server_live", rest.is_server_live(url))
        await rec.call("rest", "server_ready", rest.is_server_ready(url))
        await rec.call("grpc", "server_live", grpc_client.is_server_live())
        await rec.call("grpc", "server_ready", grpc_client.is_server_ready())
        for model in spec["ready"]:
            await rec.call("rest", f"model_ready:{model}", rest.is_model_ready(url, model))
            await rec.call("grpc", f"model_ready:{model}", grpc_client.is_model_ready(model))

        async def rest_metadata(model: str) -> dict[str, Any]:
            reply = await rest._client.get(f"{url}/v2/models/{model}")
            if not reply.is_success:
                raise rest._construct_http_status_error(reply)
            return ModelMetadataResponse.model_validate_json(reply.content).model_dump()

        async def grpc_model_metadata(model: str) -> dict[str, Any]:
            stub = grpc_client._client_stub
            reply = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=TIMEOUT)
            return grpc_metadata(reply)

        for model in spec["metadata"]:
            await rec.call("rest", f"metadata:{model}", rest_metadata(model))
            await rec.call("grpc", f"metadata:{model}", grpc_model_metadata(model))

        # the request is built inside the awaited call: a client-side failure is recorded too
        async def rest_infer(infer: dict[str, Any], headers: dict[str, str]) -> Any:
            return await rest.infer(url, request(infer, arrays), model_name=infer["model"],
                                    response_headers=headers)

        async def grpc_infer(infer: dict[str, Any]) -> Any:
            return await grpc_client.infer(request(infer, arrays))

        for infer in spec["infers"]:
            expect_error = bool(infer.get("error"))
            for transport in infer.get("transports", ["rest", "grpc"]):
                if transport == "rest":
                    headers: dict[str, str] = {}
                    await rec.call("rest", infer["name"], rest_infer(infer, headers),
                                   expect_error, headers)
                else:
                    await rec.call("grpc", infer["name"], grpc_infer(infer), expect_error)
    finally:
        await rest.close()
        await grpc_client.close()


def main(spec_path: str, out_json: str, out_npz: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rec = Recorder()
    asyncio.run(run(spec, rec))
    Path(out_json).write_text(json.dumps({
        "kserve": importlib.metadata.version("kserve"), "calls": rec.calls}, indent=1))
    np.savez(out_npz, **rec.arrays)  # type: ignore[arg-type]  # keys are never allow_pickle
    failed = [f"{c['transport']} {c['call']}" for c in rec.calls if not c["ok"]]
    print(f"kserve {importlib.metadata.version('kserve')}: {len(rec.calls)} calls, "
          f"{len(failed)} failed {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
