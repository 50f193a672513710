"""The decode scheduler's guarantees (pipeline/decode_scheduler.py), one test or a few each.

No server and no model: a real DecodeScheduler with a real ServerMetrics, whose per-image decode
and header read (``estimate_image``) are the production ones wrapped by ``Recorder``, which notes
the order images start and finish in and can hold an image until the test lets it go, make it
last a whole step, or raise. The tests assert orders and counts; where they wait for a thread
they poll with a limit (``WAIT_S``) that a passing run never reaches.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from unittest import mock

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from hardscore_server.config import ServerConfig
from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline import decode_scheduler
from hardscore_server.pipeline.decode_cost import (
    MAX_CHUNKS,
    DecodeCost,
    estimate_array,
    estimate_image,
)
from hardscore_server.pipeline.decode_scheduler import (
    DECODE_STEP_S,
    DecodeScheduler,
    _cheap_to_prepare,
    decode_one,
)
from hardscore_server.pipeline.errors import DeadlineExpired, ShuttingDown
from hardscore_server.pipeline.preprocess import InputSpec, SampleError, encode_png, header_pixels

from hostile_images import chunk_bomb_png, png_chunk

T = TypeVar("T")
MIB = 1024 * 1024
WAIT_S = 5.0
"""The longest a test waits for a decode thread (seconds): only a failing run gets there."""
SPEC = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                 resize="resize")


def png(value: int, size: int = 8) -> bytes:
    """A small grey PNG, different bytes for each ``value`` (0..255)."""
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


class Recorder:
    """``decode_one`` wrapped: notes each image's start and finish by name and, per name, can
    hold it until ``gates[name]`` is set, make it last at least ``DECODE_STEP_S`` (``slow``,
    so that a step ends after it), raise RuntimeError (``fail``), or call ``during(name)``.
    ``header`` wraps ``estimate_image`` alike: ``headers`` in the order read, ``header_gates``,
    ``slow_headers``."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.began: dict[str, threading.Event] = {}
        self.ended: dict[str, threading.Event] = {}
        self.headers: list[str] = []
        self.header_began: dict[str, threading.Event] = {}
        self.header_gates: dict[str, threading.Event] = {}
        self.slow_headers: set[str] = set()
        self.gates: dict[str, threading.Event] = {}
        self.slow: set[str] = set()
        self.fail: set[str] = set()
        self.during: Callable[[str], None] | None = None
        self.started: list[str] = []
        self.finished: list[str] = []
        self.threads: dict[str, str] = {}
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def image(self, name: str, image: T) -> T:
        """Registers ``image`` (bytes or an array) under ``name``."""
        self.names[id(image)] = name
        self.began[name] = threading.Event()
        self.ended[name] = threading.Event()
        self.header_began[name] = threading.Event()
        return image

    def release_all(self) -> None:
        for gate in [*self.gates.values(), *self.header_gates.values()]:
            gate.set()

    def header(self, data: bytes, spec: InputSpec) -> DecodeCost:
        """``estimate_image`` of ``data``, noted, held or slowed as asked (any thread)."""
        name = self.names.get(id(data), "?")
        with self._lock:
            self.headers.append(name)
        if name in self.header_began:
            self.header_began[name].set()
        gate = self.header_gates.get(name)
        if gate is not None and not gate.wait(WAIT_S):
            raise AssertionError(f"{name}'s header was never let go")
        if name in self.slow_headers:
            time.sleep(DECODE_STEP_S)
        return estimate_image(data, spec)

    def __call__(self, image: bytes | np.ndarray, spec: InputSpec) -> npt.NDArray[np.float32]:
        name = self.names[id(image)]
        with self._lock:
            self.started.append(name)
            self.threads[name] = threading.current_thread().name
            self.active += 1
            self.peak = max(self.peak, self.active)
        self.began[name].set()
        try:
            gate = self.gates.get(name)
            if gate is not None and not gate.wait(WAIT_S):
                raise AssertionError(f"{name} was never let go")
            if self.during is not None:
                self.during(name)
            if name in self.slow:
                time.sleep(DECODE_STEP_S)
            if name in self.fail:
                raise RuntimeError(f"boom in {name}")
            return decode_one(image, spec)
        finally:
            with self._lock:
                self.active -= 1
                self.finished.append(name)
            self.ended[name].set()


@dataclass
class Rig:
    scheduler: DecodeScheduler
    decode: Recorder
    metrics: ServerMetrics

    def decodes(self) -> dict[str, float]:
        """hardscore_image_decodes_total by outcome."""
        return {outcome: self.metrics.registry.get_sample_value(
                    "hardscore_image_decodes_total", {"outcome": outcome}) or 0.0
                for outcome in ("done", "after_cancel", "abandoned")}

    async def budget_back(self) -> None:
        """Waits until the budget is all back (a cancelled call's comes back after it ended),
        then checks that all of it can be taken at once."""
        budget = self.scheduler.budget
        await until(lambda: budget.in_use == 0, "the budget came back")
        assert budget.try_acquire(budget.capacity)
        budget.release(budget.capacity)
        assert self.metrics.registry.get_sample_value(
            "hardscore_decode_budget_in_use_bytes") == 0


def run(test: Callable[[Rig], Awaitable[T]], spec: InputSpec = SPEC, **config: Any) -> T:
    """Runs ``test(rig)`` on a fresh event loop with a new scheduler, then closes it."""

    async def main() -> T:
        recorder, metrics = Recorder(), ServerMetrics()
        scheduler = DecodeScheduler(spec, ServerConfig(**config), metrics, "test",
                                    decode=recorder)
        try:
            with mock.patch.object(decode_scheduler, "estimate_image", recorder.header):
                return await test(Rig(scheduler, recorder, metrics))
        finally:
            recorder.release_all()
            scheduler.close()

    return asyncio.run(main())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls ``condition`` on the event loop until it holds; fails after WAIT_S."""
    stop = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < stop, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


def is_input(result: object) -> bool:
    return isinstance(result, np.ndarray) and result.shape == (3, 32, 32)


# -- turn taking ------------------------------------------------------------------------------


async def small_call_queued_behind_large_one(
    rig: Rig, large: list[bytes], small: list[bytes]
) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
    """With one decode thread: the large call is decoding L1 (held), the small call has read
    its headers, taken its budget and queued its first step. Every large image lasts a whole
    step; L0 and L1 are held until the test lets them go (L1: after this returns)."""
    d, budget = rig.decode, rig.scheduler.budget
    d.slow.update(d.names[id(image)] for image in large)
    d.gates["L0"], d.gates["L1"] = threading.Event(), threading.Event()
    large_call = asyncio.ensure_future(rig.scheduler.preprocess(large))
    await until(d.began["L0"].is_set, "the large call's first image started")
    held = budget.in_use  # the large call's
    small_call = asyncio.ensure_future(rig.scheduler.preprocess(small))
    await asyncio.sleep(0)  # the small call's header step queues behind L0's step
    d.gates["L0"].set()  # L0's step ends; the large call's next step queues behind the headers
    await until(lambda: budget.in_use > held, "the small call took its budget")
    await until(d.began["L1"].is_set, "L1 started")  # its step was queued before S's
    assert d.started == ["L0", "L1"]  # L1 held: the small call's step waits in the queue
    return large_call, small_call


def test_turn_taking_a_small_call_is_not_stuck_behind_a_large_one() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        large = [d.image(f"L{i}", png(i)) for i in range(20)]
        small = [d.image(f"S{i}", png(200 + i)) for i in range(2)]
        large_call, small_call = await small_call_queued_behind_large_one(rig, large, small)
        d.gates["L1"].set()  # L1's step ends: the large call's next step queues behind S's
        small_results, large_results = await small_call, await large_call
        assert d.started[:3] == ["L0", "L1", "S0"]
        # S1 in S0's step, or in S's next step, which queued behind L2's: never after L3
        assert d.started.index("S1") in (3, 4)
        assert sorted(d.started) == sorted(d.names.values())
        assert all(map(is_input, small_results + large_results))
        assert rig.decodes() == {"done": 22, "after_cancel": 0, "abandoned": 0}
        await rig.budget_back()

    run(test, preprocess_threads=1)


def test_turn_taking_a_step_holds_many_quick_images() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        images = [d.image(f"I{i}", png(i)) for i in range(3)]
        d.gates["I0"] = threading.Event()  # the step outlasts DECODE_STEP_S on its first image
        call = asyncio.ensure_future(rig.scheduler.preprocess(images))
        await until(d.began["I0"].is_set, "I0 started")
        d.gates["I0"].set()
        assert all(map(is_input, await call))
        assert d.started == ["I0", "I1", "I2"]  # one thread, in order, one image per step
        assert len(set(d.threads.values())) == 1

    run(test, preprocess_threads=1)


def test_turn_taking_a_small_call_is_not_stuck_behind_a_large_calls_headers() -> None:
    """Header reads take turns like decodes: the small call's headers and decodes come between
    the large call's header reads (before, a call's headers were one step: all 20 first)."""

    async def test(rig: Rig) -> None:
        d = rig.decode
        large = [d.image(f"L{i}", png(i)) for i in range(20)]
        small = [d.image(f"S{i}", png(200 + i)) for i in range(2)]
        d.slow_headers.update(d.names[id(image)] for image in large)  # a whole step each
        d.header_gates["L0"] = threading.Event()
        read_before_s1: list[str] = []
        d.during = lambda name: read_before_s1.extend(d.headers) if name == "S1" else None
        large_call = asyncio.ensure_future(rig.scheduler.preprocess(large))
        await until(d.header_began["L0"].is_set, "L0's header is being read")
        small_call = asyncio.ensure_future(rig.scheduler.preprocess(small))
        await asyncio.sleep(0)  # the small call's header step queues behind L0's step
        d.header_gates["L0"].set()
        assert all(map(is_input, await small_call))
        assert all(map(is_input, await large_call))
        assert read_before_s1[:2] == ["L0", "S0"]
        # L1 while S's decode step waited; L2 or L3 only if a step of S outlasted DECODE_STEP_S
        assert [n for n in read_before_s1 if n.startswith("L")] in (
            ["L0", "L1"], ["L0", "L1", "L2"], ["L0", "L1", "L2", "L3"])
        assert rig.decodes() == {"done": 22, "after_cancel": 0, "abandoned": 0}
        await rig.budget_back()

    run(test, preprocess_threads=1)


# -- parallelism within the budget ------------------------------------------------------------


def test_parallelism_stays_within_the_budget() -> None:
    rng = np.random.default_rng(0)

    async def test(rig: Rig) -> None:
        d, budget = rig.decode, rig.scheduler.budget
        calls = [[d.image(f"{c}{i}", rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
                  for i in range(6)] for c in "AB"]
        cost = estimate_array(calls[0][0], SPEC).bytes
        assert budget.capacity == 2 * cost + cost // 2
        both = threading.Barrier(2, timeout=WAIT_S)  # the first two decodes run at once
        seen: list[int] = []

        def during(name: str) -> None:
            seen.append(budget.in_use)
            if d.started.index(name) < 2:
                both.wait()
            time.sleep(0.005)  # room for a third decode to start, were one allowed

        d.during = during
        results = await asyncio.gather(*(rig.scheduler.preprocess(call) for call in calls))
        assert all(is_input(r) for call in results for r in call)
        assert d.peak == 2  # two of the four threads: what the budget holds at once
        assert max(seen) == 2 * cost  # one call's two costliest; the other call waited
        assert rig.decodes()["done"] == 12
        await rig.budget_back()

    cost = estimate_array(np.zeros((600, 800, 3), dtype=np.uint8), SPEC).bytes
    run(test, preprocess_threads=4, decode_budget_bytes=2 * cost + cost // 2)


def test_an_image_over_the_whole_budget_is_a_size_error() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        huge = d.image("H1", np.zeros((3000, 3000, 3), dtype=np.uint8))
        assert estimate_array(huge, SPEC).bytes > 16 * MIB
        results = await rig.scheduler.preprocess(
            [d.image("P0", png(1)), huge, d.image("P2", png(2))])
        error = results[1]
        assert isinstance(error, SampleError) and error.reason == "size"
        assert "decode budget of 16.0 MiB" in error.message
        assert is_input(results[0]) and is_input(results[2])
        assert sorted(d.started) == ["P0", "P2"]  # never decoded
        await rig.budget_back()

    run(test, decode_budget_bytes=16 * MIB)


def test_an_image_over_the_pixel_limit_and_the_budget_is_a_size_error_too() -> None:
    spec = InputSpec(channels=3, height=32, width=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                     resize="resize", max_image_pixels=5_000_000)

    async def test(rig: Rig) -> None:
        d = rig.decode
        huge = d.image("H1", np.zeros((2500, 2500, 3), dtype=np.uint8))
        assert estimate_array(huge, spec).bytes > 16 * MIB
        results = await rig.scheduler.preprocess(
            [d.image("P0", png(1)), huge, d.image("P2", png(2))])
        error = results[1]
        assert isinstance(error, SampleError) and error.reason == "size"
        assert "exceeds the limit of 5000000" in error.message  # refused on its size alone
        assert is_input(results[0]) and is_input(results[2])
        await rig.budget_back()

    run(test, spec, decode_budget_bytes=16 * MIB)


def test_a_structure_bomb_is_a_size_error_that_pillow_never_opens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's PNG of tiny chunks (1,000,000 here): refused by the walk before Pillow, for
    its header as for its decode; its neighbours are decoded."""
    bomb = chunk_bomb_png(1_000_000)
    opened: list[int] = []  # the size of every file Pillow opens
    real_open = Image.open

    def counting_open(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        with fp.getbuffer() as view:
            opened.append(view.nbytes)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)

    async def test(rig: Rig) -> None:
        d = rig.decode
        results = await rig.scheduler.preprocess(
            [d.image("P0", png(1)), d.image("B1", bomb), d.image("P2", png(2))])
        error = results[1]
        assert isinstance(error, SampleError) and error.reason == "size"
        assert error.message.startswith(
            f"image (PNG): over the limit of {MAX_CHUNKS} chunks besides image data")
        assert is_input(results[0]) and is_input(results[2])
        assert sorted(d.headers) == ["B1", "P0", "P2"]
        assert sorted(d.started) == ["P0", "P2"]  # never decoded
        assert len(bomb) not in opened and len(opened) == 4  # P0, P2: header and decode
        assert rig.decodes() == {"done": 2, "after_cancel": 0, "abandoned": 0}
        await rig.budget_back()

    run(test)


# -- nothing new after the call is gone -------------------------------------------------------


def test_nothing_new_starts_after_cancellation() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        images = [d.image(f"I{i}", png(i)) for i in range(10)]
        d.gates["I0"] = threading.Event()
        call = asyncio.ensure_future(rig.scheduler.preprocess(images))
        await until(d.began["I0"].is_set, "I0 started")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # at once: I0 is still held
        assert not d.ended["I0"].is_set()
        d.gates["I0"].set()
        await rig.budget_back()
        assert d.started == ["I0"]
        assert rig.decodes() == {"done": 0, "after_cancel": 1, "abandoned": 9}

    run(test, preprocess_threads=1)


@pytest.mark.parametrize("when", ["while decoding", "before the call"])
def test_nothing_new_starts_after_the_deadline(when: str) -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        images = [d.image(f"I{i}", png(i)) for i in range(10)]
        deadline = time.monotonic() + (0.2 if when == "while decoding" else -1.0)

        def past_the_deadline(name: str) -> None:
            while time.monotonic() < deadline:  # I0 ends after the deadline
                time.sleep(0.001)

        d.during = past_the_deadline
        expected = ("deadline passed while decoding images" if when == "while decoding" else
                    r"deadline passed while reading image headers \(0 of 10 read\)")
        with pytest.raises(DeadlineExpired, match=expected):
            await rig.scheduler.preprocess(images, deadline)
        await rig.budget_back()
        if when == "before the call":
            assert d.started == [] and d.headers == []
        else:  # I0, unless reading the headers outlasted the deadline
            assert d.started in (["I0"], [])
        counts = rig.decodes()
        assert counts["done"] + counts["after_cancel"] == len(d.started)
        assert counts["abandoned"] == 10 - len(d.started)

    run(test, preprocess_threads=1)


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_a_gone_call_stops_reading_headers(how: str) -> None:
    """A call that goes while its first header is read reads no other: its 10 images are
    counted abandoned, it held no budget, and the next call's headers come right after."""

    async def test(rig: Rig) -> None:
        d = rig.decode
        images = [d.image(f"I{i}", png(i)) for i in range(10)]
        gate = d.header_gates["I0"] = threading.Event()
        deadline = time.monotonic() + 0.2 if how == "deadline" else None
        call = asyncio.ensure_future(rig.scheduler.preprocess(images, deadline))
        await until(d.header_began["I0"].is_set, "I0's header is being read")
        if how == "cancelled":
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call  # at once: I0's header is still held
        else:
            asyncio.get_running_loop().call_later(0.3, gate.set)  # after the deadline
            with pytest.raises(DeadlineExpired, match=r"while reading image headers \(1 of 10"):
                await call
        assert rig.decodes() == {"done": 0, "after_cancel": 0, "abandoned": 10}
        gate.set()
        after = [d.image(f"A{i}", png(100 + i)) for i in range(2)]  # queued behind I's steps
        assert all(map(is_input, await rig.scheduler.preprocess(after)))
        assert d.headers == ["I0", "A0", "A1"]
        assert d.started == ["A0", "A1"]
        assert rig.decodes() == {"done": 2, "after_cancel": 0, "abandoned": 10}
        await rig.budget_back()

    run(test, preprocess_threads=1)


def test_a_call_gone_while_waiting_for_budget_counts_its_images_abandoned() -> None:
    async def test(rig: Rig) -> None:
        budget = rig.scheduler.budget
        await budget.acquire(budget.capacity)  # another call holds all of it
        call = asyncio.ensure_future(rig.scheduler.preprocess([png(1), png(2), png(3)]))
        await until(lambda: rig.metrics.registry.get_sample_value(
            "hardscore_decode_budget_waiting_calls") == 1, "the call waits for budget")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert rig.decodes() == {"done": 0, "after_cancel": 0, "abandoned": 3}
        budget.release(budget.capacity)
        await rig.budget_back()

    run(test)


# -- budget returned on every path ------------------------------------------------------------

PATHS = {
    "success": None,
    "error raised in a decode": RuntimeError,
    "cancellation": asyncio.CancelledError,
    "deadline": DeadlineExpired,
    "pool shut down": ShuttingDown,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_the_budget_comes_back_on_every_path(path: str) -> None:
    async def test(rig: Rig) -> None:
        d, scheduler = rig.decode, rig.scheduler
        images = [d.image(f"I{i}", png(i)) for i in range(4)]
        seen: list[int] = []
        d.slow.add("I0")  # its step ends after it
        d.during = lambda name: seen.append(scheduler.budget.in_use)
        deadline = None
        if path == "error raised in a decode":
            d.fail.add("I1")
        elif path == "deadline":
            deadline = time.monotonic() + 0.2

            def past_the_deadline(name: str) -> None:
                seen.append(scheduler.budget.in_use)
                while deadline is not None and time.monotonic() < deadline:
                    time.sleep(0.001)

            d.during = past_the_deadline
        elif path != "success":
            d.gates["I0"] = threading.Event()
        call = asyncio.ensure_future(scheduler.preprocess(images, deadline))
        if "I0" in d.gates:
            await until(d.began["I0"].is_set, "I0 started")
            if path == "cancellation":
                call.cancel()
            elif path == "pool shut down":
                scheduler.close()
            d.gates["I0"].set()
        expected = PATHS[path]
        if expected is None:
            assert all(map(is_input, await call))
        else:
            with pytest.raises(expected):
                await call
        await rig.budget_back()
        assert not d.started or min(seen) > 0  # held while it decoded

    run(test, preprocess_threads=1)


def test_the_budget_comes_back_when_the_pool_shuts_down_under_queued_steps() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        large = [d.image(f"L{i}", png(i)) for i in range(20)]
        small = [d.image(f"S{i}", png(200 + i)) for i in range(2)]
        large_call, small_call = await small_call_queued_behind_large_one(rig, large, small)
        rig.scheduler.close()  # drops the small call's queued step
        with pytest.raises(ShuttingDown, match="0 of 2 decoded"):
            await asyncio.wait_for(small_call, WAIT_S)
        d.gates["L1"].set()  # the large call's next step cannot be queued
        with pytest.raises(ShuttingDown, match="2 of 20 decoded"):
            await large_call
        await rig.budget_back()
        assert d.started == ["L0", "L1"]
        assert rig.decodes() == {"done": 2, "after_cancel": 0, "abandoned": 20}

    run(test, preprocess_threads=1)


def test_a_call_after_close_is_refused_with_shutting_down() -> None:
    async def test(rig: Rig) -> None:
        rig.scheduler.close()
        with pytest.raises(ShuttingDown):
            await rig.scheduler.preprocess([png(1), png(2)])
        await rig.budget_back()

    run(test)


# -- order kept -------------------------------------------------------------------------------


def test_results_keep_input_order() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        given = SampleError("shape", "found by the translator")
        images: list[Any] = [
            d.image("P0", png(10)),
            given,
            d.image("A2", np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)),
            d.image("X3", b"not an image, but bytes"),
            d.image("F4", np.full((3, 32, 32), 0.25, dtype=np.float32)),
            d.image("P5", png(20, size=40)),
        ]
        d.gates["P0"] = d.ended["P5"]  # the first image finishes after the last one
        results = await rig.scheduler.preprocess(images)
        assert d.finished[-1] == "P0"
        assert len(results) == len(images)
        assert results[1] is given
        bad = results[3]
        assert isinstance(bad, SampleError) and bad.reason == "decode"
        for i in (0, 2, 4, 5):
            result = results[i]
            assert isinstance(result, np.ndarray), i
            assert np.array_equal(result, decode_one(images[i], SPEC)), i

    run(test, preprocess_threads=2)


# -- the inline path --------------------------------------------------------------------------


def _sparse_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_header_pixels_reads_the_size_without_decoding() -> None:
    assert header_pixels(_sparse_png(40, 30)) == 1200
    assert header_pixels(b"not an image") is None


def test_only_small_images_are_preprocessed_on_the_event_loop() -> None:
    assert _cheap_to_prepare(encode_png(np.zeros((8, 8), dtype=np.uint8)))
    bomb = _sparse_png(4000, 4000)  # a few KiB that decode to 16 million pixels
    assert len(bomb) < 16 * 1024
    assert not _cheap_to_prepare(bomb)
    assert _cheap_to_prepare(np.zeros((3, 32, 32), dtype=np.float32))
    assert not _cheap_to_prepare(np.zeros((3, 224, 224), dtype=np.float32))
    assert not _cheap_to_prepare(b"garbage")  # decoded (and refused) in the pool
    zipped = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b""))
    small = encode_png(np.zeros((8, 8), dtype=np.uint8))
    over = small[:33] + zipped * 65 + small[33:]  # after IHDR, 65 compressed chunks: too many
    assert len(over) < 16 * 1024 and not _cheap_to_prepare(over)  # refused in the pool


def test_a_lone_small_image_is_decoded_on_the_event_loop_and_others_in_the_pool() -> None:
    async def test(rig: Rig) -> None:
        d = rig.decode
        loop_thread = threading.current_thread().name
        [alone] = await rig.scheduler.preprocess([d.image("alone", png(1))])
        pair = await rig.scheduler.preprocess([d.image("P0", png(2)), d.image("P1", png(3))])
        assert is_input(alone) and all(map(is_input, pair))
        assert d.threads["alone"] == loop_thread
        assert d.threads["P0"].startswith("preprocess") and d.threads["P1"] != loop_thread
        await rig.budget_back()

    run(test)
