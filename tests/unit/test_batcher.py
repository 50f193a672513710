"""The dynamic batcher's guarantees, one test each, without gRPC or a real model.

The fake model records every batch it runs and answers each sample with its own input value,
so a test can check exactly which samples ran together and that outputs return to their owner.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from hardscore_server.metrics import ServerMetrics
from hardscore_server.pipeline.batcher import DynamicBatcher
from hardscore_server.pipeline.errors import DeadlineExpired, QueueFull, ShuttingDown


class RecordingModel:
    """Model stand-in: output row = input row * 2; each call sleeps ``seconds``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[list[float]] = []
        self.started = threading.Event()
        self.release: threading.Event | None = None

    def __call__(self, instance: int, inputs: np.ndarray) -> np.ndarray:
        self.batches.append(inputs[:, 0].tolist())
        self.started.set()
        if self.release is not None:
            self.release.wait(10)
        if self.seconds:
            time.sleep(self.seconds)
        return inputs * 2


def run(test: Callable[..., Awaitable[Any]], model: RecordingModel, **settings: Any) -> Any:
    """Runs ``test(batcher)`` on a fresh event loop with a new batcher, then drains it."""
    options = {"max_batch_size": 8, "max_queue_delay_s": 0.05, "max_queue_size": 64, **settings}

    async def main() -> Any:
        batcher = DynamicBatcher(model, **options)
        try:
            return await test(batcher)
        finally:
            await batcher.close()

    return asyncio.run(main())


def samples(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1)


def test_large_request_spans_several_batches_and_comes_back_in_order():
    model = RecordingModel()

    async def test(batcher: DynamicBatcher) -> np.ndarray:
        return await batcher.infer(samples(0, 20))

    out = run(test, model)
    assert out[:, 0].tolist() == [2.0 * i for i in range(20)]
    assert [len(b) for b in model.batches] == [8, 8, 4]


def test_many_small_requests_share_one_batch():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.infer(samples(100, 1)))
        await asyncio.to_thread(model.started.wait, 5)  # the model is now busy
        others = [asyncio.ensure_future(batcher.infer(samples(i, 1))) for i in range(6)]
        await asyncio.sleep(0.01)
        model.release.set()  # type: ignore[union-attr]
        return await asyncio.gather(first, *others)

    outs = run(test, model, max_queue_delay_s=0.02)
    assert [o[0, 0] for o in outs[1:]] == [2.0 * i for i in range(6)]
    assert model.batches == [[100.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]


def test_lone_request_on_idle_model_pays_no_batching_delay():
    model = RecordingModel()

    async def test(batcher: DynamicBatcher) -> float:
        started = time.perf_counter()
        await batcher.infer(samples(0, 1))
        return time.perf_counter() - started

    elapsed = run(test, model, max_queue_delay_s=5.0)
    assert elapsed < 1.0  # far below the 5 s queue delay, with room for a loaded machine


def test_partial_batch_waits_at_most_max_queue_delay():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> float:
        first = asyncio.ensure_future(batcher.infer(samples(100, 1)))
        await asyncio.to_thread(model.started.wait, 5)
        # two requests queue behind the busy model; release it at once: the pair is a partial
        # batch (2 < 8) and must wait for company no longer than the queue delay
        a = asyncio.ensure_future(batcher.infer(samples(0, 1)))
        b = asyncio.ensure_future(batcher.infer(samples(1, 1)))
        await asyncio.sleep(0)
        queued_at = time.perf_counter()
        model.release.set()  # type: ignore[union-attr]
        await asyncio.gather(first, a, b)
        return time.perf_counter() - queued_at

    elapsed = run(test, model, max_queue_delay_s=0.3)
    assert model.batches == [[100.0], [0.0, 1.0]]
    assert 0.25 <= elapsed < 1.0


def test_full_batch_runs_without_waiting_for_the_delay():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> float:
        first = asyncio.ensure_future(batcher.infer(samples(100, 1)))
        await asyncio.to_thread(model.started.wait, 5)
        rest = [asyncio.ensure_future(batcher.infer(samples(i, 1))) for i in range(8)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        model.release.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)
        return time.perf_counter() - started

    elapsed = run(test, model, max_queue_delay_s=5.0)
    assert model.batches[1] == [float(i) for i in range(8)]
    assert elapsed < 1.0


@pytest.mark.parametrize(("callers", "sizes"), [(2, [1, 1, 2, 2, 2, 2, 2]),
                                                (4, [1, 4, 4, 4, 4, 4, 3])])
def test_returning_callers_share_one_batch_instead_of_alternating(callers, sizes):
    # Closed-loop callers (each sends its next sample as soon as it has its answer): the
    # batch that just finished has its callers back within microseconds, far inside the queue
    # delay, so the freed model waits for them and every caller shares every batch. (Without
    # the rule the callers split into groups that alternate on the model: 1, 4, 1, 4, ... or
    # 1, 1, 1, ...) The first batches form before anything is known of the callers; the last
    # one waits for a sample that never comes, then runs.
    model = RecordingModel(seconds=0.02)

    async def test(batcher: DynamicBatcher) -> None:
        async def caller(c: int) -> None:
            for i in range(6):
                out = await batcher.infer(samples(100 * c + i, 1))
                assert out[0, 0] == 2.0 * (100 * c + i)

        await asyncio.gather(*(caller(c) for c in range(callers)))

    run(test, model, max_queue_delay_s=0.05)
    assert [len(b) for b in model.batches] == sizes


def test_waiting_for_returning_callers_is_bounded_by_the_queue_delay():
    model = RecordingModel(seconds=0.02)

    async def test(batcher: DynamicBatcher) -> float:
        async def a() -> float:
            await batcher.infer(samples(0, 1))
            started = time.perf_counter()  # queued while b's first sample runs
            await batcher.infer(samples(1, 1))
            elapsed = time.perf_counter() - started
            await batcher.infer(samples(2, 1))
            return elapsed

        async def b() -> None:  # one call, never comes back
            await batcher.infer(samples(10, 1))

        waited, _ = await asyncio.gather(a(), b())
        return waited

    elapsed = run(test, model, max_queue_delay_s=0.3)
    assert model.batches == [[0.0], [10.0], [1.0], [2.0]]
    # a's second sample waited for b's return (a came back at once, so b was expected to),
    # up to the 0.3 s delay after b's batch finished, and no longer
    assert 0.25 <= elapsed < 1.0


def test_preferred_batch_size_cuts_batches():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> None:
        first = asyncio.ensure_future(batcher.infer(samples(100, 1)))
        await asyncio.to_thread(model.started.wait, 5)
        rest = asyncio.ensure_future(batcher.infer(samples(0, 6)))
        await asyncio.sleep(0)
        model.release.set()  # type: ignore[union-attr]
        await asyncio.gather(first, rest)

    run(test, model, preferred_batch_sizes=(4,), max_queue_delay_s=0.01)
    assert [len(b) for b in model.batches] == [1, 4, 2]


def test_queue_full_refuses_whole_request_and_queues_nothing():
    model = RecordingModel()
    model.release = threading.Event()
    metrics = ServerMetrics()

    async def test(batcher: DynamicBatcher) -> tuple[int, int]:
        running = asyncio.ensure_future(batcher.infer(samples(0, 8)))
        await asyncio.to_thread(model.started.wait, 5)
        queued = asyncio.ensure_future(batcher.infer(samples(8, 10)))
        await asyncio.sleep(0)
        before = batcher.queued_samples
        with pytest.raises(QueueFull, match="queue full: 10 samples waiting"):
            await batcher.infer(samples(50, 7))  # 10 + 7 > 16
        after = batcher.queued_samples
        model.release.set()  # type: ignore[union-attr]
        await asyncio.gather(running, queued)
        return before, after

    before, after = run(test, model, max_queue_size=16, metrics=metrics)
    assert before == after == 10
    assert all(50.0 not in b for b in model.batches)
    value = metrics.registry.get_sample_value(
        "hardscore_rejections_total", {"model": "model", "reason": "queue_full"})
    assert value == 7


def test_expired_request_is_not_computed():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> None:
        running = asyncio.ensure_future(batcher.infer(samples(0, 1)))
        await asyncio.to_thread(model.started.wait, 5)
        late = asyncio.ensure_future(batcher.infer(samples(7, 3), deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.1)  # the deadline passes while the model is busy
        model.release.set()  # type: ignore[union-attr]
        await running
        with pytest.raises(DeadlineExpired):
            await late

    run(test, model)
    assert all(7.0 not in b for b in model.batches)


def test_cancelled_request_leaves_the_queue():
    model = RecordingModel()
    model.release = threading.Event()

    async def test(batcher: DynamicBatcher) -> tuple[int, int]:
        running = asyncio.ensure_future(batcher.infer(samples(0, 1)))
        await asyncio.to_thread(model.started.wait, 5)
        doomed = asyncio.ensure_future(batcher.infer(samples(40, 5)))
        keep = asyncio.ensure_future(batcher.infer(samples(60, 2)))
        await asyncio.sleep(0)
        queued_before = batcher.queued_samples
        doomed.cancel()
        await asyncio.sleep(0)
        queued_after = batcher.queued_samples
        model.release.set()  # type: ignore[union-attr]
        await asyncio.gather(running, keep)
        return queued_before, queued_after

    before, after = run(test, model)
    assert (before, after) == (7, 2)
    assert all(40.0 not in b for b in model.batches)
    assert [60.0, 61.0] in model.batches


def test_concurrent_requests_each_get_exactly_their_outputs():
    model = RecordingModel(seconds=0.002)

    async def test(batcher: DynamicBatcher) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(0)
        inputs = [samples(1000 * i, int(rng.integers(1, 30))) for i in range(40)]
        outs = await asyncio.gather(*[batcher.infer(x) for x in inputs])
        return list(zip(inputs, outs, strict=True))

    pairs = run(test, model, instances=2, max_queue_size=2000)
    for x, y in pairs:
        np.testing.assert_array_equal(y, x * 2)
    assert max(len(b) for b in model.batches) <= 8
    assert sum(len(b) for b in model.batches) == sum(len(x) for x, _ in pairs)


def test_model_error_fails_only_the_requests_in_that_batch():
    calls = {"n": 0}

    def flaky(instance: int, inputs: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if 13.0 in inputs[:, 0]:
            raise RuntimeError("model exploded")
        return inputs * 2

    async def test(batcher: DynamicBatcher) -> np.ndarray:
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.infer(samples(13, 1))
        return await batcher.infer(samples(0, 3))

    out = run(test, flaky)  # type: ignore[arg-type]
    assert out[:, 0].tolist() == [0.0, 2.0, 4.0]


def test_close_drains_accepted_requests_and_refuses_new_ones():
    model = RecordingModel(seconds=0.01)

    async def main() -> tuple[list[np.ndarray], BaseException | None]:
        batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=0.0,
                                 max_queue_size=64)
        accepted = [asyncio.ensure_future(batcher.infer(samples(10 * i, 3))) for i in range(5)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        refused: BaseException | None = None
        try:
            await batcher.infer(samples(999, 1))
        except ShuttingDown as exc:
            refused = exc
        outs = await asyncio.gather(*accepted)
        await closing
        return outs, refused

    outs, refused = asyncio.run(main())
    assert isinstance(refused, ShuttingDown)
    for i, out in enumerate(outs):
        assert out[:, 0].tolist() == [2.0 * (10 * i + k) for k in range(3)]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_queue_delay_s": -1}, "max_queue_delay_s must be >= 0"),
        ({"max_queue_size": 4}, "max_queue_size (4) must be >= max_batch_size (8)"),
        ({"instances": 0}, "instances must be an integer >= 1"),
        ({"preferred_batch_sizes": (9,)}, "preferred_batch_sizes must lie in 1..8"),
    ],
)
def test_settings_are_validated_with_precise_messages(settings, message):
    options = {"max_batch_size": 8, "max_queue_delay_s": 0.0, "max_queue_size": 64, **settings}
    with pytest.raises(ValueError) as info:
        DynamicBatcher(RecordingModel(), **options)
    assert message in str(info.value)


def test_extra_outputs_reach_only_the_requests_that_asked():
    """run_all (the model's outputs and an extra one, row * 3) runs only for batches holding
    a request that asked; only those requests get the extra rows; both share batches."""
    model = RecordingModel()
    all_runs: list[int] = []

    def run_all(instance: int, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        all_runs.append(len(inputs))
        return model(instance, inputs), inputs * 3

    async def test(batcher: DynamicBatcher) -> Any:
        plain = await batcher.infer(samples(0, 3))
        assert not all_runs
        asked, mixed = await asyncio.gather(
            batcher.infer_all(samples(10, 5)), batcher.infer(samples(20, 4)))
        return plain, asked, mixed

    plain, asked, mixed = run(test, model, max_batch_size=4, run_all=run_all)
    np.testing.assert_array_equal(plain, samples(0, 3) * 2)
    assert isinstance(mixed, np.ndarray)
    np.testing.assert_array_equal(mixed, samples(20, 4) * 2)
    assert len(asked) == 2
    np.testing.assert_array_equal(asked[0], samples(10, 5) * 2)
    np.testing.assert_array_equal(asked[1], samples(10, 5) * 3)
    assert sum(all_runs) >= 5  # every batch with an asking request's rows ran run_all


def test_infer_all_needs_run_all():
    async def test(batcher: DynamicBatcher) -> Any:
        with pytest.raises(ValueError, match="no run_all"):
            await batcher.infer_all(samples(0, 1))
        return batcher.can_infer_all

    assert run(test, RecordingModel()) is False
