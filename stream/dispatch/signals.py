"""Purchases and unsubscribes from ``touchpoints.resolved``, recorded in Redis.

The dispatcher reads the resolved topic (packed ``[[journey_key, [touchpoint,
...]], ...]`` messages) and keeps, per journey key, the latest purchase event
time and whether the customer unsubscribed. With each message it records the
next offset of that partition in the same Lua call, so "has the signal
consumer read up to offset N?" is a Redis read that any dispatcher can answer,
whichever of them owns the partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from aiokafka.partitioner import DefaultPartitioner

from stream import contract
from stream.dispatch.erase import Eraser
from stream.dispatch.facts import signals_of
from stream.dispatch.guards import Keys

_RECORD = """
for i = 2, #KEYS do
  local u = ARGV[2 * i - 2]
  local p = ARGV[2 * i - 1]
  if u ~= '' and tonumber(u) > tonumber(redis.call('HGET', KEYS[i], 'unsubscribed_at') or '-1') then
    redis.call('HSET', KEYS[i], 'unsubscribed_at', u)
  end
  if p ~= '' and tonumber(p) > tonumber(redis.call('HGET', KEYS[i], 'purchased_at') or '-1') then
    redis.call('HSET', KEYS[i], 'purchased_at', p)
  end
end
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '-1') then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


_partitioner = DefaultPartitioner()


def partition_for(journey_key: str, partitions: int) -> int:
    """The partition the engine's producer hashes ``journey_key`` to (murmur2, as Kafka's)."""
    every = list(range(partitions))
    return int(_partitioner(journey_key.encode(), every, every))


class SignalRecorder:
    """Applies resolved-topic messages to Redis, with the partition's read offset."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, topic: str, eraser: Eraser | None = None
    ) -> None:
        self.keys = keys
        self.topic = topic
        self.eraser = eraser
        self._record = client.register_script(_RECORD)

    async def record(self, partition: int, offset: int, raw: bytes | None) -> None:
        # Source marks (event-time progress) share the topic: no signals in them.
        packed = raw and contract.loads_mark(raw) is None
        signals = signals_of(contract.loads_groups(raw)) if packed and raw else {}
        erased = {k: s.erased_at for k, s in signals.items() if s.erased_at is not None}
        if erased and self.eraser is not None:
            # Before the offset is recorded: a trigger decided once the consumer
            # is past the request finds the journey erased.
            for journey_key, at in erased.items():
                await self.eraser.erase(journey_key, at)
        keys = [self.keys.signal_offset(self.topic, partition)]
        args: list[str | int] = [offset + 1]
        for journey_key, s in signals.items():
            if journey_key in erased:
                continue
            keys.append(self.keys.signals(journey_key))
            args += [
                "" if s.unsubscribed_at is None else s.unsubscribed_at,
                "" if s.purchased_at is None else s.purchased_at,
            ]
        await self._record(keys=keys, args=args)


EndOffsets = Callable[[str, int], Awaitable[int]]


class SignalProgress:
    """Whether the signal consumer has read a journey's partition up to its end."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        topic: str,
        partitions: int,
        end_offset: EndOffsets,
        poll_s: float = 0.05,
    ) -> None:
        self.client = client
        self.keys = keys
        self.topic = topic
        self.partitions = partitions
        self.end_offset = end_offset
        self.poll_s = poll_s

    async def read_offset(self, partition: int) -> int:
        value = await self.client.get(self.keys.signal_offset(self.topic, partition))
        return int(value) if value is not None else 0

    async def wait_caught_up(self, journey_key: str, timeout_s: float) -> bool:
        """True once the recorded offset reaches the end offset taken now (bounded wait)."""
        partition = partition_for(journey_key, self.partitions)
        end = await self.end_offset(self.topic, partition)
        deadline = time.monotonic() + timeout_s
        while await self.read_offset(partition) < end:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.poll_s)
        return True
