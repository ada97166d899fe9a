"""The dispatcher's Redis guards: idempotency claims, frequency caps, consent facts.

Key layout (every key starts with ``[dispatch] key_prefix``):

- ``claim:<trigger_id>``      ``inflight:<owner>`` (TTL ``claim_ttl_s``), ``scheduled``
                              (until released), or ``done:<outcome>`` (``sent_retention_s``)
- ``cap:<channel>:<customer>`` sorted set of trigger ids scored by send time
- ``suppressed``              set of SHA-256 digests of emails (lower case) and
                              customer ids (:func:`suppression_entry`); see
                              ``journey suppress``
- ``signals:<journey_key>``   hash: ``unsubscribed_at``, ``purchased_at`` (event time, ms)
- ``erased:<digest>``         when the journey of that key digest was erased (wall ms,
                              ``sent_retention_s``); see ``stream.dispatch.erase``

- ``instance:<instance_id>``  the incarnation (process) holding that dispatcher
                              instance's lease (TTL ``instance_lease_s``, renewed)

Crash between claim and send: the claim is ``inflight`` with a TTL and the
trigger's offset is not committed, so Kafka re-delivers it. A re-delivery that
finds another owner's in-flight claim is deferred (re-checked once the TTL has
passed), not dropped, so a crash never loses a follow-up; the price is that a
crash after the SMTP relay accepted the message but before ``done:sent`` was
written can send it twice (at-least-once, the window is one Redis write).

An owner is ``<instance_id>/<incarnation>/<attempt>``. Only the process holding
its instance's lease runs (:class:`InstanceLease`), so a claim of the same
instance made by another incarnation is a dead predecessor's: the restarted
dispatcher takes it over at once instead of waiting out ``claim_ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from stream.dispatch.facts import digest, normalized, suppression_entry
from stream.dispatch.policy import CustomerSignals
from stream.triggers.trigger import Trigger

CLAIMED = "claimed"
TAKEN_OVER = "taken_over"
INFLIGHT = "inflight"
SCHEDULED = "scheduled"

# KEYS: claim, instance lease. ARGV: owner, ttl, released, "<instance>/", incarnation.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
local mine = 'inflight:' .. ARGV[1]
if (not v) or v == mine or (ARGV[3] == '1' and v == 'scheduled') then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
  return {'claimed', 0}
end
if string.sub(v, 1, 9) == 'inflight:' then
  local ours = 'inflight:' .. ARGV[4]
  if string.sub(v, 1, string.len(ours)) == ours
     and redis.call('GET', KEYS[2]) == ARGV[5]
     and string.sub(v, string.len(ours) + 1, string.len(ours) + string.len(ARGV[5])) ~= ARGV[5]
  then
    redis.call('SET', KEYS[1], mine, 'PX', ARGV[2])
    return {'taken_over', 0}
  end
  return {'inflight', redis.call('PTTL', KEYS[1])}
end
return {v, 0}
"""

_ACQUIRE_LEASE = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
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

    def erased(self, journey_key: str) -> str:
        return f"{self.prefix}erased:{digest(journey_key)}"

    def signal_offset(self, topic: str, partition: int) -> str:
        return f"{self.prefix}offset:{topic}:{partition}"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule"

    @property
    def schedule_payloads(self) -> str:
        return f"{self.prefix}schedule:payload"


def customer_of(trigger: Trigger) -> str:
    return trigger.customer_id or trigger.journey_key


class LeaseLost(RuntimeError):
    """This process no longer holds its instance's lease: it must not send."""


class InstanceLease:
    """The lease that makes one process at a time *the* dispatcher ``instance_id``.

    ``acquire`` waits for a predecessor's lease to run out (a killed process's
    lapses within ``lease_ms``) and fails if it is renewed meanwhile (another
    live process with the same instance id). ``renew`` keeps it; ``check``
    raises :class:`LeaseLost` once another incarnation took it (this one was
    paused past its lease).
    """

    def __init__(self, client: aioredis.Redis, keys: Keys, instance_id: str, lease_ms: int) -> None:
        self.client = client
        self.key = keys.instance(instance_id)
        self.instance_id = instance_id
        self.incarnation = uuid.uuid4().hex[:12]
        self.lease_ms = lease_ms
        self._acquire = client.register_script(_ACQUIRE_LEASE)

    @property
    def owner_prefix(self) -> str:
        """``<instance_id>/``: every claim this instance makes starts with it."""
        return f"{self.instance_id}/"

    async def try_acquire(self) -> bool:
        return bool(
            int(await self._acquire(keys=[self.key], args=[self.incarnation, self.lease_ms]))
        )

    async def acquire(self, poll_s: float = 0.25) -> None:
        """Take the lease, waiting at most twice its length; :class:`LeaseLost` if held."""
        deadline = time.monotonic() + 2 * self.lease_ms / 1000
        while not await self.try_acquire():
            if time.monotonic() > deadline:
                holder = await self.client.get(self.key)
                raise LeaseLost(
                    f"another dispatcher runs as instance {self.instance_id!r} "
                    f"(incarnation {_text(holder) if holder else '?'}); "
                    "give each dispatcher its own dispatch.instance_id"
                )
            await asyncio.sleep(poll_s)

    async def renew(self) -> None:
        if not await self.try_acquire():
            raise LeaseLost(f"instance {self.instance_id!r} was taken over by another process")

    async def check(self) -> None:
        holder = await self.client.get(self.key)
        if holder is None or _text(holder) != self.incarnation:
            raise LeaseLost(f"instance {self.instance_id!r} is no longer held by this process")

    async def release(self) -> None:
        """Give the lease up (a clean stop), if this process still holds it."""
        if _text(await self.client.get(self.key) or b"") == self.incarnation:
            await self.client.delete(self.key)


class Guards:
    """Atomic Redis operations guarding each send."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, lease: InstanceLease | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        self.lease = lease
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._take_cap_slot = client.register_script(_TAKE_CAP_SLOT)

    async def claim(self, trigger_id: str, owner: str, ttl_ms: int, released: bool) -> Claim:
        """Claim ``trigger_id`` for ``owner`` (SET NX semantics, re-entrant for the owner).

        ``released`` lets the schedule's release take over a ``scheduled`` claim.
        With the instance lease held, a claim of a dead predecessor of this
        instance is taken over (state ``taken_over``).
        """
        lease = self.lease
        state, ttl = await self._claim(
            keys=[self.keys.claim(trigger_id), lease.key if lease else self.keys.instance("")],
            args=[
                owner,
                ttl_ms,
                "1" if released else "0",
                lease.owner_prefix if lease else "\x00",
                lease.incarnation if lease else "\x00",
            ],
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
            candidates.add(trigger.email)
        # Digests, and plain entries a list written before digests may still hold.
        entries = sorted(
            {suppression_entry(c) for c in candidates} | set(map(normalized, candidates))
        )
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.signals(trigger.journey_key), ["unsubscribed_at", "purchased_at"])
            pipe.get(self.keys.erased(trigger.journey_key))
            pipe.smismember(self.keys.suppressed, entries)
            unsubscribed, erased_at, suppressed = await pipe.execute()
        unsubscribed_at, purchased_at = unsubscribed
        return CustomerSignals(
            unsubscribed=unsubscribed_at is not None,
            suppressed=any(bool(r) for r in suppressed),
            purchased_at=None if purchased_at is None else int(purchased_at),
            erased_at=None if erased_at is None else int(erased_at),
        )

    async def take_cap_slot(
        self, customer: str, channel: str, trigger_id: str, now_ms: int, window_ms: int, cap: int
    ) -> bool:
        """Atomically count this send in the rolling window, unless the cap is reached."""
        taken = await self._take_cap_slot(
            keys=[self.keys.cap(channel, customer)], args=[now_ms, window_ms, cap, trigger_id]
        )
        return bool(int(taken))

    async def cap_reached(
        self, customer: str, channel: str, now_ms: int, window_ms: int, cap: int
    ) -> bool:
        """Whether a send now would be capped; reads only, so it takes no slot."""
        key = self.keys.cap(channel, customer)
        return int(await self.client.zcount(key, f"({now_ms - window_ms}", "+inf")) >= cap

    async def give_back_cap_slot(self, customer: str, channel: str, trigger_id: str) -> None:
        await self.client.zrem(self.keys.cap(channel, customer), trigger_id)

    async def suppress(self, *entries: str) -> int:
        """Add ``entries`` (as digests; a plain copy of one goes). Returns how many were new."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.suppressed, *map(suppression_entry, entries))
            pipe.srem(self.keys.suppressed, *map(normalized, entries))
            added, _ = await pipe.execute()
        return int(added)

    async def unsuppress(self, *entries: str) -> int:
        """Remove ``entries`` (digest or plain). Returns how many were there."""
        members = {suppression_entry(e) for e in entries} | set(map(normalized, entries))
        return int(await self.client.srem(self.keys.suppressed, *members))

    async def is_suppressed(self, entry: str) -> bool:
        found = await self.client.smismember(
            self.keys.suppressed, [suppression_entry(entry), normalized(entry)]
        )
        return any(bool(r) for r in found)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
