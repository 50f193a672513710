"""The header estimate of an image's decode cost against the real peak, and the decode budget.

Each format's file is generated here, decoded by ``preprocess.decode_image`` in a fresh
interpreter, and its peak resident memory read from /proc (Linux): the estimate must be at least
the peak and at most ``MAX_OVERESTIMATE`` times it. Images are a few megapixels, so the peak is
the image's, not the interpreter's noise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardscore_server.batcher import DeadlineExpired
from hardscore_server.decode_budget import DecodeBudget
from hardscore_server.decode_cost import (
    MAX_OVERESTIMATE,
    SLACK_BYTES,
    estimate_array,
    estimate_image,
)
from hardscore_server.errors import DecodeBudgetExceeded
from hardscore_server.preprocess import InputSpec

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


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_estimating_decodes_nothing() -> None:
    """The issue's 97 KB PNG of 1 x 50,000,000 pixels (1.9 GiB to decode) and a 7071 x 7071
    16-bit PNG with an eXIf chunk after its pixels: estimated from the header alone."""
    skinny = png(1, 50_000_000)
    grey16 = png(7071, 7071, "L", 16)
    grey16 = grey16[:-12] + b"\x00\x00\x00\x06eXIfMM\x00*\x00\x00" + grey16[-12:]  # bad CRC
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    costs = [estimate_image(data, RGB32) for data in (skinny, grey16)]
    assert _status("VmHWM") - before < 8 * MIB
    assert costs[0].describe == "PNG 1x50000000 L"
    assert costs[0].bytes > 1800 * MIB
    assert costs[1].describe == "PNG 7071x7071 I;16"
    assert costs[1].bytes > 600 * MIB


def test_unreadable_bytes_and_float_inputs_cost_little() -> None:
    assert estimate_image(b"not an image", RGB32).bytes == SLACK_BYTES
    assert estimate_array(np.zeros((3, 32, 32), np.float32), RGB32).bytes == 0
    skinny = estimate_array(np.zeros((1_000_000, 1), np.uint8), RGB32)
    assert skinny.describe == "pixels 1x1000000 L"
    assert skinny.bytes > 8 * 1_000_000  # a row pointer per row, at least


# -- the budget -------------------------------------------------------------------------------


def test_budget_grants_in_arrival_order_and_refuses_what_never_fits() -> None:
    async def main() -> list[str]:
        budget = DecodeBudget(100)
        order: list[str] = []
        await budget.acquire(60)

        async def take(name: str, need: int) -> None:
            await budget.acquire(need)
            order.append(name)

        first = asyncio.ensure_future(take("first", 50))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(take("second", 10))  # fits, but waits its turn
        await asyncio.sleep(0.01)
        assert order == [] and budget.in_use == 60
        budget.release(60)
        await asyncio.gather(first, second)
        assert budget.in_use == 60
        with pytest.raises(DecodeBudgetExceeded, match="more than this server's decode budget"):
            await budget.acquire(101)
        return order

    assert asyncio.run(main()) == ["first", "second"]


def test_budget_wait_is_bounded_by_its_limit_and_the_deadline_and_cancel_takes_nothing() -> None:
    async def main() -> None:
        budget = DecodeBudget(100, max_wait_s=0.05)
        await budget.acquire(100)
        with pytest.raises(DecodeBudgetExceeded, match="decode budget busy"):
            await budget.acquire(1)
        budget.max_wait_s = 10.0
        started = time.monotonic()
        with pytest.raises(DeadlineExpired):
            await budget.acquire(1, deadline=time.monotonic() + 0.05)
        assert time.monotonic() - started < 5.0
        waiter = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.release(100)
        assert budget.in_use == 0
        assert budget.try_acquire(100)

    asyncio.run(main())
