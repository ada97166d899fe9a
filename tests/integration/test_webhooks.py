"""Webhooks through the dispatcher process (`journey dispatcher`) against a real local
HTTP receiver that verifies signatures, honours the idempotency key and misbehaves on
purpose, with the real embedded broker, Redis and SMTP catcher."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from stream.dispatch.webhooks import signing
from stream.embedded import SmtpCatcher, free_port
from stream.settings import DEFAULT_ABANDONMENT, Settings
from stream.topics import ensure_topics
from stream.triggers.trigger import Trigger
from tests import builders
from tests.helpers import read_topic, wait_for
from tests.procs import Dispatcher, dispatch_settings, http_get, metric_at

pytestmark = pytest.mark.slow

SECRETS = {"crm": "crm-" + "k" * 32, "down": "down-" + "k" * 32, "held": "held-" + "k" * 32}
#: What the crm endpoint does to the first request of each key, in turn.
TRICKS = ("500", "429", "reset", "slow")


class Receiver:
    """An aiohttp server in its own thread: one path per endpoint.

    Every request's signature is checked against the endpoint's secret. An
    *effect* is what a receiver honouring ``Idempotency-Key`` does once per key:
    the first request it processes records it, later ones are duplicates.
    """

    def __init__(self, slow_s: float = 3.0) -> None:
        self.port = free_port()
        self.slow_s = slow_s
        self.requests: list[tuple[str, str, int]] = []  # (endpoint, key, attempt header)
        self.bad_signatures: list[str] = []
        self.effects: dict[str, dict[str, Any]] = {name: {} for name in SECRETS}
        self.duplicates: Counter[str] = Counter()
        self.tricks: Counter[str] = Counter()
        self.held = 0
        self.loop = asyncio.new_event_loop()
        self.gate = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        app = web.Application()
        app.router.add_post("/crm", self.crm)
        app.router.add_post("/down", self.down)
        app.router.add_post("/held", self.held_until_released)
        self.runner = web.AppRunner(app)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.thread.start()
        self._run(self.runner.setup())
        self._run(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        return self

    def stop(self) -> None:
        self.release()
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _read(self, endpoint: str, request: web.Request) -> tuple[str, bytes]:
        body = await request.read()
        key = request.headers.get(signing.IDEMPOTENCY_HEADER, "")
        header = request.headers.get(signing.HEADER, "")
        if not signing.verify(SECRETS[endpoint], header, body, now=time.time()):
            self.bad_signatures.append(f"{endpoint}:{key}")
        if orjson.loads(body)["id"] != key:
            self.bad_signatures.append(f"{endpoint}:{key}: the body is another trigger's")
        self.requests.append((endpoint, key, int(request.headers.get("Journey-Attempt", 0))))
        return key, body

    def _effect(self, endpoint: str, key: str, body: bytes) -> None:
        if key in self.effects[endpoint]:
            self.duplicates[endpoint] += 1
        else:
            self.effects[endpoint][key] = orjson.loads(body)

    async def crm(self, request: web.Request) -> web.StreamResponse:
        key, body = await self._read("crm", request)
        first = sum(1 for e, k, _ in self.requests if e == "crm" and k == key) == 1
        if first:
            trick = TRICKS[len({k for e, k, _ in self.requests if e == "crm"}) % len(TRICKS)]
            self.tricks[trick] += 1
            if trick == "500":
                return web.Response(status=500, text="database unavailable")
            if trick == "429":
                return web.Response(status=429, headers={"Retry-After": "1"})
            if trick == "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=200)
            # slow: processed, but answered long after the client gave up
            self._effect("crm", key, body)
            await asyncio.sleep(self.slow_s)
            return web.Response(status=200)
        self._effect("crm", key, body)
        return web.Response(status=200)

    async def down(self, request: web.Request) -> web.StreamResponse:
        await self._read("down", request)
        return web.Response(status=503, text="maintenance")

    async def held_until_released(self, request: web.Request) -> web.StreamResponse:
        key, body = await self._read("held", request)
        self._effect("held", key, body)
        self.held += 1
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        return web.Response(status=204)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def webhook_settings(
    settings: Settings, redis_url: str, smtp_port: int, endpoints: list[dict[str, Any]]
) -> Settings:
    s = dispatch_settings(settings, redis_url, smtp_port)
    cart = {**DEFAULT_ABANDONMENT[0], "channels": ["email", "webhook"], "holdout": 0.0}
    cart["webhooks"] = [e["name"] for e in endpoints]
    s = replace(
        s,
        journey=replace(s.journey, abandonment=(cart, *DEFAULT_ABANDONMENT[1:])),
        webhooks=replace(
            s.webhooks,
            endpoints=tuple(endpoints),
            secrets={e["name"]: SECRETS[e["name"]] for e in endpoints},
            retry_backoff_s=0.2,
            retry_backoff_max_s=1.0,
            breaker_failures=3,
            breaker_cooldown_s=0.5,
            poll_s=0.2,
        ),
    )
    ensure_topics(s)
    return s


def produce(settings: Settings, triggers: list[Trigger]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")
    for t in triggers:
        producer.send(settings.topics.triggers, key=t.journey_key.encode(), value=t.dumps())
    producer.flush()
    producer.close()


def customers(unique: str, n: int) -> list[Trigger]:
    now = int(time.time() * 1000)
    return [
        builders.trigger(
            trigger_id=f"{unique}-{i}",
            rule="cart",
            journey_key=f"c-{unique}-{i}",
            customer_id=f"c-{unique}-{i}",
            email=f"c{i}-{unique}@example.com",
            timezone="UTC",
            fired_at=now,
        )
        for i in range(n)
    ]


def records(settings: Settings, topic: str) -> list[Any]:
    return read_topic(settings.broker.bootstrap, topic)


def outcomes_by_trigger(settings: Settings) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for r in records(settings, settings.topics.dispatch):
        o = orjson.loads(r.value)
        out.setdefault(o["trigger_id"], Counter())[o["outcome"]] += 1
    return out


def test_webhooks_deliver_once_each_through_a_misbehaving_receiver_and_email_is_unaffected(
    settings: Settings,
    redis_server: Any,
    smtp: SmtpCatcher,
    receiver: Receiver,
    unique: str,
    tmp_path: Path,
) -> None:
    endpoints = [
        {"name": "crm", "url": f"{receiver.url}/crm", "timeout_s": 1, "max_attempts": 8,
         "headers": {"X-Tenant": "test"}},
        {"name": "down", "url": f"{receiver.url}/down", "timeout_s": 1, "max_attempts": 3},
        {"name": "held", "url": f"{receiver.url}/held", "timeout_s": 120, "concurrency": 2},
    ]  # fmt: skip
    env = webhook_settings(settings, redis_server.url, smtp.port, endpoints)
    triggers = customers(unique, 8)
    ids = {t.trigger_id for t in triggers}
    dispatcher = Dispatcher(env, tmp_path / "dispatcher.log").start()
    try:
        dispatcher.wait_ready()
        produce(env, triggers)

        # Every customer's email arrives while the held endpoint sits on two requests
        # and the down endpoint fails: neither holds up email.
        mails = wait_for(smtp.received, lambda m: len(m) >= len(triggers), timeout_s=90)
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(t.email or "" for t in triggers)
        assert receiver.held == 2 and not receiver.gate.is_set()

        # The misbehaving endpoint gets every trigger, processed once per key.
        wait_for(lambda: set(receiver.effects["crm"]), lambda got: got == ids, timeout_s=120)
        assert all(receiver.tricks[t] >= 1 for t in TRICKS), receiver.tricks
        body = receiver.effects["crm"][triggers[0].trigger_id]
        assert body["trigger"]["customer_id"] == triggers[0].customer_id
        assert body["personalisation"]["greeting"] == "Hi Ann"

        # The endpoint that always fails dead-letters every trigger with the reason.
        def webhook_dead_letters() -> list[Any]:
            return [
                r
                for r in records(env, env.topics.dispatch_dlq)
                if dict(r.headers).get("stage") == b"webhook"
            ]

        dead = wait_for(webhook_dead_letters, lambda d: len(d) >= len(ids), timeout_s=120)
        assert sorted(Trigger.loads(r.value).trigger_id for r in dead) == sorted(ids)
        for r in dead:
            h = dict(r.headers)
            assert h["endpoint"] == b"down" and h["attempts"] == b"3"
            assert h["trigger_id"] == Trigger.loads(r.value).trigger_id.encode()
            assert b"HTTP 503" in h["reason"] and b"after 3 attempts" in h["reason"]
        assert [e for e, _, _ in receiver.requests].count("down") == 3 * len(ids)

        # Released, the held endpoint gets the rest, two at a time.
        assert len(receiver.effects["held"]) == 2
        receiver.release()
        wait_for(lambda: set(receiver.effects["held"]), lambda got: got == ids, timeout_s=60)

        expected = Counter({"sent": 1, "webhook_delivered": 2, "webhook_failed": 1})
        final = wait_for(
            lambda: outcomes_by_trigger(env),
            lambda o: all(o.get(t) == expected for t in ids),
            timeout_s=60,
        )
        assert set(final) == ids
        assert receiver.bad_signatures == []
        # No request carried anything but its trigger's id, whatever the attempt.
        assert {k for _, k, _ in receiver.requests} == ids
        assert max(a for e, _, a in receiver.requests if e == "crm") >= 2

        url = dispatcher.url
        assert metric_at(url, "journey_webhook_requests_total", endpoint="down") == 3 * len(ids)
        assert (
            metric_at(url, "journey_webhook_requests_total", endpoint="crm", result="timeout") >= 1
        )
        delivered = metric_at(url, "journey_webhook_deliveries_total", endpoint="held")
        assert delivered == len(ids)
        assert "journey_webhook_breaker_state" in http_get(f"{url}/metrics")[1]
    finally:
        receiver.release()
        dispatcher.stop()


def test_a_delivery_interrupted_by_a_crash_is_sent_again_with_the_same_key(
    settings: Settings,
    redis_server: Any,
    smtp: SmtpCatcher,
    unique: str,
    tmp_path: Path,
) -> None:
    receiver = Receiver(slow_s=30.0).start()
    try:
        # The first request of the key is processed, then answered too late: the
        # dispatcher is killed meanwhile and its successor must send it again.
        endpoints = [{"name": "crm", "url": f"{receiver.url}/crm", "timeout_s": 3}]
        env = webhook_settings(settings, redis_server.url, smtp.port, endpoints)
        # Four triggers so the fourth key meets the "slow" trick.
        triggers = customers(unique, 4)
        ids = {t.trigger_id for t in triggers}
        first = Dispatcher(env, tmp_path / "first.log").start()
        try:
            first.wait_ready()
            produce(env, triggers)
            wait_for(lambda: receiver.tricks["slow"], lambda n: n >= 1, timeout_s=90)
        finally:
            first.kill()
        second = Dispatcher(env, tmp_path / "second.log").start()
        try:
            second.wait_ready()
            wait_for(lambda: set(receiver.effects["crm"]), lambda got: got == ids, timeout_s=120)
            wait_for(lambda: receiver.duplicates["crm"], lambda n: n >= 1, timeout_s=60)
            keys = Counter(k for e, k, _ in receiver.requests if e == "crm")
            assert set(keys) == ids and all(n >= 2 for n in keys.values())
            assert receiver.bad_signatures == []
            # Each customer still got the email (a decision interrupted by the kill is
            # finished by the successor; the webhook entry is not queued twice).
            assert {m.rcpt_tos[0] for m in smtp.received()} == {t.email for t in triggers}
        finally:
            second.stop()
    finally:
        receiver.stop()


NOWHERE = "http://127.0.0.1:9/"


@pytest.mark.parametrize(
    ("endpoint", "secrets", "message"),
    [
        ({"name": "sms", "url": NOWHERE}, {"sms": "k" * 32}, "names webhook endpoint 'crm'"),
        ({"name": "crm", "url": NOWHERE}, {}, "'crm' has no signing secret"),
    ],
)
def test_the_dispatcher_refuses_to_start_with_an_unknown_endpoint_or_no_secret(
    settings: Settings,
    redis_server: Any,
    smtp: SmtpCatcher,
    tmp_path: Path,
    endpoint: dict[str, Any],
    secrets: dict[str, str],
    message: str,
) -> None:
    s = dispatch_settings(settings, redis_server.url, smtp.port)
    cart = {**DEFAULT_ABANDONMENT[0], "channels": ["webhook"], "webhooks": ["crm"], "holdout": 0.0}
    s = replace(
        s,
        journey=replace(s.journey, abandonment=(cart,)),
        webhooks=replace(s.webhooks, endpoints=(endpoint,), secrets=secrets),
    )
    dispatcher = Dispatcher(s, tmp_path / "refused.log").start()
    assert dispatcher.proc is not None
    try:
        assert dispatcher.proc.wait(120) == 2
    finally:
        dispatcher.stop()
    log = (tmp_path / "refused.log").read_text()
    assert "configuration error" in log and message in log
