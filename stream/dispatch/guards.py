"""The dispatcher's Redis guards: idempotency claims, frequency caps, consent facts.

Key layout (every key starts with ``[dispatch] key_prefix``):

- ``claim:<trigger_id>``      ``inflight:<owner>`` (TTL ``claim_ttl_s``), ``scheduled``
                              (until released), or ``done:<outcome>`` (``sent_retention_s``)
- ``cap:<channel>:<customer>`` sorted set of trigger ids scored by send time
- ``suppressed``              set of emails (lower case) and customer ids; see
                              ``journey suppress``
- ``signals:<journey_key>``   hash: ``unsubscribed_at``, ``purchased_at`` (event time, ms)

Crash between claim and send: the claim is ``inflight`` with a TTL and the
trigger's offset is not committed, so Kafka re-delivers it. A re-delivery that
finds another owner's in-flight claim is deferred (re-checked once the TTL has
passed), not dropped, so a crash never loses a follow-up; the price is that a
crash after the SMTP relay accepted the message but before ``done:sent`` was
written can send it twice (at-least-once, the window is one Redis write).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from stream.dispatch.policy import CustomerSignals
from stream.triggers.trigger import Trigger

CLAIMED = "claimed"
INFLIGHT = "inflight"
SCHEDULED = "scheduled"

_CLAIM = """
local v = redis.call('GET', KEYS[1])
local mine = 'inflight:' .. ARGV[1]
if (not v) or v == mine or (ARGV[3] == '1' and v == 'scheduled') then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
  return {'claimed', 0}
end
if string.sub(v, 1, 9) == 'inflight:' then
  return {'inflight', redis.call('PTTL', KEYS[1])}
end
return {v, 0}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == 'inflight:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_TAKE_CAP_SLOT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of a claim: ``claimed``, ``inflight`` (someone else's, ``ttl_ms`` left),
    ``scheduled`` or ``done:<outcome>``."""

    state: str
    ttl_ms: int = 0


class Keys:
    """Redis key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def claim(self, trigger_id: str) -> str:
        return f"{self.prefix}claim:{trigger_id}"

    def cap(self, channel: str, customer: str) -> str:
        return f"{self.prefix}cap:{channel}:{customer}"

    @property
    def suppressed(self) -> str:
        return f"{self.prefix}suppressed"

    def signals(self, journey_key: str) -> str:
        return f"{self.prefix}signals:{journey_key}"

    def signal_offset(self, topic: str, partition: int) -> str:
        return f"{self.prefix}offset:{topic}:{partition}"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule"

    @property
    def schedule_payloads(self) -> str:
        return f"{self.prefix}schedule:payload"


def suppression_entry(value: str) -> str:
    """How an email or customer id is stored in the suppression set."""
    value = value.strip()
    return value.lower() if "@" in value else value


def customer_of(trigger: Trigger) -> str:
    return trigger.customer_id or trigger.journey_key


class Guards:
    """Atomic Redis operations guarding each send."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._take_cap_slot = client.register_script(_TAKE_CAP_SLOT)

    async def claim(self, trigger_id: str, owner: str, ttl_ms: int, released: bool) -> Claim:
        """Claim ``trigger_id`` for ``owner`` (SET NX semantics, re-entrant for the owner).

        ``released`` lets the schedule's release take over a ``scheduled`` claim.
        """
        state, ttl = await self._claim(
            keys=[self.keys.claim(trigger_id)], args=[owner, ttl_ms, "1" if released else "0"]
        )
        return Claim(_text(state), int(ttl))

    async def release(self, trigger_id: str, owner: str) -> None:
        """Drop ``owner``'s in-flight claim so a later retry can send."""
        await self._release(keys=[self.keys.claim(trigger_id)], args=[owner])

    async def settle(self, trigger_id: str, outcome: str, retention_ms: int) -> None:
        """Remember the final outcome; re-deliveries are then ``deduplicated``."""
        await self.client.set(self.keys.claim(trigger_id), f"done:{outcome}", px=retention_ms)

    async def signals(self, trigger: Trigger) -> CustomerSignals:
        """Opt-out, suppression and last purchase for the trigger's customer."""
        candidates = {trigger.journey_key, customer_of(trigger)}
        if trigger.email:
            candidates.add(suppression_entry(trigger.email))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.signals(trigger.journey_key), ["unsubscribed_at", "purchased_at"])
            for c in sorted(candidates):
                pipe.sismember(self.keys.suppressed, c)
            results = await pipe.execute()
        unsubscribed_at, purchased_at = results[0]
        return CustomerSignals(
            unsubscribed=unsubscribed_at is not None,
            suppressed=any(bool(r) for r in results[1:]),
            purchased_at=None if purchased_at is None else int(purchased_at),
        )

    async def take_cap_slot(
        self, customer: str, channel: str, trigger_id: str, now_ms: int, window_ms: int, cap: int
    ) -> bool:
        """Atomically count this send in the rolling window, unless the cap is reached."""
        taken = await self._take_cap_slot(
            keys=[self.keys.cap(channel, customer)], args=[now_ms, window_ms, cap, trigger_id]
        )
        return bool(int(taken))

    async def give_back_cap_slot(self, customer: str, channel: str, trigger_id: str) -> None:
        await self.client.zrem(self.keys.cap(channel, customer), trigger_id)

    async def suppress(self, *entries: str) -> int:
        return int(await self.client.sadd(self.keys.suppressed, *map(suppression_entry, entries)))

    async def unsuppress(self, *entries: str) -> int:
        return int(await self.client.srem(self.keys.suppressed, *map(suppression_entry, entries)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
