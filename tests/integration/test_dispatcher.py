"""The dispatcher (`journey dispatcher` as a child process) against the real embedded
broker, a real Redis server and the real SMTP catcher."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer

from stream import contract
from stream.contract import Touchpoint
from stream.dispatch import tokens
from stream.dispatch.signals import partition_for
from stream.embedded import SmtpCatcher, free_port
from stream.settings import Settings, to_environ
from stream.topics import ensure_topics
from stream.triggers.trigger import ABANDONMENT, Trigger, TriggerItem
from tests.helpers import REPO as ROOT
from tests.helpers import read_topic, wait_for
from tests.procs import Dispatcher, dispatch_settings, metric_at

HOUR_MS = 3_600_000
SECRET = "test-secret"
SHOP = "https://shop.example.com"
TRACKING = "http://collector.test"


def now_ms() -> int:
    return int(time.time() * 1000)


def make_trigger(customer: str, ref: str = "cart-1", **kw: Any) -> Trigger:
    now = now_ms()
    base: dict[str, Any] = dict(
        trigger_id=f"{customer}-{ref}",
        rule="cart_abandoned",
        kind=ABANDONMENT,
        template="cart_abandoned",
        journey_key=customer,
        customer_id=customer,
        email=f"{customer}@example.com",
        stage="decision",
        deadline=now - 60_000,
        event_at=now - HOUR_MS,
        ref=ref,
        cause_event_id=f"e-{customer}",
        cart_id=ref,
        items=(TriggerItem("SKU-1", "Trail Shoe", 89.5, 2), TriggerItem("SKU-2", "Socks", 5.0, 1)),
        value=184.0,
        currency="EUR",
        first_name="Ann",
        top_products=("SKU-9",),
        last_store="Lyon",
        timezone="UTC",
        fired_at=now,
    )
    base.update(kw)
    return Trigger(**base)


@pytest.fixture
def env(settings: Settings, redis_server: Any, smtp: SmtpCatcher) -> Settings:
    s = dispatch_settings(settings, redis_server.url, smtp.port)
    ensure_topics(s)
    return s


@pytest.fixture
def dispatcher(env: Settings, tmp_path: Path) -> Iterator[Dispatcher]:
    d = Dispatcher(env, tmp_path / "dispatcher.log")
    d.start().wait_ready()
    yield d
    d.stop()


class Kafka:
    """Produces what the journey worker would: triggers and resolved touchpoints."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")

    def trigger(self, t: Trigger, flush: bool = True) -> Any:
        """Send ``t``; its future gives the record's partition and offset."""
        sent = self.producer.send(
            self.settings.topics.triggers, key=t.journey_key.encode(), value=t.dumps()
        )
        if flush:
            self.producer.flush()
        return sent

    def resolved(self, journey_key: str, *tps: Touchpoint) -> None:
        partition = partition_for(journey_key, self.settings.topics.partitions)
        value = contract.dumps_groups([(journey_key, list(tps))])
        self.producer.send(self.settings.topics.resolved, value=value, partition=partition)
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def kafka(env: Settings) -> Iterator[Kafka]:
    k = Kafka(env)
    yield k
    k.close()


def outcomes(settings: Settings) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in read_topic(settings.broker.bootstrap, settings.topics.dispatch)
    ]


def wait_outcomes(settings: Settings, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    return wait_for(lambda: outcomes(settings), lambda o: len(o) >= n, timeout_s=timeout)


def by_trigger(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r["trigger_id"], []).append(r["outcome"])
    return out


def body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None
    return part.get_content()


def test_a_trigger_sends_one_email_and_a_redelivery_is_deduplicated(
    env: Settings, dispatcher: Dispatcher, kafka: Kafka, smtp: SmtpCatcher
) -> None:
    t = make_trigger("c-ann")
    kafka.trigger(t)
    kafka.trigger(t)  # at-least-once upstream: the same trigger twice
    kafka.trigger(make_trigger("c-nomail", email=None))
    records = wait_outcomes(env, 3)
    assert by_trigger(records) == {
        t.trigger_id: ["sent", "deduplicated"],
        "c-nomail-cart-1": ["unreachable"],
    }
    sent = next(r for r in records if r["outcome"] == "sent")
    assert (
        sent["journey_key"] == "c-ann"
        and sent["customer_id"] == "c-ann"
        and sent["rule"] == "cart_abandoned"
    )
    assert sent["message_id"] == f"<{t.trigger_id}@example.com>" and sent["at"] > 0

    wait_for(smtp.received, lambda m: len(m) >= 1, timeout_s=10)
    mails = smtp.received()
    assert len(mails) == 1
    mail = mails[0]
    msg = mail.message
    assert mail.rcpt_tos == ("c-ann@example.com",)
    assert msg["Subject"] == "Ann, you left something in your cart"
    assert msg["X-Journey-Trigger-Id"] == t.trigger_id
    assert msg["Message-ID"] == sent["message_id"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    raw = mail.path.read_bytes()
    assert b"List-Unsubscribe: <" + TRACKING.encode() in raw  # one line, not RFC 2047-encoded
    unsubscribe = str(msg["List-Unsubscribe"]).strip("<>")
    assert unsubscribe.startswith(f"{TRACKING}/e/unsubscribe/")
    token = tokens.verify(unsubscribe.rsplit("/", 1)[1], SECRET)
    assert (token.trigger_id, token.journey_key, token.customer_id) == (
        t.trigger_id,
        "c-ann",
        "c-ann",
    )
    text, html = body(msg, "plain"), body(msg, "html")
    assert "Trail Shoe x 2 at 89.50 EUR = 179.00 EUR" in text and "Socks x 1" in text
    assert "Cart total: 184.00 EUR" in text
    assert "Hi Ann" in html and "Trail Shoe" in html and "SKU-9" in html and "Lyon" in html
    assert f"{TRACKING}/e/open/" in html and f"{TRACKING}/e/click/" in html
    assert "shop.example.com%2Fproducts%2FSKU-1" in html

    url = dispatcher.url
    assert (
        metric_at(url, "journey_dispatch_outcomes_total", rule="cart_abandoned", outcome="sent")
        == 1
    )
    assert metric_at(url, "journey_dispatch_outcomes_total", outcome="deduplicated") == 1
    assert metric_at(url, "journey_dispatch_outcomes_total", outcome="unreachable") == 1
    assert metric_at(url, "journey_trigger_to_send_seconds_count") == 1


def test_frequency_cap_per_customer(
    env: Settings, dispatcher: Dispatcher, kafka: Kafka, smtp: SmtpCatcher
) -> None:
    for ref in ("cart-1", "cart-2", "cart-3"):
        kafka.trigger(make_trigger("c-bob", ref=ref))
    kafka.trigger(make_trigger("c-eve", ref="cart-1"))  # another customer is not capped
    records = wait_outcomes(env, 4)
    assert by_trigger(records) == {
        "c-bob-cart-1": ["sent"],
        "c-bob-cart-2": ["sent"],
        "c-bob-cart-3": ["capped"],
        "c-eve-cart-1": ["sent"],
    }
    wait_for(smtp.received, lambda m: len(m) >= 3, timeout_s=10)
    assert Counter(m.rcpt_tos[0] for m in smtp.received()) == {
        "c-bob@example.com": 2,
        "c-eve@example.com": 1,
    }
    client = redis.Redis.from_url(env.redis.url)
    assert client.zcard(f"{env.dispatch.key_prefix}cap:email:c-bob") == 2


def test_unsubscribes_suppression_list_and_purchases_block_sends(
    env: Settings, dispatcher: Dispatcher, kafka: Kafka, smtp: SmtpCatcher
) -> None:
    now = now_ms()
    # Signals reach the resolved topic before the triggers do; the dispatcher must see them.
    kafka.resolved(
        "c-unsub",
        Touchpoint("u-1", "unsubscribe", "email", now - 5_000, customer_id="c-unsub"),
    )
    kafka.resolved(
        "c-bought",
        Touchpoint("p-1", "purchase", "web", now - 600_000, customer_id="c-bought"),
    )
    kafka.resolved(  # bought before the cart was abandoned: does not cancel
        "c-earlier",
        Touchpoint("p-2", "purchase", "web", now - 2 * HOUR_MS, customer_id="c-earlier"),
    )
    cli = subprocess.run(
        [sys.executable, "-m", "stream.cli", "suppress", "add", "Blocked@Example.com"],
        cwd=ROOT,
        env={**to_environ(env), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout) == {"added": 1}
    for customer, email in [
        ("c-unsub", None),
        ("c-bought", None),
        ("c-earlier", None),
        ("c-blocked", "blocked@example.com"),
    ]:
        kafka.trigger(make_trigger(customer, **({"email": email} if email else {})))
    records = wait_outcomes(env, 4)
    assert by_trigger(records) == {
        "c-unsub-cart-1": ["suppressed_consent"],
        "c-bought-cart-1": ["cancelled_purchased"],
        "c-earlier-cart-1": ["sent"],
        "c-blocked-cart-1": ["suppressed_consent"],
    }
    wait_for(smtp.received, lambda m: len(m) >= 1, timeout_s=10)
    assert [m.rcpt_tos for m in smtp.received()] == [("c-earlier@example.com",)]


def test_quiet_hours_delay_then_send_after_a_restart(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    tz = "Asia/Tokyo"
    local = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo(tz))
    opens = local + timedelta(seconds=12)
    env = dispatch_settings(
        settings,
        redis_server.url,
        smtp.port,
        quiet_start=(local - timedelta(minutes=5)).strftime("%H:%M:%S"),
        quiet_end=opens.strftime("%H:%M:%S"),
    )
    ensure_topics(env)
    kafka = Kafka(env)
    first = Dispatcher(env, tmp_path / "dispatcher-1.log").start()
    try:
        first.wait_ready()
        t = make_trigger("c-night", timezone=tz)
        kafka.trigger(t)
        records = wait_outcomes(env, 1, timeout=30)
        assert [r["outcome"] for r in records] == ["delayed_quiet_hours"]
        assert abs(records[0]["release_at"] - int(opens.timestamp() * 1000)) < 1500
        wait_for(lambda: metric_at(first.url, "journey_dispatch_scheduled"), lambda v: v == 1)
    finally:
        first.stop()
    assert smtp.received() == []
    # Every Kafka client is closed on the way out (aiokafka logs the ones that are not).
    assert "Unclosed" not in first.log_path.read_text(errors="replace")
    client = redis.Redis.from_url(env.redis.url)
    assert client.zscore(f"{env.dispatch.key_prefix}schedule", t.trigger_id) is not None

    second = Dispatcher(env, tmp_path / "dispatcher-2.log").start()
    try:
        second.wait_ready()
        records = wait_for(
            lambda: outcomes(env), lambda o: any(r["outcome"] == "sent" for r in o), timeout_s=60
        )
    finally:
        second.stop()
        kafka.close()
    assert "Unclosed" not in second.log_path.read_text(errors="replace")
    final = [r["outcome"] for r in records if r["outcome"] != "deduplicated"]
    assert final == ["delayed_quiet_hours", "sent"]
    sent = next(r for r in records if r["outcome"] == "sent")
    assert sent["at"] >= int(opens.timestamp() * 1000) - 1000
    wait_for(smtp.received, lambda m: len(m) >= 1, timeout_s=10)
    assert [m.message["X-Journey-Trigger-Id"] for m in smtp.received()] == [t.trigger_id]
    assert client.zcard(f"{env.dispatch.key_prefix}schedule") == 0


def test_smtp_down_retries_then_dead_letters(
    settings: Settings, redis_server: Any, tmp_path: Path
) -> None:
    env = dispatch_settings(settings, redis_server.url, free_port())  # nothing listens there
    ensure_topics(env)
    kafka = Kafka(env)
    d = Dispatcher(env, tmp_path / "dispatcher.log").start()
    try:
        d.wait_ready()
        t = make_trigger("c-down")
        kafka.trigger(t)
        records = wait_outcomes(env, 1)
        assert [r["outcome"] for r in records] == ["failed"]
        assert "smtp" in records[0]["reason"] and "after 3 attempts" in records[0]["reason"]
        dead = wait_for(
            lambda: read_topic(env.broker.bootstrap, env.topics.dispatch_dlq), lambda r: len(r) >= 1
        )
        assert len(dead) == 1 and dead[0].value == t.dumps()
        headers = dict(dead[0].headers)
        assert b"after 3 attempts" in headers["reason"] and headers["stage"] == b"smtp"
        assert metric_at(d.url, "journey_dispatch_errors_total", stage="smtp") == 3
        assert metric_at(d.url, "journey_dispatch_outcomes_total", outcome="failed") == 1
        # The claim was released: a retry (e.g. a replay from the DLQ) may send.
        client = redis.Redis.from_url(env.redis.url)
        assert client.get(f"{env.dispatch.key_prefix}claim:{t.trigger_id}") is None
        assert client.zcard(f"{env.dispatch.key_prefix}cap:email:c-down") == 0
    finally:
        d.stop()
        kafka.close()
