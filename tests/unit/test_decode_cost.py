"""The header estimate of an image's decode cost, and the decode budget's admission.

How the estimate compares with the real peak of each format is measured in fresh interpreters
by tests/e2e/test_decode_cost_peaks.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from hardscore_server.pipeline.decode_budget import DecodeBudget
from hardscore_server.pipeline.decode_cost import SLACK_BYTES, estimate_array, estimate_image
from hardscore_server.pipeline.errors import DeadlineExpired, DecodeBudgetExceeded
from hardscore_server.pipeline.preprocess import InputSpec

from hostile_images import png

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
