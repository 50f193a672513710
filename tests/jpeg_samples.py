"""JPEG files generated for the torch-decode tests (nothing is read from disk): textured
pictures of any size, 4:2:0 / 4:2:2 / 4:4:4 chroma, grey, progressive, EXIF-oriented, CMYK."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3]: colour gradients with noise (edges and texture for the DCT)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                     (xx + yy) * 3 % 256], axis=-1).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 25, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg(width: int, height: int, *, chroma: str = "4:2:0", mode: str = "RGB",
         orientation: int | None = None, progressive: bool = False, quality: int = 90,
         seed: int = 0) -> bytes:
    """A JPEG file of picture(width, height) in ``mode`` (RGB, L or CMYK), with an EXIF
    orientation tag when given."""
    image = Image.fromarray(picture(width, height, seed)).convert(mode)
    options: dict[str, object] = {"quality": quality, "progressive": progressive}
    if mode == "RGB":
        options["subsampling"] = SUBSAMPLING[chroma]
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def variety() -> dict[str, bytes]:
    """Every kind the torch path takes, by name: sizes from 8 x 8 to 640 x 480, up- and
    down-scaled, wide and tall, three chroma subsamplings, grey, progressive, and each EXIF
    orientation 2..8."""
    files = {
        "8x8 4:2:0": jpeg(8, 8),
        "32x32 4:4:4": jpeg(32, 32, chroma="4:4:4", seed=1),
        "300x200 4:2:0": jpeg(300, 200, seed=2),
        "201x333 4:4:4": jpeg(201, 333, chroma="4:4:4", seed=3),
        "97x45 4:2:2": jpeg(97, 45, chroma="4:2:2", seed=4),
        "640x480 grey": jpeg(640, 480, mode="L", seed=5),
        "17x29 grey": jpeg(17, 29, mode="L", seed=6),
        "250x250 progressive": jpeg(250, 250, progressive=True, seed=7),
        "1x50 4:2:0": jpeg(1, 50, seed=8),
    }
    for orientation in range(2, 9):
        files[f"120x80 exif {orientation}"] = jpeg(120, 80, orientation=orientation,
                                                   seed=10 + orientation)
    return files
