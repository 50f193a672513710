"""Image-path decisions that need no server: what is preprocessed inline, failed-row filling."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from hardscore_server.pipeline.image_pipeline import _cheap_to_prepare, expand
from hardscore_server.pipeline.preprocess import encode_png, header_pixels
from hardscore_server.pipeline.scores import score_logits


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_header_pixels_reads_the_size_without_decoding():
    assert header_pixels(_png(40, 30)) == 1200
    assert header_pixels(b"not an image") is None


def test_only_small_images_are_preprocessed_on_the_event_loop():
    assert _cheap_to_prepare(encode_png(np.zeros((8, 8), dtype=np.uint8)))
    bomb = _png(4000, 4000)  # a few KiB that decode to 16 million pixels
    assert len(bomb) < 16 * 1024
    assert not _cheap_to_prepare(bomb)
    assert _cheap_to_prepare(np.zeros((3, 32, 32), dtype=np.float32))
    assert not _cheap_to_prepare(np.zeros((3, 224, 224), dtype=np.float32))
    assert not _cheap_to_prepare(b"garbage")  # decoded (and refused) in the pool


def test_failed_rows_get_minus_one_and_nan():
    batch = score_logits(np.array([[2.0, 0.0], [0.0, 3.0]]), [0, 0])
    full = expand(batch, np.array([0, 2]), 4)
    assert full.predicted_class.tolist() == [0, -1, 1, -1]
    assert full.given_label is not None and full.given_label.tolist() == [0, -1, 0, -1]
    assert np.isnan(full.hardness[[1, 3]]).all() and np.isfinite(full.hardness[[0, 2]]).all()
    assert full.mistakenness is not None and full.mistakenness[2] > 0.5
    assert np.isnan(full.probabilities[1]).all()
