"""The scikit-learn handwritten digits data set, as used by the embedded default model.

``heldout_split()`` gives the fixed train / held-out split that server/train_default_model.py
trains on and the demo evaluates on. ``to_model_input()`` is the model's preprocessing, written
out with Pillow exactly as the server applies it for the manifest's ``"resize"`` rule.
scikit-learn is imported lazily (the ``demo`` / ``export`` extras), so importing this module is
cheap and the server never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

SPLIT_SEED = 0
"""``random_state`` of the stratified ``train_test_split``."""
TEST_SIZE = 0.3
"""Held-out fraction: 540 of the 1797 images."""
SPLIT_RECIPE = (
    "sklearn.datasets.load_digits(); images scaled 0..16 -> uint8 round(v * 255 / 16); "
    f"train_test_split(test_size={TEST_SIZE}, random_state={SPLIT_SEED}, stratify=target)"
)

UInt8Array = npt.NDArray[np.uint8]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def heldout_split() -> tuple[UInt8Array, IntArray, UInt8Array, IntArray]:
    """Return ``(x_train, y_train, x_test, y_test)``.

    Images are ``[n, 8, 8]`` uint8 grayscale in 0..255 (the data set's 0..16 scaled by 255/16 and
    rounded); labels are int64 digits 0..9. Deterministic: 1257 training and 540 held-out images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(np.asarray(data.images, dtype=np.float64) * (255.0 / 16.0))
    images_u8 = np.clip(images, 0, 255).astype(np.uint8)
    labels = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images_u8, labels, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels
    )
    return (
        np.ascontiguousarray(x_train),
        np.asarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test),
        np.asarray(y_test, dtype=np.int64),
    )


def upscale_rgb(images: UInt8Array, height: int = 32, width: int = 32) -> UInt8Array:
    """Resize ``[n, h, w]`` uint8 grayscale images to ``[n, height, width, 3]`` uint8 RGB.

    Each image goes through Pillow ``Image.resize((width, height), Image.BILINEAR)`` and the
    result is replicated to 3 channels (resizing an RGB image whose channels are equal gives the
    same pixels, so this matches the server's ``"resize"`` rule on a gray PNG).
    """
    out = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        resized = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        out[i] = np.asarray(resized, dtype=np.uint8)[:, :, None]
    return out


def to_model_input(
    images: UInt8Array,
    mean: Sequence[float],
    std: Sequence[float],
    height: int = 32,
    width: int = 32,
) -> FloatArray:
    """Preprocess ``[n, h, w]`` uint8 images to the model input ``[n, 3, height, width]`` float32:
    :func:`upscale_rgb`, then x = (pixel / 255 - mean[c]) / std[c]."""
    rgb = upscale_rgb(images, height, width).astype(np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1)
    x = (rgb - m) / s
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
