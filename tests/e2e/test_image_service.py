"""End to end: ScoreImages(Stream) and GetModelInfo with the embedded default model."""

from __future__ import annotations

import asyncio
import io
import threading

import grpc
import numpy as np
import pytest
from PIL import Image

from hardscore_client import AsyncScoringClient
from hardscore_server.pipeline.preprocess import encode_png
from hardscore_server.tools.digits import heldout_split
from hardscore_wire import scoring_pb2 as pb
from hardscore_wire import scoring_pb2_grpc as pb_grpc

from conftest import metric, scrape


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], np.ndarray, np.ndarray]:
    _, _, images, labels = heldout_split()
    return [encode_png(img) for img in images], labels, images


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_model_info_describes_the_default_model(image_client):
    info = image_client.get_model_info()
    assert info.name == "digits-resnet"
    assert list(info.class_names) == [str(i) for i in range(10)]
    assert (info.input_channels, info.input_height, info.input_width) == (3, 32, 32)
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.batching.max_batch_size == 16
    assert info.batching.max_queue_delay_microseconds == 5000
    assert info.batching.max_queue_size == 256
    assert not info.random_weights


def test_heldout_digits_are_classified_and_corrupted_labels_found(image_client, digits):
    pngs, labels, _ = digits
    noisy = labels.copy()
    noisy[:20] = (labels[:20] + 3) % 10
    result = image_client.score_images(pngs, [int(v) for v in noisy],
                                       ids=[f"d{i}" for i in range(len(pngs))])
    assert len(result) == len(pngs) and not result.errors
    accuracy = (result.predicted_class == labels).mean()
    assert accuracy >= 0.95
    top20 = set(np.argsort(-result.label_issue_score)[:20].tolist())
    assert len(top20 & set(range(20))) >= 18
    assert result.ids[5] == "d5"
    assert result.class_names == [str(i) for i in range(10)]


def test_same_image_as_png_jpeg_webp_and_pixels_gives_consistent_scores(image_client, digits):
    _, labels, images = digits
    img = Image.fromarray(images[0]).resize((32, 32), Image.Resampling.BILINEAR)
    samples: list[bytes | np.ndarray] = [
        encode_png(images[0]),
        _encode(img.convert("RGB"), "JPEG", quality=95),
        _encode(img.convert("RGB"), "WEBP", lossless=True),
        _encode(img.convert("P"), "PNG"),
        _encode(img.convert("RGBA"), "PNG"),
        _encode(Image.fromarray(np.asarray(img, np.uint16) * 257), "PNG"),  # 16-bit
        images[0],  # uint8 [H, W] pixels
    ]
    result = image_client.score_images(samples, include_logits=True, include_probabilities=True)
    assert not result.errors
    assert (result.predicted_class == labels[0]).all()
    assert result.logits.shape == (len(samples), 10)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    # lossless encodings of the same pixels give the same logits
    np.testing.assert_allclose(result.logits[0], result.logits[6], atol=1e-5)


def test_one_bad_image_does_not_fail_its_neighbours(image_client, digits):
    pngs, labels, _ = digits
    samples: list[bytes | np.ndarray] = [
        pngs[0], b"this is not an image", pngs[1], pngs[2][:40], pngs[3],
        np.zeros((3, 32, 32), dtype=np.int32), pngs[4], b"",
    ]
    result = image_client.score_images(samples, [int(labels[0]), 1, int(labels[1]), 2,
                                                 int(labels[3]), 3, 42, 1])
    reasons = {e.index: e.reason for e in result.errors}
    assert reasons == {1: "decode", 3: "decode", 5: "dtype", 6: "label", 7: "empty"}
    assert "label_index 42 is out of range 0..9" in next(
        e.message for e in result.errors if e.index == 6)
    ok = [0, 2, 4]
    assert (result.predicted_class[ok] == labels[[0, 1, 3]]).all()
    assert (result.predicted_class[[1, 3, 5, 6, 7]] == -1).all()
    assert np.isnan(result.hardness[[1, 3, 5, 6, 7]]).all()
    assert np.isfinite(result.hardness[ok]).all()


def test_label_names_are_resolved_with_the_model_classes(image_client, digits):
    pngs, labels, _ = digits
    result = image_client.score_images(pngs[:3], [str(labels[0]), "7", "not-a-digit"])
    assert result.given_label[:2].tolist() == [labels[0], 7]
    assert [e.index for e in result.errors] == [2]


def test_unknown_model_is_not_found(image_server):
    with grpc.insecure_channel(image_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreImages(pb.ScoreImagesRequest(model_name="resnet-9000"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'resnet-9000' is not served here" in info.value.details()


def test_request_larger_than_queue_is_invalid_argument(image_server):
    sample = pb.ImageSample(encoded=b"x")
    with grpc.insecure_channel(image_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreImages(pb.ScoreImagesRequest(samples=[sample] * 300), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "samples has 300 images, more than this server takes in one message (256)" in (
        info.value.details())


def test_stream_of_images_returns_chunks_in_order(image_client, digits):
    pngs, labels, _ = digits
    result = image_client.score_images(pngs[:150], chunk_size=32)
    assert len(result) == 150
    assert (result.predicted_class == labels[:150]).mean() >= 0.95


def test_concurrent_clients_share_batches_and_get_their_own_results(image_server, digits):
    pngs, labels, _ = digits
    before = scrape(image_server.metrics_url)

    async def main() -> list[tuple[int, int]]:
        async with AsyncScoringClient(image_server.target) as client:
            async def one(i: int) -> tuple[int, int]:
                r = await client.score_images([pngs[i]])
                return i, int(r.predicted_class[0])

            return await asyncio.gather(*[one(i) for i in range(96)])

    results = asyncio.run(main())
    correct = sum(pred == labels[i] for i, pred in results)
    assert correct >= 0.95 * len(results)
    assert sorted(i for i, _ in results) == list(range(96))
    after = scrape(image_server.metrics_url)
    model = "digits-resnet"
    batches = (metric(after, "hardscore_batch_size_count", model=model)
               - metric(before, "hardscore_batch_size_count", model=model))
    samples = (metric(after, "hardscore_batch_size_sum", model=model)
               - metric(before, "hardscore_batch_size_sum", model=model))
    assert samples == 96
    assert batches < 96  # single-image requests were batched together
    assert metric(after, "hardscore_model_info", model=model, version="1",
                  provider="CPUExecutionProvider") == 1


def test_metrics_report_preprocess_inference_and_sample_errors(image_server, image_client, digits):
    pngs, _, _ = digits
    before = scrape(image_server.metrics_url)
    image_client.score_images([pngs[0], b"garbage"])
    after = scrape(image_server.metrics_url)
    model = "digits-resnet"
    assert (metric(after, "hardscore_preprocess_seconds_count", model=model)
            - metric(before, "hardscore_preprocess_seconds_count", model=model)) == 2
    assert (metric(after, "hardscore_sample_errors_total", reason="decode")
            - metric(before, "hardscore_sample_errors_total", reason="decode")) == 1
    assert (metric(after, "hardscore_samples_scored_total", kind="images")
            - metric(before, "hardscore_samples_scored_total", kind="images")) == 1
    assert metric(after, "hardscore_inference_seconds_count", model=model) > 0
    assert ("hardscore_queue_depth", frozenset({("model", model)})) in after


def test_cancelled_and_expired_calls_leave_the_server_healthy(image_server, image_client, digits):
    pngs, _, _ = digits
    with grpc.insecure_channel(image_server.target) as channel:
        stub = pb_grpc.ScoringServiceStub(channel)
        request = pb.ScoreImagesRequest(samples=[pb.ImageSample(encoded=p) for p in pngs[:200]])
        with pytest.raises(grpc.RpcError) as info:
            stub.ScoreImages(request, timeout=0.001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.ScoreImages.future(request, timeout=30)
        threading.Timer(0.005, future.cancel).start()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
    assert len(image_client.score_images(pngs[:3])) == 3
