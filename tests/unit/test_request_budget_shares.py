"""The request budget's read slots and its REST share (pipeline/request_budget.py, and
rest.BodyBudget over it): slots go round-robin by peer, a cancelled wait passes its turn on,
REST bodies and gRPC messages draw on the one budget (413 beyond what one request may hold,
503 when it stays busy)."""

from __future__ import annotations

import asyncio

import pytest

from hardscore_server.pipeline.request_budget import SMALL_BYTES, RequestBudget
from hardscore_server.transport.inference_protocol.rest import BodyBudget, BodyRefused

MIB = 1024 * 1024


def one_slot_budget() -> RequestBudget:
    budget = RequestBudget(64 * MIB, 48 * MIB)
    assert budget.read_slots == 1
    return budget


def test_read_slots_go_round_robin_by_peer() -> None:
    async def main() -> list[str]:
        budget = one_slot_budget()
        order: list[str] = []
        release = asyncio.Event()

        async def read(name: str) -> str:
            order.append(name)
            await release.wait()
            return name

        async def one(peer: str, name: str) -> None:
            await budget.read_in_slot(read(name), peer)

        tasks = [asyncio.ensure_future(one("hostile", f"h{i}")) for i in range(6)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(one("small", "s0")))
        tasks += [asyncio.ensure_future(one("other", f"o{i}")) for i in range(2)]
        await asyncio.sleep(0)
        release.set()  # every read completes at once, each in its turn
        await asyncio.gather(*tasks)
        assert budget.free_slots == 1
        return order

    # h0 held the slot; then one read per peer in turn: small's comes second, not seventh
    assert asyncio.run(main()) == ["h0", "h1", "s0", "o0", "h2", "o1", "h3", "h4", "h5"]


def test_a_cancelled_wait_for_a_slot_takes_nothing_and_passes_its_turn_on() -> None:
    async def main() -> None:
        budget = one_slot_budget()
        holding = asyncio.Event()
        release = asyncio.Event()

        async def read() -> None:
            holding.set()
            await release.wait()

        first = asyncio.ensure_future(budget.read_in_slot(read(), "a"))
        await holding.wait()
        waiting = asyncio.ensure_future(budget.read_in_slot(asyncio.sleep(0), "b"))
        after = asyncio.ensure_future(budget.read_in_slot(asyncio.sleep(0), "c"))
        await asyncio.sleep(0)
        waiting.cancel()
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await after  # granted the slot b gave up
        assert budget.free_slots == 1

    asyncio.run(main())


def test_rest_bodies_draw_on_the_request_budget() -> None:
    async def main() -> None:
        requests = RequestBudget(64 * MIB, 48 * MIB)
        bodies = BodyBudget(requests)
        assert bodies.capacity == requests.largest == 64 * MIB - 3 * SMALL_BYTES
        with pytest.raises(BodyRefused) as never_fits:  # over what one request may hold: 413
            await bodies.acquire(bodies.capacity + 1, 1.0)
        assert never_fits.value.status == 413
        assert "request_budget_bytes" in str(never_fits.value)
        # a gRPC message holds most of the budget: a body waits for it, then 503
        held = await requests.admit(20 * MIB, None)
        assert requests.in_use == held == 60 * MIB
        with pytest.raises(BodyRefused) as busy:
            await bodies.acquire(8 * MIB, 0.05)
        assert busy.value.status == 503 and "request budget busy" in str(busy.value)
        # it is served once the message is done, and gRPC then waits for the body
        waiter = asyncio.ensure_future(bodies.acquire(8 * MIB, 5.0))
        await asyncio.sleep(0)
        requests.release(held)
        await waiter
        assert requests.in_use == 8 * MIB
        assert not requests.try_take(60 * MIB)
        bodies.release(8 * MIB)
        assert requests.in_use == 0

    asyncio.run(main())
