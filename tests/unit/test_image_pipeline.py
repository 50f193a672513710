"""ImagePipeline without a server or ONNX Runtime: the embedded default model's manifest and a
numpy stand-in for the model, whose logits are a fixed linear function of each input's mean.

Checked: the scores are ``score_logits`` of the model's logits; a bad sample is reported in its
place (predicted_class -1, NaN scores and logits) while its neighbours are scored; labels map by
name and by index; ``on_sample_error="raise"``; the request-level refusals; failed-row filling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.model.model_dir import DEFAULT_MODEL_DIR, ModelManifest, load_manifest
from hardscore_server.pipeline.decode_scheduler import decode_one
from hardscore_server.pipeline.errors import InvalidRequest, UnknownModel
from hardscore_server.pipeline.image_pipeline import (
    ImageBatch,
    ImagePipeline,
    ImageScores,
    SampleFailed,
    expand,
)
from hardscore_server.pipeline.preprocess import InputSpec, SampleError
from hardscore_server.pipeline.scores import NO_LABEL, ScoreBatch, score_logits

MANIFEST = load_manifest(DEFAULT_MODEL_DIR)
"""digits-resnet: classes "0".."9", input 3 x 32 x 32, mean = std = 0.5."""
SPEC = InputSpec(channels=MANIFEST.input_channels, height=MANIFEST.input_height,
                 width=MANIFEST.input_width, mean=MANIFEST.mean, std=MANIFEST.std,
                 resize=MANIFEST.resize)
SLOPE = np.linspace(-3.0, 3.0, MANIFEST.num_classes, dtype=np.float32)
BIAS = np.linspace(0.0, 0.9, MANIFEST.num_classes, dtype=np.float32)


class MeanPixelModel:
    """Stands in for ModelRunner: logits [b, K] = mean(input row) * SLOPE + BIAS."""

    provider = "FakeExecutionProvider"

    def __init__(self, manifest: ModelManifest = MANIFEST) -> None:
        self.manifest = manifest
        self.rows_run = 0

    def run(self, instance: int, inputs: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        x = np.asarray(inputs, dtype=np.float32)
        assert x.shape[1:] == (3, 32, 32)
        self.rows_run += len(x)
        return logits_of(x)


def logits_of(inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    means = inputs.reshape(len(inputs), -1).mean(axis=1, dtype=np.float32)
    return (means[:, None] * SLOPE + BIAS).astype(np.float32)


def png(value: int) -> bytes:
    """A 12 x 12 grey PNG of one ``value`` (0..255)."""
    buf = io.BytesIO()
    Image.new("L", (12, 12), value).save(buf, format="PNG")
    return buf.getvalue()


def score(batch: ImageBatch, model: MeanPixelModel | None = None, **config: Any) -> ImageScores:
    """Scores ``batch`` with a new pipeline around ``model`` on a fresh event loop; closes it."""

    async def main() -> ImageScores:
        pipeline = ImagePipeline(model or MeanPixelModel(), ServerConfig(**config),
                                 ServerMetrics())
        try:
            return await pipeline.score(batch, deadline=None)
        finally:
            await pipeline.close()

    return asyncio.run(main())


def assert_same_scores(got: ScoreBatch, expected: ScoreBatch) -> None:
    for field in dataclasses.fields(ScoreBatch):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        assert (a is None) == (b is None), field.name
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True, err_msg=field.name)


def model_input(images: list[Any]) -> npt.NDArray[np.float32]:
    """The model input of ``images`` as the pipeline makes it (the production decode)."""
    return np.stack([decode_one(image, SPEC) for image in images])


def test_the_scores_are_score_logits_of_the_models_logits() -> None:
    images: list[Any] = [png(v) for v in (0, 60, 128, 200, 255)]
    images.append(np.full((20, 16, 3), 90, dtype=np.uint8))  # pixels, resized like a file
    images.append(np.full((3, 32, 32), 0.3, dtype=np.float32))  # the model input itself
    labels: list[int | str | None] = ["3", 7, None, 0, "9", 5, "1"]
    model = MeanPixelModel()
    result = score(ImageBatch(images, labels=labels, temperature=2.0), model)
    logits = logits_of(model_input(images))
    assert len(set(np.argmax(logits, axis=1).tolist())) > 1  # not one class for all
    np.testing.assert_allclose(result.logits, logits, rtol=1e-6)
    assert_same_scores(result.scores, score_logits(logits, [3, 7, NO_LABEL, 0, 9, 5, 1], 2.0))
    assert result.errors == []
    assert model.rows_run == len(images)


def test_a_bad_sample_is_reported_in_place_and_its_neighbours_are_scored() -> None:
    given = SampleError("value", "found by the translator")
    images: list[Any] = [png(30), b"not an image", png(220),
                         np.zeros((4, 4, 2), dtype=np.uint8), given]
    model = MeanPixelModel()
    result = score(ImageBatch(images), model)
    assert [(i, e.reason) for i, e in result.errors] == [(1, "decode"), (3, "shape"),
                                                         (4, "value")]
    assert result.errors[2][1] is given
    s = result.scores
    assert s.predicted_class[[1, 3, 4]].tolist() == [-1, -1, -1]
    for values in (s.confidence, s.margin, s.hardness, s.probabilities, result.logits):
        assert np.isnan(values[[1, 3, 4]]).all() and np.isfinite(values[[0, 2]]).all()
    logits = logits_of(model_input([images[0], images[2]]))
    np.testing.assert_allclose(result.logits[[0, 2]], logits, rtol=1e-6)
    good = score_logits(logits)
    assert s.predicted_class[[0, 2]].tolist() == good.predicted_class.tolist()
    np.testing.assert_allclose(s.hardness[[0, 2]], good.hardness, rtol=1e-6)
    assert model.rows_run == 2  # the bad samples never reach the model


def test_labels_map_by_name_and_by_index() -> None:
    images = [png(v) for v in (10, 80, 150, 220, 250)]
    result = score(ImageBatch(images, labels=["2", 7, None, "cat", 12]))
    s = result.scores
    assert s.given_label is not None and s.mistakenness is not None
    assert s.given_label.tolist() == [2, 7, NO_LABEL, NO_LABEL, NO_LABEL]
    assert [(i, e.reason) for i, e in result.errors] == [(3, "label"), (4, "label")]
    assert "'cat' is not one of the model's classes" in result.errors[0][1].message
    assert s.predicted_class[[3, 4]].tolist() == [-1, -1]  # not decoded, not scored
    expected = score_logits(logits_of(model_input(images[:3])), [2, 7, NO_LABEL])
    assert expected.mistakenness is not None
    np.testing.assert_allclose(s.mistakenness[:3], expected.mistakenness, rtol=1e-6,
                               equal_nan=True)
    assert np.isnan(s.mistakenness[2])  # no label, no label scores

    by_index = score(ImageBatch(images[:3], labels=np.array([2, NO_LABEL, 10])))
    assert by_index.scores.given_label is not None
    assert by_index.scores.given_label.tolist() == [2, NO_LABEL, NO_LABEL]
    assert [(i, e.reason) for i, e in by_index.errors] == [(2, "label")]


def test_on_sample_error_raise_fails_the_request_with_the_first_bad_sample() -> None:
    model = MeanPixelModel()
    batch = ImageBatch([png(1), b"junk", png(2), b"more junk"], on_sample_error="raise")
    with pytest.raises(SampleFailed, match="sample 1: decode") as failed:
        score(batch, model)
    assert failed.value.index == 1 and failed.value.error.reason == "decode"
    assert model.rows_run == 0  # before the model runs


@pytest.mark.parametrize(("batch", "error", "message"), [
    (ImageBatch([png(1)] * 4), InvalidRequest,
     r"holds 4 images, more than this server takes in one request \(3\)"),
    (ImageBatch([png(1)] * 2, labels=[1]), InvalidRequest, "1 labels for 2 images"),
    (ImageBatch([png(1)], temperature=0.0), InvalidRequest, "temperature must be finite"),
    (ImageBatch([png(1)], model_name="resnet"), UnknownModel, "'resnet' is not served here"),
], ids=["too many images", "labels", "temperature", "model"])
def test_a_request_that_cannot_be_scored_is_refused_before_decoding(
    batch: ImageBatch, error: type[Exception], message: str,
) -> None:
    model = MeanPixelModel()
    with pytest.raises(error, match=message):
        score(batch, model, max_rows_per_request=3)
    assert model.rows_run == 0


def test_a_whole_uint8_batch_is_normalised_like_its_images() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    batch = score(ImageBatch(pixels))
    one_by_one = score(ImageBatch([np.ascontiguousarray(p.transpose(1, 2, 0)) for p in pixels]))
    np.testing.assert_allclose(batch.logits, one_by_one.logits, rtol=1e-5)
    assert_same_scores(batch.scores, score_logits(batch.logits))


def test_failed_rows_get_minus_one_and_nan() -> None:
    batch = score_logits(np.array([[2.0, 0.0], [0.0, 3.0]]), [0, 0])
    full = expand(batch, np.array([0, 2]), 4)
    assert full.predicted_class.tolist() == [0, -1, 1, -1]
    assert full.given_label is not None and full.given_label.tolist() == [0, -1, 0, -1]
    assert np.isnan(full.hardness[[1, 3]]).all() and np.isfinite(full.hardness[[0, 2]]).all()
    assert full.mistakenness is not None and full.mistakenness[2] > 0.5
    assert np.isnan(full.probabilities[1]).all()


class EmbeddingModel(MeanPixelModel):
    """MeanPixelModel with embeddings: row i of the embedding is 48 copies of its input mean."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_runs = 0

    def run_with_embedding(self, instance: int, inputs: npt.NDArray[np.generic]
                           ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        self.embedding_runs += 1
        x = np.asarray(inputs, dtype=np.float32)
        means = x.reshape(len(x), -1).mean(axis=1, dtype=np.float32)
        return self.run(instance, x), np.repeat(means[:, None], MANIFEST.embedding_dim, axis=1)


def test_embeddings_come_back_only_when_asked_with_nan_rows_for_failed_samples() -> None:
    model = EmbeddingModel()
    images = [png(10), b"broken", png(200)]
    plain = score(ImageBatch(images=images), model)
    assert plain.embeddings is None and model.embedding_runs == 0
    asked = score(ImageBatch(images=images, include_embeddings=True), model)
    assert asked.embeddings is not None and asked.embeddings.shape == (3, MANIFEST.embedding_dim)
    assert np.isnan(asked.embeddings[1]).all()
    means = model_input([png(10), png(200)]).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(asked.embeddings[[0, 2], 0], means, rtol=1e-6)
    np.testing.assert_array_equal(asked.logits[[0, 2]], plain.logits[[0, 2]])


def test_asking_a_model_without_embeddings_is_refused() -> None:
    from hardscore_server.pipeline.errors import NoEmbeddings

    with pytest.raises(NoEmbeddings, match="re-export it with hardscore-export"):
        score(ImageBatch(images=[png(10)], include_embeddings=True), MeanPixelModel())
    no_key = MeanPixelModel(dataclasses.replace(MANIFEST, embedding_name=None, embedding_dim=0))
    with pytest.raises(NoEmbeddings):
        score(ImageBatch(images=[png(10)], include_embeddings=True), no_key)
