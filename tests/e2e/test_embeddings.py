"""End to end: the model's embeddings (its penultimate pooled features, the ``embedding``
output) through hardscore.v1 (sync and asyncio SDK), the Open Inference Protocol over gRPC and
REST (tritonclient, system shared memory too), and the model runner with and without IOBinding;
checked against a direct ONNX Runtime session on the same preprocessed input. A model directory
from before embeddings (no ``embedding`` key) still serves, and asking it for embeddings is a
clear INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from hardscore_client import AsyncScoringClient, ScoringClient
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, MANIFEST_FILE, MODEL_FILE
from hardscore_server.model.runner import ModelRunner
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

from oip_inputs import infer_input, model_input
from server_process import ServerProcess, start_server

MODEL = "digits-resnet"
DIM = 48
"""The default model's embedding: the 48 channels of its last stage, globally average-pooled."""
TOL = 1e-5
"""float32: the server's session batches and threads differ from the reference's; the sums
are reordered, never changed."""


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of a plain ONNX Runtime session on the model input ``x``."""
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / MODEL_FILE),
                                   providers=["CPUExecutionProvider"])
    logits, embedding = session.run(["logits", "embedding"], {"images": x})
    return logits, embedding


@pytest.fixture(scope="module")
def sample(digits: tuple[np.ndarray, np.ndarray]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """40 held-out digits as PNG files, and their reference logits and embeddings."""
    images, _ = digits
    images = images[:40]
    logits, embedding = reference(model_input(images))
    return [encode_png(img) for img in images], logits, embedding


# -- hardscore.v1 ------------------------------------------------------------------------------


def test_model_info_gives_the_embedding_width(image_client: ScoringClient) -> None:
    assert image_client.get_model_info().embedding_dim == DIM


def test_embeddings_equal_a_direct_onnx_runtime_session(image_client, sample) -> None:
    pngs, logits, embedding = sample
    result = image_client.score_images(pngs, include_embeddings=True, include_logits=True)
    assert not result.errors
    assert result.embeddings is not None
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (len(pngs), DIM)
    np.testing.assert_allclose(result.embeddings, embedding, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(result.logits, logits, atol=TOL, rtol=TOL)
    assert (result.embeddings >= 0).all()  # averages of ReLU outputs


def test_embeddings_are_absent_unless_asked(image_client, image_server, sample) -> None:
    pngs, _, _ = sample
    assert image_client.score_images(pngs[:3]).embeddings is None
    with grpc.insecure_channel(image_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        request = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p) for p in pngs[:3]])
        reply = stub.ScoreImages(request)
        assert not reply.scores.HasField("embeddings")
        request.options.include_embeddings = True
        asked = stub.ScoreImages(request)
    assert asked.scores.embeddings.shape == [3, DIM]
    assert asked.ByteSize() - reply.ByteSize() >= 3 * DIM * 4


def test_failed_samples_get_nan_rows_and_streams_concatenate(image_client, sample) -> None:
    pngs, _, embedding = sample
    images: list[Any] = [pngs[0], b"not an image", *pngs[1:9]]
    result = image_client.score_images(images, include_embeddings=True, chunk_size=4)
    assert [e.index for e in result.errors] == [1]
    assert result.embeddings is not None and result.embeddings.shape == (10, DIM)
    assert np.isnan(result.embeddings[1]).all()
    good = [0, *range(2, 10)]
    np.testing.assert_allclose(result.embeddings[good], embedding[:9], atol=TOL, rtol=TOL)


def test_async_client(image_server, sample) -> None:
    pngs, _, embedding = sample

    async def main() -> Any:
        async with AsyncScoringClient(image_server.target) as client:
            return await client.score_images(pngs[:5], include_embeddings=True)

    result = asyncio.run(main())
    np.testing.assert_allclose(result.embeddings, embedding[:5], atol=TOL, rtol=TOL)


# -- the runner ----------------------------------------------------------------------------------


@pytest.mark.parametrize("io_binding", [False, True])
def test_runner_returns_both_outputs_with_and_without_io_binding(digits, io_binding) -> None:
    images, _ = digits
    x = model_input(images[:7])
    logits, embedding = reference(x)
    runner = ModelRunner(DEFAULT_MODEL_DIR, execution_provider="cpu", intra_op_threads=1,
                         io_binding=io_binding)
    got_logits, got_embedding = runner.run_with_embedding(0, x)
    np.testing.assert_allclose(got_embedding, embedding, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(got_logits, logits, atol=TOL, rtol=TOL)
    np.testing.assert_array_equal(runner.run(0, x), got_logits)


# -- the Open Inference Protocol -----------------------------------------------------------------


@pytest.mark.parametrize("module", [tgrpc, thttp], ids=["grpc", "rest"])
def test_oip_metadata_lists_the_embedding_output(image_server, module) -> None:
    target = image_server.target if module is tgrpc else f"127.0.0.1:{image_server.http_port}"
    client = module.InferenceServerClient(target)
    try:
        meta = client.get_model_metadata(MODEL, as_json=True) if module is tgrpc else (
            client.get_model_metadata(MODEL))
        config = client.get_model_config(MODEL, as_json=True) if module is tgrpc else (
            client.get_model_config(MODEL))
    finally:
        client.close()
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["embedding"]["datatype"] == "FP32"
    assert [int(d) for d in outputs["embedding"]["shape"]] == [-1, DIM]
    config = config.get("config", config)
    dims = {o["name"]: [int(d) for d in o["dims"]] for o in config["output"]}
    assert dims["embedding"] == [DIM]


@pytest.mark.parametrize(("module", "binary"), [(tgrpc, None), (thttp, True), (thttp, False)],
                         ids=["grpc", "rest-binary", "rest-json"])
def test_oip_infer_returns_the_embedding_only_when_named(image_server, digits, module,
                                                         binary) -> None:
    images, _ = digits
    x = model_input(images[:6])
    logits, embedding = reference(x)
    target = image_server.target if module is tgrpc else f"127.0.0.1:{image_server.http_port}"
    client = module.InferenceServerClient(target)
    extra = {} if binary is None else {"binary_data": binary}
    try:
        named = client.infer(MODEL, [infer_input(module, "images", x, "FP32")], outputs=[
            module.InferRequestedOutput("embedding", **extra),
            module.InferRequestedOutput("logits", **extra)])
        plain = client.infer(MODEL, [infer_input(module, "images", x, "FP32")])
    finally:
        client.close()
    got = named.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (6, DIM)
    np.testing.assert_allclose(got, embedding, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(named.as_numpy("logits"), logits, atol=TOL, rtol=TOL)
    assert plain.as_numpy("embedding") is None and plain.as_numpy("hardness") is not None


def test_oip_embedding_through_system_shared_memory(image_server, digits) -> None:
    images, _ = digits
    x = model_input(images[:4])
    _, embedding = reference(x)
    name = f"hs-emb-{uuid.uuid4().hex[:10]}"
    size = 4 * DIM * 4
    handle = shm.create_shared_memory_region(name, f"/{name}", size)
    try:
        with tgrpc.InferenceServerClient(image_server.target) as client:
            client.register_system_shared_memory(name, f"/{name}", size)
            try:
                out = tgrpc.InferRequestedOutput("embedding")
                out.set_shared_memory(name, size)
                client.infer(MODEL, [infer_input(tgrpc, "images", x, "FP32")], outputs=[out])
            finally:
                client.unregister_system_shared_memory(name)
        written = shm.get_contents_as_numpy(handle, np.float32, [4, DIM])
        np.testing.assert_allclose(written, embedding, atol=TOL, rtol=TOL)
    finally:
        shm.destroy_shared_memory_region(handle)


# -- a model directory without embeddings --------------------------------------------------------


@pytest.fixture(scope="module")
def old_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default model as it was before embeddings: one graph output, no manifest key."""
    model_dir: Path = tmp_path_factory.mktemp("old") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    proto = onnx.load(str(model_dir / MODEL_FILE))
    kept = [o for o in proto.graph.output if o.name != "embedding"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save_model(proto, str(model_dir / MODEL_FILE))
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    del manifest["embedding"]
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    server = start_server(["--model-dir", str(model_dir), "--http-port", "0"])
    yield server
    server.stop()


def test_a_model_without_embeddings_serves_and_refuses_the_ask(old_server, sample) -> None:
    pngs, logits, _ = sample
    with ScoringClient(old_server.target) as client:
        assert client.get_model_info().embedding_dim == 0
        result = client.score_images(pngs[:4], include_logits=True)
        assert result.logits is not None
        np.testing.assert_allclose(result.logits, logits[:4], atol=TOL, rtol=TOL)
        with pytest.raises(grpc.RpcError) as info:
            client.score_images(pngs[:4], include_embeddings=True)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "has no embedding output" in details
    assert "re-export it with hardscore-export" in details


def test_a_model_without_embeddings_has_no_oip_embedding_output(old_server, digits) -> None:
    images, _ = digits
    with tgrpc.InferenceServerClient(old_server.target) as client:
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert "embedding" not in {o["name"] for o in meta["outputs"]}
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [infer_input(tgrpc, "images", model_input(images[:2]), "FP32")],
                         outputs=[tgrpc.InferRequestedOutput("embedding")])
    assert "unexpected inference output 'embedding'" in info.value.message()
    assert "hardscore-export" in info.value.message()
