"""The header estimate of an image's decode cost, the walk of its structure before Pillow opens it,
and the decode budget's admission.

How the estimate compares with the real peak of each format is measured in fresh interpreters
by tests/e2e/test_decode_cost_peaks.py.
"""

from __future__ import annotations

import asyncio
import io
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from hardscore_server.pipeline.decode_budget import DecodeBudget
from hardscore_server.pipeline.decode_cost import (
    MAX_BLOCKS,
    MAX_CHUNKS,
    MAX_COMPRESSED_CHUNKS,
    MAX_STRAY_BYTES,
    PNG_PRIVATE_CHUNK_BYTES,
    SLACK_BYTES,
    estimate_array,
    estimate_image,
    structure_bytes,
)
from hardscore_server.pipeline.errors import DeadlineExpired, DecodeBudgetExceeded
from hardscore_server.pipeline.preprocess import InputSpec, SampleError, decode_image

from hostile_images import (
    chunk_bomb_png,
    encode,
    gif_comment_bomb,
    gradient,
    jpeg_marker_bomb,
    png,
    png_chunk,
    tiff_strip_bomb,
)

MIB = 1024 * 1024
RGB32 = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                  resize="resize")


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


# -- structure: the walk before Pillow ---------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The sizes (bytes) of every file Pillow's Image.open is given while the test runs."""
    sizes: list[int] = []
    real_open = Image.open

    def counting_open(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        if isinstance(fp, io.BytesIO):
            with fp.getbuffer() as view:
                sizes.append(view.nbytes)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    yield sizes


def refusal(data: bytes) -> SampleError:
    with pytest.raises(SampleError) as info:
        estimate_image(data, RGB32)
    assert info.value.reason == "size"
    return info.value


def test_a_png_of_a_million_chunks_is_refused_before_pillow_opens_it(opened: list[int]) -> None:
    """The issue's file (12 MB here, 60 MB there): Pillow took 2.2 s and 113 bytes a chunk to
    read its header, and as long again to decode it. The walk stops at the limit."""
    for after in (False, True):  # before the pixels, or after them (Pillow reads those too)
        bomb = chunk_bomb_png(1_000_000, after=after)
        started = time.monotonic()
        error = refusal(bomb)
        print(f"\nrefused in {time.monotonic() - started:.3f} s: {error.message}")
        assert error.message.startswith(
            f"image (PNG): over the limit of {MAX_CHUNKS} chunks besides image data (counted "
            "up to byte ")
        assert error.message.endswith(
            f" of {len(bomb)}); Pillow reads each one in Python, so it is not decoded")
    assert opened == []


def test_pngs_within_the_limits_are_estimated_with_what_pillow_keeps(opened: list[int]) -> None:
    plain = png(32, 32)
    base = estimate_image(plain, RGB32)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "digits")
    info.add_text("Comment", "x" * 4000, zip=True)
    info.add_itxt("Description", "ü" * 300, zip=True)
    texts = encode(gradient(32, 32, "L"), "PNG", pnginfo=info)
    most = chunk_bomb_png(MAX_CHUNKS - 1)  # IHDR and 9,999 private chunks
    assert structure_bytes(plain) < 1024
    assert estimate_image(texts, RGB32).bytes > base.bytes + 5 * 4000
    assert estimate_image(most, RGB32).bytes >= base.bytes + (MAX_CHUNKS - 1) * (
        PNG_PRIVATE_CHUNK_BYTES)
    assert len(opened) == 3
    for data in (texts, most):
        assert decode_image(data, RGB32).shape == (3, 32, 32)
    assert "over the limit" in refusal(chunk_bomb_png(MAX_CHUNKS)).message  # + IHDR


def test_other_png_structure_limits() -> None:
    plain = png(32, 32)
    at = plain.index(b"IDAT") - 4
    end = len(plain) - 12
    data_chunks = plain[:end] + png_chunk(b"IDAT", b"") * MAX_BLOCKS + plain[end:]
    assert "over the limit of 100000 image-data chunks" in refusal(data_chunks).message
    assert decode_image(plain[:end] + png_chunk(b"IDAT", b"") * 1000 + plain[end:], RGB32).shape
    zipped = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"v" * 10_000))
    many = plain[:at] + zipped * (MAX_COMPRESSED_CHUNKS + 1) + plain[at:]
    assert "over the limit of 64 compressed chunks" in refusal(many).message
    few = plain[:at] + zipped * MAX_COMPRESSED_CHUNKS + plain[at:]
    assert estimate_image(few, RGB32).bytes > 64 * 5 * 10_000


BOMBS: dict[str, tuple[Callable[[int], bytes], int, str]] = {
    "jpeg APP1 segments": (jpeg_marker_bomb, MAX_CHUNKS, "markers"),
    "gif comment sub-blocks": (gif_comment_bomb, MAX_BLOCKS, "sub-blocks before the first frame"),
    "tiff strips": (tiff_strip_bomb, MAX_BLOCKS, "values in tag 273"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_structure_bombs_of_other_formats_are_refused_and_smaller_ones_decoded(
        case: str, opened: list[int]) -> None:
    """1,000,000 pieces of each: 1.3 s (JPEG), 0.2 s (GIF), 1.3 s (TIFF) and 90-220 MiB for
    Pillow to open, before any limit."""
    make, limit, what = BOMBS[case]
    bomb = make(1_000_000)
    assert f"over the limit of {limit} {what}" in refusal(bomb).message
    assert f"over the limit of {limit} {what}" in refusal(make(limit + 1)).message
    assert opened == []
    fits = make(limit // 10)
    assert estimate_image(fits, RGB32).bytes > estimate_image(make(1), RGB32).bytes
    assert decode_image(fits, RGB32).shape == (3, 32, 32)


def test_stray_bytes_pillow_steps_over_one_at_a_time_are_limited() -> None:
    jpeg = encode(gradient(32, 32), "JPEG")
    for fill in (b"\x00", b"\xff"):  # junk after a segment, or fill bytes before a marker
        padded = jpeg[:2] + b"\xff\xe0\x00\x02" + fill * (MAX_STRAY_BYTES + 1) + jpeg[2:]
        assert "over the limit of 1048576 stray bytes" in refusal(padded).message
        small = jpeg[:2] + b"\xff\xe0\x00\x02" + fill * 1000 + jpeg[2:]
        assert decode_image(small, RGB32).shape == (3, 32, 32)
        assert structure_bytes(small) < 64 * 1024
    gif = gif_comment_bomb(0)
    start = gif.index(b"!\xfe")
    junk = gif[:start] + b"\x00" * (MAX_STRAY_BYTES + 1) + gif[start:]
    assert "over the limit of 1048576 stray bytes" in refusal(junk).message


def test_the_walk_never_fails_on_broken_files() -> None:
    """Truncated and bit-flipped files of every walked format: an estimate or a SampleError,
    never another exception."""
    rng = np.random.default_rng(0)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("k", "v" * 100, zip=True)
    files = [png(40, 30), encode(gradient(40, 30), "PNG", pnginfo=info),
             encode(gradient(40, 30), "JPEG"), encode(gradient(40, 30), "JPEG", progressive=True),
             encode(gradient(40, 30, "L").convert("P"), "GIF"), encode(gradient(40, 30), "TIFF"),
             encode([gradient(40, 30)] * 2, "TIFF", compression="tiff_adobe_deflate"),
             encode(gradient(40, 30), "TIFF", big_tiff=True), gif_comment_bomb(3),
             jpeg_marker_bomb(3), tiff_strip_bomb(3), chunk_bomb_png(3)]
    for data in files:
        for _ in range(1000):
            broken = bytearray(data[:int(rng.integers(4, len(data) + 1))])
            for at in rng.integers(0, len(broken), int(rng.integers(0, 6))):
                broken[at] = int(rng.integers(0, 256))
            try:
                assert structure_bytes(bytes(broken)) >= 0
            except SampleError as exc:
                assert exc.reason == "size"


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


def test_decode_parallelism_fits_the_budget_and_never_refuses_an_image_that_fits_alone() -> None:
    from hardscore_server.pipeline.decode_scheduler import decode_parallelism

    mib = 1 << 20
    # two threads, both costliest fit together: two at once, their sum held
    assert decode_parallelism([10 * mib, 300 * mib, 200 * mib], 2, 512 * mib) == (2, 500 * mib)
    # the two costliest together exceed the budget: one at a time, the costliest held
    assert decode_parallelism([280 * mib, 280 * mib, 5 * mib], 2, 512 * mib) == (1, 280 * mib)
    # one image exactly the budget: alone
    assert decode_parallelism([512 * mib], 4, 512 * mib) == (1, 512 * mib)
    # fewer images than threads
    assert decode_parallelism([mib], 8, 512 * mib) == (1, mib)
    # three threads, the third does not fit beside the first two
    assert decode_parallelism([200 * mib] * 3, 3, 450 * mib) == (2, 400 * mib)
