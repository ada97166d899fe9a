"""The dispatcher's Faust shell: topics in and out, agents, the release timer, HTTP.

Consumer group ``<app_id>-dispatcher`` reads ``journey.triggers`` (one Trigger
JSON per message) and ``touchpoints.resolved`` (purchases and unsubscribes)
at-least-once; effects are made idempotent by the Redis claim. Triggers are
decided concurrently, one journey key's in order, and committed only below
the oldest one undecided (:mod:`stream.dispatch.inflight`). The web port
serves ``/metrics`` and ``/ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from dataclasses import replace
from typing import Any

import faust
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream import faust_ext
from stream.app import broker_ssl_context, faust_app
from stream.defaults import ConfigError, template_files
from stream.dispatch.dispatcher import Dispatcher
from stream.dispatch.erase import Eraser
from stream.dispatch.guards import Guards, InstanceLease, Keys, LeaseLost
from stream.dispatch.inflight import InFlight
from stream.dispatch.outcomes import OutcomeRecord
from stream.dispatch.render import Renderer
from stream.dispatch.schedule import Schedule
from stream.dispatch.signals import SignalProgress, SignalRecorder
from stream.dispatch.smtp import SmtpSender
from stream.dispatch.webhooks.wiring import build_webhooks
from stream.observability import metrics as m
from stream.settings import Settings, templates_in_use
from stream.triggers.holdout import Holdouts
from stream.triggers.playbook import rule_holdouts

log = logging.getLogger(__name__)


def dispatcher_settings(settings: Settings) -> Settings:
    """The worker section as the dispatcher's Faust app uses it (own group id, web port)."""
    d = settings.dispatch
    worker = replace(
        settings.worker,
        app_id=f"{settings.worker.app_id}-dispatcher",
        web_host=d.web_host,
        web_port=d.web_port,
    )
    return replace(settings, worker=worker)


class EndOffsets:
    """End offsets straight from the broker (a group-less aiokafka consumer, started lazily)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, topic: str, partition: int) -> int:
        async with self._lock:
            if self._consumer is None:
                b = self.settings.broker
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=b.bootstrap,
                    group_id=None,
                    enable_auto_commit=False,
                    security_protocol=b.security_protocol,
                    sasl_mechanism=b.sasl_mechanism or "PLAIN",
                    sasl_plain_username=b.sasl_username or None,
                    sasl_plain_password=b.sasl_password or None,
                    ssl_context=broker_ssl_context(b),
                )
                await consumer.start()
                self._consumer = consumer
        tp = TopicPartition(topic, partition)
        ends = await self._consumer.end_offsets([tp])
        return int(ends[tp])

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class TopicOutbox:
    """Outcomes and dead letters as Kafka records, sent through the Faust producer."""

    def __init__(self, outcomes: faust.TopicT, dlq: faust.TopicT) -> None:
        self.outcomes = outcomes
        self.dlq = dlq

    async def outcome(self, key: str, record: OutcomeRecord) -> None:
        await self.outcomes.send(key=key.encode(), value=record.dumps())

    async def dead_letter(self, key: str | None, raw: bytes, headers: dict[str, bytes]) -> None:
        await self.dlq.send(
            key=key.encode() if key is not None else None, value=raw, headers=headers
        )


def source_headers(event: faust.EventT) -> dict[str, bytes]:
    msg = event.message
    return {
        "source_topic": str(msg.topic).encode(),
        "source_partition": str(msg.partition).encode(),
        "source_offset": str(msg.offset).encode(),
    }


def build_dispatcher_app(settings: Settings) -> faust.App:
    """The dispatcher's Faust app with its agents, timer and pages registered."""
    # The consumer and producer workarounds (the dispatcher keeps no tables).
    faust_ext.patch_all(faust_ext.DISPATCHER)
    settings = dispatcher_settings(settings)
    d = settings.dispatch
    t = settings.topics
    # Fail at start, naming the file, rather than at the first send of a rule.
    list(template_files(templates_in_use(settings), d.templates_dir))
    try:
        holdouts = Holdouts(
            rule_holdouts(settings.journey.abandonment, settings.journey.followups),
            d.holdout_salt,
        )
        inflight = InFlight(d.max_in_flight)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    app = faust_app(settings, store="memory://")

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            name, partitions=t.partitions, key_serializer="raw", value_serializer="raw"
        )

    triggers, resolved = topic(t.triggers), topic(t.resolved)
    outbox = TopicOutbox(topic(t.dispatch), topic(t.dispatch_dlq))
    client = aioredis.Redis.from_url(settings.redis.url, socket_timeout=5, socket_connect_timeout=5)
    keys = Keys(d.key_prefix)
    end_offsets = EndOffsets(settings)
    recorder = SignalRecorder(
        client, keys, t.resolved, Eraser(client, keys, int(d.sent_retention_s * 1000))
    )
    lease = InstanceLease(
        client, keys, d.instance_id or socket.gethostname(), int(d.instance_lease_s * 1000)
    )
    renderer = Renderer(d.templates_dir or None)
    # Refuses to start on a rule naming an unknown endpoint or an endpoint without a secret.
    webhooks, webhook_delivery = build_webhooks(settings, client, keys.prefix, renderer, outbox)
    relay = SmtpSender(settings.smtp, d.smtp_timeout_s, pool_size=d.max_in_flight)
    dispatcher = Dispatcher(
        settings,
        Guards(client, keys, lease),
        Schedule(client, keys),
        SignalProgress(client, keys, t.resolved, t.partitions, end_offsets),
        renderer,
        relay,
        outbox,
        holdouts=holdouts,
        webhooks=webhooks,
    )
    if webhook_delivery is not None:
        delivery = webhook_delivery

        @app.task
        async def deliver_webhooks() -> None:
            # Beside the trigger agent: a slow endpoint never holds up a decision or an email.
            await delivery.run()

        async def close_webhooks(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            await delivery.close()

        app.on_before_shutdown.connect(close_webhooks)

    m.DISPATCH_IN_FLIGHT.set_function(lambda: inflight.count)

    async def finish_in_flight(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Decisions under way end (and are acked, so committed) before the consumer stops.
        if not await inflight.drain(d.smtp_timeout_s + 5.0):
            log.warning("%d triggers still in flight at shutdown; re-read at start", inflight.count)
        await relay.close()

    app.on_before_shutdown.connect(finish_in_flight)

    async def close_end_offsets(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Its consumer is started on the first purchase re-check; unclosed, aiokafka
        # logs an error at every shutdown. The agents have stopped reading by now.
        await end_offsets.close()

    app.on_before_shutdown.connect(close_end_offsets)

    async def give_up_lease(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # A clean stop hands the instance on at once; a killed process's lease lapses.
        with contextlib.suppress(redis.exceptions.RedisError):
            await lease.release()

    app.on_before_shutdown.connect(give_up_lease)
    held = asyncio.Event()

    @app.task
    async def take_lease() -> None:
        # Not ready (and sending nothing) until this process is the instance.
        while True:
            try:
                await lease.acquire()
                break
            except LeaseLost as exc:
                log.error("%s; waiting", exc)
            except redis.exceptions.RedisError as exc:
                m.DISPATCH_ERRORS.labels(stage="redis").inc()
                log.warning("cannot take the instance lease: %r", exc)
                await asyncio.sleep(d.retry_backoff_s)
        held.set()
        log.info("dispatcher instance %s (process %s)", lease.instance_id, lease.incarnation)

    @app.timer(interval=max(0.5, d.instance_lease_s / 3))
    async def keep_lease() -> None:
        if not held.is_set():
            return
        try:
            await lease.renew()
        except LeaseLost as exc:
            held.clear()
            log.error("%s; not sending until it is free again", exc)
            with contextlib.suppress(LeaseLost):
                await lease.acquire()
                held.set()
        except redis.exceptions.RedisError as exc:
            m.DISPATCH_ERRORS.labels(stage="redis").inc()
            log.warning("cannot renew the instance lease: %r", exc)

    @app.agent(triggers, name="dispatch")
    async def dispatch(stream: faust.StreamT) -> None:
        # Acks are InFlight's: each event is acked once it and every earlier one of its
        # partition are decided, so commits never pass an undecided trigger.
        manual = stream.noack()  # type: ignore[attr-defined]  # Stream has it, StreamT not
        async for event in manual.events():
            msg = event.message
            await inflight.submit(
                key=msg.key if msg.key is not None else msg.tp,
                partition=msg.tp,
                work=functools.partial(dispatcher.on_trigger, event.value, source_headers(event)),
                ack=event.ack,
            )

    @app.agent(resolved, name="signals")
    async def signals(stream: faust.StreamT) -> None:
        async for event in stream.events():
            delay = d.retry_backoff_s
            while True:  # never skip a message: it may hold the purchase that cancels a send
                try:
                    await recorder.record(
                        event.message.partition, event.message.offset, event.value
                    )
                    break
                except redis.exceptions.RedisError as exc:
                    m.DISPATCH_ERRORS.labels(stage="redis").inc()
                    log.warning("cannot record signals (%r); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, d.retry_backoff_max_s)

    @app.timer(interval=d.schedule_poll_s)
    async def release_due() -> None:
        try:
            # Beside the stream's triggers, in order with the same customer's.
            await dispatcher.release_due(
                run=lambda key, work: inflight.submit(key.encode(), None, work)
            )
        except redis.exceptions.RedisError as exc:
            m.DISPATCH_ERRORS.labels(stage="redis").inc()
            log.warning("cannot release scheduled follow-ups: %r", exc)

    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, name_prefix="faust_dispatcher")

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the dispatcher owns partitions and Redis answers."""
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        try:
            redis_ok = bool(await client.ping())
        except redis.exceptions.RedisError:
            redis_ok = False
        is_ready = bool(owned) and not app.rebalancing and redis_ok and held.is_set()
        body: dict[str, Any] = {
            "ready": is_ready,
            "redis": redis_ok,
            "instance": lease.instance_id,
            "lease_held": held.is_set(),
            "active_partitions": owned,
        }
        return self.json(body, status=200 if is_ready else 503)

    return app
