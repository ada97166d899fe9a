"""The webhook delivery loop: due entries out of the outbox, through each endpoint's
concurrency limit and circuit breaker, to delivered, retried or dead-lettered.

Endpoints are independent: each has its own limit of requests in flight and its
own breaker, and only takes from the outbox as many entries as it can start, so
a slow or failing endpoint holds up nothing but its own queue. Email never
waits for it (entries are queued when the trigger is decided; this loop runs
beside the trigger agent). While a breaker is open its entries stay queued in
Redis and are not charged an attempt; one probe goes after the cool-down.

Each finished delivery publishes an outcome record to ``journey.dispatch``
(``webhook_delivered`` or ``webhook_failed``, the endpoint in the reason); a
failed one also sends the original trigger bytes to ``journey.dispatch.dlq``
with ``reason``, ``stage=webhook``, ``endpoint``, ``trigger_id`` and ``attempts``
headers. A crash before an entry is removed sends it again after its lease,
with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
import redis.exceptions

from stream.dispatch.outcomes import OutcomeRecord
from stream.dispatch.webhooks import breaker, retry
from stream.dispatch.webhooks.endpoints import Endpoint
from stream.dispatch.webhooks.outbox import WebhookOutbox
from stream.dispatch.webhooks.sender import WebhookSender
from stream.observability import metrics as m
from stream.settings import WebhookSettings

log = logging.getLogger(__name__)

WEBHOOK_DELIVERED = "webhook_delivered"
WEBHOOK_FAILED = "webhook_failed"
STAGE = "webhook"


class Publisher(Protocol):
    """Where outcomes and dead letters go (the dispatcher's topics)."""

    async def outcome(self, key: str, record: OutcomeRecord) -> None: ...

    async def dead_letter(self, key: str | None, raw: bytes, headers: dict[str, bytes]) -> None: ...


class WebhookDelivery:
    """Runs deliveries for ``endpoints``; outcomes and dead letters go to ``publish``."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        outbox: WebhookOutbox,
        sender: WebhookSender,
        publish: Publisher,
        settings: WebhookSettings,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.outbox = outbox
        self.sender = sender
        self.publish = publish
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.policy = retry.RetryPolicy(
            settings.retry_backoff_s, settings.retry_backoff_max_s, settings.retry_after_max_s
        )
        self.breakers = {
            name: breaker.Breaker(settings.breaker_failures, settings.breaker_cooldown_s)
            for name in self.endpoints
        }
        self.in_flight = dict.fromkeys(self.endpoints, 0)
        self.tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        """New entries are queued: look now rather than at the next poll."""
        self._wake.set()

    def lease_ms(self, endpoint: Endpoint) -> int:
        # Outlasts the request: an entry is only taken again once its sender is surely gone.
        return int((endpoint.timeout_s * 2 + 10) * 1000)

    async def run(self) -> None:
        """Deliver until cancelled; Redis errors are logged and the next round tries again."""
        while True:
            try:
                await self.round()
            except redis.exceptions.RedisError as exc:
                m.DISPATCH_ERRORS.labels(stage="redis").inc()
                log.warning("cannot read the webhook outbox: %r", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    async def round(self) -> int:
        """Start every delivery that may start now; returns how many started."""
        started = 0
        if self.closed:
            return started
        for name, endpoint in self.endpoints.items():
            now = self.clock()
            gate = self.breakers[name]
            free = gate.capacity(now, endpoint.concurrency - self.in_flight[name])
            m.WEBHOOK_BREAKER.labels(endpoint=name).set(breaker.GAUGE[gate.current(now)])
            m.WEBHOOK_PENDING.labels(endpoint=name).set(await self.outbox.size(name))
            taken = await self.outbox.take_due(name, int(now * 1000), self.lease_ms(endpoint), free)
            for tid, raw_entry in taken:
                gate.started(now)
                self.in_flight[name] += 1
                task = asyncio.create_task(self._deliver(endpoint, tid, raw_entry))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                started += 1
        return started

    async def _deliver(self, endpoint: Endpoint, tid: str, raw_entry: bytes) -> None:
        try:
            await self._attempt(endpoint, tid, raw_entry)
        except redis.exceptions.RedisError as exc:
            # The entry's lease brings it back; the receiver dedupes by idempotency key.
            m.DISPATCH_ERRORS.labels(stage="redis").inc()
            log.warning("webhook %s for %s: cannot record the result: %r", endpoint.name, tid, exc)
        except Exception:  # never let one entry end the loop
            m.DISPATCH_ERRORS.labels(stage=STAGE).inc()
            log.exception("webhook %s for %s failed unexpectedly", endpoint.name, tid)
        finally:
            self.in_flight[endpoint.name] -= 1
            self.wake()

    async def _attempt(self, endpoint: Endpoint, tid: str, raw_entry: bytes) -> None:
        name = endpoint.name
        try:
            entry = orjson.loads(raw_entry)
            body, number = entry["body"].encode(), int(entry["attempts"]) + 1
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.breakers[name].succeeded()  # no request went; the endpoint is not to blame
            await self._dead_letter(endpoint, tid, {}, raw_entry, f"invalid outbox entry: {exc!r}")
            return
        result = await self.sender.post(endpoint, body, tid, number)
        now = self.clock()
        m.WEBHOOK_REQUESTS.labels(endpoint=name, result=result.result).inc()
        gate = self.breakers[name]
        if result.endpoint_failed:
            gate.failed(now)
        else:
            gate.succeeded()
        m.WEBHOOK_BREAKER.labels(endpoint=name).set(breaker.GAUGE[gate.current(now)])
        verdict = result.verdict
        if verdict == retry.DELIVERED:
            m.WEBHOOK_DELIVERIES.labels(endpoint=name, result="delivered").inc()
            reason = f"webhook {name}: HTTP {result.status} at attempt {number}"
            await self._outcome(entry, tid, WEBHOOK_DELIVERED, reason)
            await self.outbox.remove(name, tid)
            log.info("trigger %s delivered to webhook %s (attempt %d)", tid, name, number)
            return
        if verdict == retry.REJECTED or number >= endpoint.max_attempts:
            why = "not retried" if verdict == retry.REJECTED else f"after {number} attempts"
            reason = f"webhook {name}: {result.describe()} ({why})"
            await self._dead_letter(endpoint, tid, entry, entry.get("raw", "").encode(), reason)
            return
        wait = retry.delay_s(result, number, self.policy, self.rand(), now)
        entry["attempts"] = number
        entry["last_error"] = result.describe()[:300]
        await self.outbox.reschedule(name, entry, int((now + wait) * 1000))
        log.warning(
            "webhook %s for %s attempt %d: %s; next in %.1fs",
            name,
            tid,
            number,
            result.describe(),
            wait,
        )

    async def _dead_letter(
        self, endpoint: Endpoint, tid: str, entry: dict[str, Any], raw: bytes, reason: str
    ) -> None:
        log.error("trigger %s: %s", tid, reason)
        headers = {
            "reason": reason[:1000].encode(errors="replace"),
            "stage": STAGE.encode(),
            "endpoint": endpoint.name.encode(),
            "trigger_id": tid.encode(errors="replace"),
            "attempts": str(entry.get("attempts", 0) + 1 if entry else 0).encode(),
        }
        key = entry.get("journey_key") if entry else None
        await self.publish.dead_letter(key, raw, headers)
        m.WEBHOOK_DELIVERIES.labels(endpoint=endpoint.name, result="dead_lettered").inc()
        if entry:
            await self._outcome(entry, tid, WEBHOOK_FAILED, reason)
        await self.outbox.remove(endpoint.name, tid)

    async def _outcome(self, entry: dict[str, Any], tid: str, outcome: str, reason: str) -> None:
        record = OutcomeRecord(
            trigger_id=tid,
            rule=str(entry.get("rule", "")),
            journey_key=str(entry.get("journey_key", "")),
            customer_id=entry.get("customer_id"),
            outcome=outcome,
            reason=reason,
            at=int(self.clock() * 1000),
        )
        await self.publish.outcome(record.journey_key, record)

    async def close(self) -> None:
        """Stop the requests in flight (their entries come due again after the lease)."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.sender.close()
