"""One trigger from decision to outcome: claim, screen, cap, hold out or render and send, record.

The order of the checks and why is in :mod:`stream.dispatch.policy`. Every
decision is published to ``journey.dispatch`` and counted in
``journey_dispatch_outcomes_total``. SMTP and Redis errors are retried with
exponential backoff; after ``max_attempts`` the trigger's original bytes go to
``journey.dispatch.dlq`` with the reason in a header, its claim is released
(a replay from the DLQ can send it) and the outcome is ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.exceptions

from stream.dispatch import outcomes, tokens
from stream.dispatch.guards import (
    CLAIMED,
    INFLIGHT,
    TAKEN_OVER,
    Guards,
    LeaseLost,
    customer_of,
)
from stream.dispatch.links import TrackingLinks
from stream.dispatch.message import build_message, message_id
from stream.dispatch.outcomes import OutcomeRecord
from stream.dispatch.policy import screen
from stream.dispatch.quiet_hours import QuietHours
from stream.dispatch.render import Renderer, RenderError
from stream.dispatch.schedule import Schedule
from stream.dispatch.signals import SignalProgress
from stream.dispatch.smtp import SendError, SmtpSender
from stream.dispatch.webhooks.channel import WebhookChannel
from stream.observability import metrics as m
from stream.settings import Settings
from stream.triggers.channels import EMAIL_ONLY, Route
from stream.triggers.holdout import Holdouts
from stream.triggers.trigger import Trigger

log = logging.getLogger(__name__)

CHANNEL = "email"
UNKNOWN_RULE = "unknown"


#: Starts a dispatch: ``run(journey_key, work)``.
Run = Callable[[str, Callable[[], Awaitable[object]]], Awaitable[None]]


class Outbox(Protocol):
    """Where outcomes and dead letters go (Kafka topics in the Faust shell)."""

    async def outcome(self, key: str, record: OutcomeRecord) -> None: ...

    async def dead_letter(self, key: str | None, raw: bytes, headers: dict[str, bytes]) -> None: ...


class Failure(Exception):
    """Giving up on a trigger: why, and at which stage."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        guards: Guards,
        schedule: Schedule,
        progress: SignalProgress,
        renderer: Renderer,
        sender: SmtpSender,
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        holdouts: Holdouts | None = None,
        webhooks: WebhookChannel | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.dispatch
        self.guards = guards
        self.schedule = schedule
        self.progress = progress
        self.renderer = renderer
        self.sender = sender
        self.outbox = outbox
        self.clock = clock
        self.sleep = sleep
        self.holdouts = holdouts or Holdouts()
        self.webhooks = webhooks
        self.quiet = QuietHours.parse(self.config.quiet_start, self.config.quiet_end)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- entry points -------------------------------------------------------
    async def on_trigger(self, raw: bytes | None, source: dict[str, bytes]) -> str | None:
        """Handle one message of the triggers topic; returns the outcome (None: re-check later)."""
        try:
            trigger = Trigger.loads(raw or b"")
        except Exception as exc:  # any malformed value: dead-letter it, never crash the agent
            m.DISPATCH_OUTCOMES.labels(rule=UNKNOWN_RULE, outcome=outcomes.FAILED).inc()
            await self.outbox.dead_letter(
                None,
                raw or b"",
                {
                    **source,
                    "reason": f"invalid trigger: {exc!r}"[:500].encode(),
                    "stage": b"decode",
                },
            )
            return outcomes.FAILED
        return await self.dispatch(trigger, raw or b"", released=False, source=source)

    async def dispatch(
        self,
        trigger: Trigger,
        raw: bytes,
        released: bool,
        source: dict[str, bytes] | None = None,
    ) -> str | None:
        """Decide and act on one trigger, retrying transient errors with backoff."""
        lease = self.guards.lease
        incarnation = f"{lease.owner_prefix}{lease.incarnation}" if lease else "anonymous"
        owner = f"{incarnation}/{uuid.uuid4().hex[:8]}"
        attempts = max(1, self.config.max_attempts)
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(trigger, raw, released, owner)
            except LeaseLost as exc:
                # Not this process's to send any more; whoever holds the lease decides.
                log.warning("trigger %s not sent: %s", trigger.trigger_id, exc)
                m.DISPATCH_ERRORS.labels(stage="lease").inc()
                recheck = self.now_ms() + int(self.config.instance_lease_s * 1000)
                await self.schedule.defer(trigger.trigger_id, raw, recheck)
                return None
            except RenderError as exc:
                m.DISPATCH_ERRORS.labels(stage="render").inc()
                return await self._fail(trigger, raw, released, owner, "render", str(exc), source)
            except (redis.exceptions.RedisError, SendError) as exc:
                stage = "smtp" if isinstance(exc, SendError) else "redis"
                m.DISPATCH_ERRORS.labels(stage=stage).inc()
                last = f"{stage}: {exc}"
                log.warning("trigger %s attempt %d failed: %s", trigger.trigger_id, attempt, last)
                if attempt == attempts:
                    reason = f"{last} (after {attempts} attempts)"
                    return await self._fail(trigger, raw, released, owner, stage, reason, source)
                delay = self.config.retry_backoff_s * 2 ** (attempt - 1)
                await self.sleep(min(delay, self.config.retry_backoff_max_s))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the steps -------------------------------------------------------------
    async def _attempt(
        self, trigger: Trigger, raw: bytes, released: bool, owner: str
    ) -> str | None:
        cfg = self.config
        tid = trigger.trigger_id
        claim_ttl_ms = int(cfg.claim_ttl_s * 1000)
        claim = await self.guards.claim(tid, owner, claim_ttl_ms, released)
        if claim.state == TAKEN_OVER:
            log.info("trigger %s: taking over the claim of this instance's last process", tid)
        if claim.state == INFLIGHT:
            # Someone else (maybe a crashed dispatcher) holds it: look again once it expires.
            await self.schedule.defer(tid, raw, self.now_ms() + claim.ttl_ms + 100)
            log.info("trigger %s is in flight elsewhere; re-check in %d ms", tid, claim.ttl_ms)
            return None
        if claim.state not in (CLAIMED, TAKEN_OVER):
            if released:
                await self.schedule.remove(tid)
            return await self._publish(trigger, outcomes.DEDUPLICATED, f"already {claim.state}")

        # A purchase already in Kafka must be in Redis before deciding.
        if not await self.progress.wait_caught_up(trigger.journey_key, cfg.signal_wait_s):
            m.DISPATCH_ERRORS.labels(stage="signals").inc()
            now = self.now_ms()
            await self.schedule.put(
                tid, raw, now + int(cfg.recheck_delay_s * 1000), now, claim_ttl_ms
            )
            log.warning(
                "signals lag behind for %s; trigger %s re-checked later", trigger.journey_key, tid
            )
            return None

        signals = await self.guards.signals(trigger)
        now = self.now_ms()
        route = self.webhooks.route(trigger.rule) if self.webhooks else EMAIL_ONLY
        decision = screen(
            trigger, signals, now, self.quiet, cfg.default_timezone, needs_email=route.email
        )
        if decision is not None and decision.outcome == outcomes.DELAYED_QUIET_HOURS:
            assert decision.release_at is not None
            await self.schedule.put(tid, raw, decision.release_at, now, claim_ttl_ms)
            return await self._publish(
                trigger, decision.outcome, decision.reason, release_at=decision.release_at
            )
        if decision is not None:
            return await self._settle(trigger, released, decision.outcome, decision.reason)

        customer = customer_of(trigger)
        window_ms = int(cfg.cap_window_s * 1000)
        if self.holdouts.held_out(trigger.rule, customer):
            # The control group: the cap applies as it would to a send, but no slot is taken.
            if await self.guards.cap_reached(customer, CHANNEL, now, window_ms, cfg.cap_max):
                reason = f"{cfg.cap_max} {CHANNEL} follow-ups within {cfg.cap_window_s:g}s"
                return await self._settle(trigger, released, outcomes.CAPPED, reason)
            reason = f"in the control group of rule {trigger.rule!r}"
            return await self._settle(trigger, released, outcomes.HELD_OUT, reason)
        if not await self.guards.take_cap_slot(customer, CHANNEL, tid, now, window_ms, cfg.cap_max):
            reason = f"{cfg.cap_max} {CHANNEL} follow-ups within {cfg.cap_window_s:g}s"
            return await self._settle(trigger, released, outcomes.CAPPED, reason)
        try:
            if self.guards.lease is not None:
                # Paused past the lease, another process may be this instance now.
                await self.guards.lease.check()
            msg_id, how = await self._send_channels(trigger, raw, route, now)
        except BaseException:
            with contextlib.suppress(redis.exceptions.RedisError):
                await self.guards.give_back_cap_slot(customer, CHANNEL, tid)
            raise
        if trigger.fired_at:
            m.TRIGGER_TO_SEND.observe(max(0.0, self.clock() - trigger.fired_at / 1000))
        await self._after_send(trigger, released)
        return await self._publish(trigger, outcomes.SENT, how, message_id=msg_id)

    async def _send_channels(
        self, trigger: Trigger, raw: bytes, route: Route, now: int
    ) -> tuple[str | None, str]:
        """Send a decided trigger through its rule's channels: (email message id, how).

        Webhooks are queued first (idempotent, delivered beside this agent), so
        retrying a failed email never queues them twice; a webhook-only rule sends no email.
        """
        queued = ""
        if self.webhooks is not None and route.webhooks:
            await self.webhooks.queue(trigger, raw, route, now)
            queued = f"queued for webhook {', '.join(route.webhooks)}"
        if not route.email:
            return None, queued
        msg_id = await self._send(trigger, now)
        return msg_id, "; ".join(filter(None, ("accepted by the SMTP relay", queued)))

    async def _send(self, trigger: Trigger, now: int) -> str:
        cfg = self.config
        token = tokens.sign(
            tokens.TrackingToken(
                trigger.trigger_id, trigger.rule, trigger.journey_key, trigger.customer_id
            ),
            cfg.tracking_secret,
        )
        links = TrackingLinks(cfg.tracking_base_url, cfg.shop_base_url, token)
        rendered = self.renderer.render(trigger, links)
        sender = self.settings.smtp.sender
        await self.sender.send(build_message(trigger, rendered, links, sender, now))
        return message_id(trigger, sender)

    async def _after_send(self, trigger: Trigger, released: bool) -> None:
        """Record the send; retried on its own, since sending again is worse than waiting."""
        retention_ms = int(self.config.sent_retention_s * 1000)
        for attempt in range(1, max(1, self.config.max_attempts) + 1):
            try:
                await self.guards.settle(trigger.trigger_id, outcomes.SENT, retention_ms)
                if released:
                    await self.schedule.remove(trigger.trigger_id)
                return
            except redis.exceptions.RedisError as exc:
                m.DISPATCH_ERRORS.labels(stage="redis").inc()
                log.error(
                    "cannot record send of %s (attempt %d): %r", trigger.trigger_id, attempt, exc
                )
                await self.sleep(
                    min(self.config.retry_backoff_s * 2**attempt, self.config.retry_backoff_max_s)
                )

    async def _settle(self, trigger: Trigger, released: bool, outcome: str, reason: str) -> str:
        await self.guards.settle(
            trigger.trigger_id, outcome, int(self.config.sent_retention_s * 1000)
        )
        if released:
            await self.schedule.remove(trigger.trigger_id)
        return await self._publish(trigger, outcome, reason)

    async def _fail(
        self,
        trigger: Trigger,
        raw: bytes,
        released: bool,
        owner: str,
        stage: str,
        reason: str,
        source: dict[str, bytes] | None,
    ) -> str:
        log.error("trigger %s failed: %s", trigger.trigger_id, reason)
        headers = {
            **(source or {}),
            "reason": reason[:1000].encode(),
            "stage": stage.encode(),
            "trigger_id": trigger.trigger_id.encode(),
        }
        await self.outbox.dead_letter(trigger.journey_key, raw, headers)
        # Best effort: if Redis is what failed, the claim's TTL frees it instead.
        with contextlib.suppress(redis.exceptions.RedisError):
            await self.guards.release(trigger.trigger_id, owner)
            if released:
                await self.schedule.remove(trigger.trigger_id)
        return await self._publish(trigger, outcomes.FAILED, reason)

    async def _publish(
        self,
        trigger: Trigger,
        outcome: str,
        reason: str,
        message_id: str | None = None,
        release_at: int | None = None,
    ) -> str:
        record = OutcomeRecord(
            trigger_id=trigger.trigger_id,
            rule=trigger.rule,
            journey_key=trigger.journey_key,
            customer_id=trigger.customer_id,
            outcome=outcome,
            reason=reason,
            at=self.now_ms(),
            message_id=message_id,
            release_at=release_at,
        )
        m.DISPATCH_OUTCOMES.labels(rule=trigger.rule, outcome=outcome).inc()
        await self.outbox.outcome(trigger.journey_key, record)
        log.info("trigger %s (%s): %s - %s", trigger.trigger_id, trigger.rule, outcome, reason)
        return outcome

    async def release_due(self, limit: int = 100, run: Run | None = None) -> int:
        """Dispatch quiet-hours entries whose time has come (timer); returns how many.

        ``run(journey_key, work)`` starts each one's dispatch (default: here, one
        after another); an entry whose dispatch fails stays leased in the
        schedule and is taken again when its lease runs out.
        """
        lease_ms = int(self.config.schedule_lease_s * 1000)
        due = await self.schedule.take_due(self.now_ms(), lease_ms, limit)
        for trigger_id, raw in due:
            try:
                trigger = Trigger.loads(raw)
            except Exception as exc:  # a corrupt entry: dead-letter it, drop it
                await self.outbox.dead_letter(
                    None,
                    raw,
                    {
                        "reason": f"invalid scheduled trigger: {exc!r}"[:500].encode(),
                        "stage": b"schedule",
                    },
                )
                await self.schedule.remove(trigger_id)
                continue
            work = functools.partial(self.dispatch, trigger, raw, released=True)
            if run is None:
                await work()
            else:
                await run(trigger.journey_key, work)
        m.DISPATCH_SCHEDULED.set(await self.schedule.size())
        return len(due)
