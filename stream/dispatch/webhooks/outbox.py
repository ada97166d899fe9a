"""Webhook deliveries waiting in Redis: queued when a trigger is decided, removed once
delivered or dead-lettered.

Per endpoint, a sorted set (member = trigger id, score = when the next attempt
is due, epoch ms) and a hash of the delivery entries (the request body, the
original trigger bytes, attempts so far). Queuing is idempotent (``NX``): a
re-decided trigger neither resets its attempts nor queues twice. Taking due
entries re-scores them to ``now + lease`` in one script, as the quiet-hours
schedule does, so two dispatchers never send the same entry at once and an
entry whose sender crashed comes due again after the lease, with the same
idempotency key.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.dispatch.schedule import TAKE_DUE


class WebhookOutbox:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._take_due = client.register_script(TAKE_DUE)

    def due_key(self, endpoint: str) -> str:
        return f"{self.prefix}webhook:due:{endpoint}"

    def entries_key(self, endpoint: str) -> str:
        return f"{self.prefix}webhook:entries:{endpoint}"

    async def enqueue(self, endpoints: Iterable[str], entry: dict[str, Any], due_ms: int) -> None:
        """Queue ``entry`` (with its ``trigger_id``) for each endpoint, unless already queued."""
        tid = entry["trigger_id"]
        value = orjson.dumps(entry)
        async with self.client.pipeline(transaction=True) as pipe:
            for name in endpoints:
                pipe.hsetnx(self.entries_key(name), tid, value)
                pipe.zadd(self.due_key(name), {tid: due_ms}, nx=True)
            await pipe.execute()

    async def take_due(
        self, endpoint: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[tuple[str, bytes]]:
        """Up to ``limit`` due (trigger id, entry bytes) of ``endpoint``, leased to the caller."""
        if limit <= 0:
            return []
        flat = await self._take_due(
            keys=[self.due_key(endpoint), self.entries_key(endpoint)],
            args=[now_ms, lease_ms, limit],
        )
        return [
            (bytes(flat[i]).decode(errors="replace"), bytes(flat[i + 1]))
            for i in range(0, len(flat), 2)
        ]

    async def reschedule(self, endpoint: str, entry: dict[str, Any], due_ms: int) -> None:
        """Store ``entry`` (its attempts updated) and make it due at ``due_ms``."""
        tid = entry["trigger_id"]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.entries_key(endpoint), tid, orjson.dumps(entry))
            pipe.zadd(self.due_key(endpoint), {tid: due_ms})
            await pipe.execute()

    async def remove(self, endpoint: str, trigger_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.due_key(endpoint), trigger_id)
            pipe.hdel(self.entries_key(endpoint), trigger_id)
            await pipe.execute()

    async def size(self, endpoint: str) -> int:
        return int(await self.client.zcard(self.due_key(endpoint)))
