"""The quiet-hours schedule: triggers waiting in Redis until their release time.

A sorted set (member = trigger id, score = release time in epoch ms) plus a
hash of the original trigger bytes. Both live in Redis, so the schedule
survives a dispatcher restart. Taking due entries is one Lua script that
re-scores each taken entry to ``now + lease`` instead of removing it: two
dispatchers never take the same entry, and an entry whose taker crashed comes
due again after the lease. The entry is removed once its trigger has a final
outcome (:meth:`Schedule.remove`).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from stream.dispatch.guards import SCHEDULED, Keys

#: Takes up to ARGV[3] entries due by ARGV[1] (KEYS[1] the due times, KEYS[2] the
#: entries) and re-scores them to now + ARGV[2]: a lease, so two takers never get one.
TAKE_DUE = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, payload)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


class Schedule:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._take_due = client.register_script(TAKE_DUE)

    async def put(
        self, trigger_id: str, raw: bytes, release_ms: int, now_ms: int, claim_ttl_ms: int
    ) -> None:
        """Hold ``raw`` until ``release_ms``; the trigger's claim becomes ``scheduled``
        (kept until the release plus one claim TTL), so re-deliveries are duplicates."""
        keep_ms = max(1, release_ms - now_ms) + claim_ttl_ms
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.schedule_payloads, trigger_id, raw)
            pipe.zadd(self.keys.schedule, {trigger_id: release_ms})
            pipe.set(self.keys.claim(trigger_id), SCHEDULED, px=keep_ms)
            await pipe.execute()

    async def defer(self, trigger_id: str, raw: bytes, release_ms: int) -> None:
        """Re-check later without touching the claim (someone else holds it)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.schedule_payloads, trigger_id, raw)
            pipe.zadd(self.keys.schedule, {trigger_id: release_ms})
            await pipe.execute()

    async def take_due(
        self, now_ms: int, lease_ms: int, limit: int = 100
    ) -> list[tuple[str, bytes]]:
        """Due entries as (trigger id, trigger bytes), leased to the caller."""
        flat = await self._take_due(
            keys=[self.keys.schedule, self.keys.schedule_payloads], args=[now_ms, lease_ms, limit]
        )
        out = []
        for i in range(0, len(flat), 2):
            tid, payload = flat[i], flat[i + 1]
            out.append(
                (
                    tid.decode() if isinstance(tid, bytes) else str(tid),
                    payload if isinstance(payload, bytes) else str(payload).encode(),
                )
            )
        return out

    async def remove(self, trigger_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.schedule, trigger_id)
            pipe.hdel(self.keys.schedule_payloads, trigger_id)
            await pipe.execute()

    async def size(self) -> int:
        return int(await self.client.zcard(self.keys.schedule))
