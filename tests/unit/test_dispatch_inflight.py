"""Concurrent dispatch: bounded, one key's work in order, acks in offset order."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.dispatch.inflight import InFlight


class Gate:
    """Work that ends when the test opens it, recording start and end."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name
        self.opened = asyncio.Event()

    async def __call__(self) -> None:
        self.log.append(f"start {self.name}")
        await self.opened.wait()
        self.log.append(f"end {self.name}")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_slow_key_holds_up_only_itself_and_acks_wait_for_it() -> None:
    log: list[str] = []
    acked: list[int] = []
    runner = InFlight(8)
    slow, other, same = Gate(log, "ann-1"), Gate(log, "bob-1"), Gate(log, "ann-2")
    for offset, (key, gate) in enumerate([("ann", slow), ("bob", other), ("ann", same)]):
        await runner.submit(key, "p0", gate, lambda o=offset: acked.append(o))
    await settle()
    # Bob starts beside Ann; Ann's second waits for her first.
    assert log == ["start ann-1", "start bob-1"]
    other.opened.set()
    await settle()
    assert log[-1] == "end bob-1"
    assert acked == []  # offset 1 is done, but offset 0 is not: nothing to commit
    slow.opened.set()
    await settle()
    assert log[-2:] == ["end ann-1", "start ann-2"]
    assert acked == [0, 1]
    same.opened.set()
    assert await runner.drain(5)
    assert acked == [0, 1, 2] and runner.count == 0 and runner.unacked("p0") == 0


async def test_no_more_than_the_limit_at_once() -> None:
    runner = InFlight(3)
    gates = [Gate([], str(i)) for i in range(5)]
    for i in range(3):
        await runner.submit(f"k{i}", "p", gates[i], lambda: None)
    fourth = asyncio.create_task(runner.submit("k3", "p", gates[3], lambda: None))
    await settle()
    assert not fourth.done() and runner.count == 3
    gates[1].opened.set()
    await asyncio.wait_for(fourth, 5)
    for g in gates:
        g.opened.set()
    assert await runner.drain(5)


async def test_failed_work_is_never_acked_and_stops_the_next_submit() -> None:
    acked: list[int] = []
    runner = InFlight(4)

    async def boom() -> None:
        raise RuntimeError("broker down")

    async def fine() -> None:
        return None

    await runner.submit("a", "p", boom, lambda: acked.append(0))
    await runner.submit("b", "p", fine, lambda: acked.append(1))
    assert await runner.drain(5)
    assert acked == [] and runner.unacked("p") == 2
    with pytest.raises(RuntimeError, match="broker down"):
        await runner.submit("c", "p", fine, lambda: acked.append(2))


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_a_limit_out_of_range_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight must be from 1 to 10000"):
        InFlight(limit)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcde"), min_size=1, max_size=40),
    partitions=st.integers(min_value=1, max_value=3),
    limit=st.integers(min_value=1, max_value=6),
    seed=st.integers(),
)
def test_any_interleaving_keeps_key_order_and_acks_a_prefix(
    keys: list[str], partitions: int, limit: int, seed: int
) -> None:
    rng = random.Random(seed)

    async def scenario() -> None:
        runner = InFlight(limit)
        decided: list[tuple[str, int]] = []
        acked: dict[int, list[int]] = {p: [] for p in range(partitions)}
        done: dict[int, set[int]] = {p: set() for p in range(partitions)}
        running = 0
        peak = 0

        async def work(key: str, n: int, p: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            for _ in range(rng.randint(0, 5)):
                await asyncio.sleep(0)
            decided.append((key, n))
            done[p].add(n)
            running -= 1

        def ack(p: int, n: int) -> None:
            # Every earlier submission of the partition is done when one is acked.
            assert all(m in done[p] for m in range(n + 1) if m % partitions == p)
            acked[p].append(n)

        for n, key in enumerate(keys):
            p = n % partitions
            await runner.submit(
                key, p, lambda k=key, n=n, p=p: work(k, n, p), lambda p=p, n=n: ack(p, n)
            )
        assert await runner.drain(10)
        for key in set(keys):
            assert [n for k, n in decided if k == key] == [
                n for n, k in enumerate(keys) if k == key
            ]
        for p in range(partitions):
            assert acked[p] == [n for n in range(len(keys)) if n % partitions == p]
        assert peak <= limit

    asyncio.run(scenario())


async def test_work_of_no_partition_is_ordered_with_its_key_and_its_failure_only_logged() -> None:
    log: list[str] = []
    runner = InFlight(4)
    first = Gate(log, "stream")

    async def released() -> None:
        log.append("released")
        raise RuntimeError("redis down")

    await runner.submit("ann", "p", first, lambda: log.append("acked"))
    await runner.submit("ann", None, released)
    await settle()
    assert log == ["start stream"]  # the released one waits for the same customer's
    first.opened.set()
    assert await runner.drain(5)
    assert log == ["start stream", "end stream", "acked", "released"]
    assert runner.failure is None
    await runner.submit("bob", "p", first, lambda: None)  # the runner goes on
    assert await runner.drain(5)
