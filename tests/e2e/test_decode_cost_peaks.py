"""The header estimate of an image's decode cost against the real peak, format by format.

Each file is generated here, decoded by ``preprocess.decode_image`` in a fresh interpreter (so
no earlier allocation is reused), and its peak resident memory read from /proc (Linux): the
estimate must be at least the peak and at most ``MAX_OVERESTIMATE`` times it. Images are a few
megapixels, so the peak is the image's, not the interpreter's noise.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from hardscore_server.pipeline.decode_cost import MAX_OVERESTIMATE, estimate_image
from hardscore_server.pipeline.preprocess import InputSpec

from hostile_images import encode, gradient, measure_peak, png

MIB = 1024 * 1024
RGB32 = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                  resize="resize")
GREY32 = InputSpec(channels=1, height=32, width=32, mean=(0.5,), std=(0.5,), resize="resize")
RGB224 = InputSpec(channels=3, height=224, width=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                   resize="resize_shorter_center_crop")


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _grey16(size: int) -> Image.Image:
    values = np.arange(size * size, dtype=np.uint32).reshape(size, size) % 65536
    return Image.fromarray(values.astype(np.uint16))


CASES: dict[str, tuple[Callable[[], bytes], InputSpec]] = {
    "png 1x4000000 grey (skinny)": (lambda: png(1, 4_000_000), RGB32),
    "png 1x4000000 grey, grey model": (lambda: png(1, 4_000_000), GREY32),
    "png 2000000x1 grey (wide)": (lambda: png(2_000_000, 1), RGB32),
    "png 2500x2500 16-bit grey": (lambda: png(2500, 2500, "L", 16), RGB32),
    "png 2500x2500 16-bit RGB": (lambda: png(2500, 2500, "RGB", 16), RGB224),
    "png 2500x2500 RGBA": (lambda: png(2500, 2500, "RGBA"), GREY32),
    "webp 2500x2500 lossless": (
        lambda: encode(gradient(2500, 2500), "WEBP", lossless=True, method=0, quality=0),
        RGB224),
    "tiff 3 pages 2500x2500 deflate": (
        lambda: encode([gradient(2500, 2500)] * 3, "TIFF", compression="tiff_adobe_deflate"),
        RGB32),
    "tiff 2500x2500 one strip": (
        lambda: encode(gradient(2500, 2500), "TIFF", compression="tiff_adobe_deflate",
                       strip_size=2**31 - 1), RGB32),
    "tiff 2500x2500 16-bit grey": (
        lambda: encode(_grey16(2500), "TIFF", compression="tiff_adobe_deflate"), GREY32),
    "jpeg 3000x2000 progressive": (
        lambda: encode(gradient(3000, 2000), "JPEG", progressive=True), RGB224),
    "jpeg 3000x2000 rotated by exif": (
        lambda: encode(gradient(3000, 2000), "JPEG", exif=_orientation(6)), RGB32),
    "gif 2500x2500": (lambda: encode(gradient(2500, 2500, "L").convert("P"), "GIF"), RGB32),
    "bmp 2500x2500": (lambda: encode(gradient(2500, 2500), "BMP"), RGB32),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    """{case: (estimate, measured peak)} in bytes, two measuring interpreters at a time."""

    def one(name: str) -> tuple[int, int]:
        make, spec = CASES[name]
        data = make()
        peak = measure_peak(data, tmp_path_factory.mktemp("peak"), spec.channels, spec.height,
                            spec.width, spec.resize)
        return estimate_image(data, spec).bytes, peak

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(CASES, pool.map(one, CASES), strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_bounds_the_measured_peak_within_the_stated_factor(
        measured: dict[str, tuple[int, int]], case: str) -> None:
    estimate, peak = measured[case]
    assert peak > 20 * MIB  # the image's, not noise
    assert peak <= estimate <= MAX_OVERESTIMATE * peak, (
        f"{case}: estimate {estimate / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB")
