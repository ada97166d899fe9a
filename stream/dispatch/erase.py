"""The dispatcher's part of erasing a customer, and of exporting what it holds on one.

An erase request (``journey forget``, ``DELETE /customers/{id}``) travels on
``touchpoints.resolved`` like any touchpoint of the journey, so the signal
consumer reads it in order with the purchases and unsubscribes before it.
:class:`Eraser` then deletes the journey's signals, its frequency-cap entries
and its triggers waiting in the quiet-hours schedule (each settled ``erased``),
and keeps only ``erased:<digest>`` (when, no name) for ``sent_retention_s``:
a trigger of the erased journey still in ``journey.triggers`` is then never
sent (``stream.dispatch.policy``). A customer id on the suppression list stays
there as a digest.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.dispatch import outcomes
from stream.dispatch.facts import normalized, suppression_entry
from stream.dispatch.guards import Keys

# KEYS: erased marker, signals hash, suppression set. ARGV: at, retention ms,
# plain entry, digest entry.
_ERASE = """
local was = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > was then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('DEL', KEYS[2])
if redis.call('SREM', KEYS[3], ARGV[3]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[4])
end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Eraser:
    """Deletes and exports one journey's data in the dispatcher's Redis."""

    def __init__(self, client: aioredis.Redis, keys: Keys, retention_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.retention_ms = retention_ms
        self._erase = client.register_script(_ERASE)

    async def erase(self, journey_key: str, at: int) -> int:
        """Erase ``journey_key``'s dispatcher data (idempotent). Returns the keys deleted."""
        await self._erase(
            keys=[
                self.keys.erased(journey_key),
                self.keys.signals(journey_key),
                self.keys.suppressed,
            ],
            args=[at, self.retention_ms, normalized(journey_key), suppression_entry(journey_key)],
        )
        deleted = 0
        caps = [k async for k in self.client.scan_iter(match=self._cap_pattern(journey_key))]
        if caps:
            deleted += int(await self.client.delete(*caps))
        for trigger_id, _ in await self.scheduled(journey_key):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.schedule, trigger_id)
                pipe.hdel(self.keys.schedule_payloads, trigger_id)
                pipe.set(
                    self.keys.claim(trigger_id), f"done:{outcomes.ERASED}", px=self.retention_ms
                )
                await pipe.execute()
            deleted += 1
        return deleted

    def _cap_pattern(self, customer: str) -> str:
        return f"{_glob(self.keys.prefix)}cap:*:{_glob(customer)}"

    async def scheduled(self, journey_key: str) -> list[tuple[str, dict[str, Any]]]:
        """(trigger id, trigger) of the journey's triggers waiting in the schedule."""
        out = []
        async for tid, raw in self.client.hscan_iter(self.keys.schedule_payloads):
            try:
                trigger = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(trigger, dict) and trigger.get("journey_key") == journey_key:
                out.append((_text(tid), trigger))
        return out

    async def export(self, journey_key: str, emails: list[str]) -> dict[str, Any]:
        """Everything the dispatcher keeps on ``journey_key`` (and its ``emails``)."""
        signals = await self.client.hgetall(self.keys.signals(journey_key))
        caps: dict[str, list[str]] = {}
        async for key in self.client.scan_iter(match=self._cap_pattern(journey_key)):
            channel = _text(key)[len(self.keys.prefix) + len("cap:") :].split(":", 1)[0]
            members = await self.client.zrange(key, 0, -1)
            caps[channel] = [_text(m) for m in members if isinstance(m, (bytes, str))]
        suppressed = {}
        for entry in [journey_key, *emails]:
            found = await self.client.smismember(
                self.keys.suppressed, [suppression_entry(entry), normalized(entry)]
            )
            suppressed[entry] = any(bool(r) for r in found)
        erased_at = await self.client.get(self.keys.erased(journey_key))
        return {
            "signals": {_text(k): int(v) for k, v in signals.items()},
            "frequency_cap": caps,
            "scheduled": [t for _, t in await self.scheduled(journey_key)],
            "suppressed": suppressed,
            "erased_at": None if erased_at is None else int(erased_at),
        }
