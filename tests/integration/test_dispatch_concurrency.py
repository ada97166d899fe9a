"""The dispatcher decides many triggers at once, one customer's in order, against a
real SMTP server that is slow on purpose (the embedded broker, Redis, the
dispatcher as a child process)."""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.embedded import SmtpCatcher
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import wait_for
from tests.integration.test_dispatcher import Kafka, by_trigger, make_trigger, outcomes
from tests.procs import Dispatcher, dispatch_settings, metric_at


class SlowRelay(SmtpCatcher):
    """The SMTP catcher, made slow on purpose.

    ``data_delay`` (message -> seconds) delays the answer to a message's DATA
    before it is stored; ``hold`` (recipient -> bool) parks RCPT TO for a
    recipient until :meth:`release` (so a held send has handed over nothing).
    """

    def __init__(
        self,
        maildir: Path,
        port: int | None = None,
        data_delay: Callable[[Any], float] = lambda _: 0.0,
        hold: Callable[[str], bool] = lambda _: False,
    ) -> None:
        super().__init__(maildir, port)
        self.data_delay = data_delay
        self.hold = hold
        self.gate = threading.Event()
        self._held_lock = threading.Lock()
        self.held = 0

    def release(self) -> None:
        self.gate.set()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.hold(address):
            with self._held_lock:
                self.held += 1
            try:
                while not self.gate.is_set():  # the server's own loop: other sessions go on
                    await asyncio.sleep(0.01)
            finally:
                with self._held_lock:
                    self.held -= 1
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        delay = self.data_delay(envelope)
        if delay > 0:
            await asyncio.sleep(delay)
        return await super().handle_DATA(server, session, envelope)


def trigger_of(envelope: Any) -> str:
    for line in (envelope.original_content or envelope.content).splitlines():
        if line.lower().startswith(b"x-journey-trigger-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


@pytest.fixture
def relay_dir(tmp_path: Path) -> Path:
    return tmp_path / "mail"


def relay_env(settings: Settings, redis_url: str, port: int, **dispatch: Any) -> Settings:
    s = dispatch_settings(
        settings,
        redis_url,
        port,
        cap_max=1000,
        smtp_timeout_s=120.0,
        **dispatch,
    )
    ensure_topics(s)
    return s


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Everything a test starts, stopped at its end whatever happened."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.stop()


def test_one_customers_triggers_are_decided_in_order_while_others_run_beside(
    settings: Settings, redis_server: Any, relay_dir: Path, tmp_path: Path, started: list[Any]
) -> None:
    # Each message takes 0 to 150 ms at the relay, fixed per trigger: out of order
    # unless one customer's sends wait for each other.
    relay = SlowRelay(
        relay_dir, data_delay=lambda env: (zlib.crc32(trigger_of(env).encode()) % 16) / 100
    ).start()
    started.append(relay)
    env = relay_env(settings, redis_server.url, relay.port)
    kafka = Kafka(env)
    started.append(type("Closer", (), {"stop": lambda self: kafka.close()})())
    customers = [f"c-order-{i}" for i in range(6)]
    produced: dict[str, list[str]] = {c: [] for c in customers}
    for n in range(8):
        for c in customers:
            t = make_trigger(c, ref=f"cart-{n}")
            produced[c].append(t.trigger_id)
            kafka.trigger(t, flush=False)
    kafka.producer.flush()
    d = Dispatcher(env, tmp_path / "dispatcher.log").start()
    started.append(d)
    d.wait_ready()
    total = sum(len(v) for v in produced.values())
    wait_for(relay.received, lambda got: len(got) >= total, timeout_s=120)
    arrived: dict[str, list[str]] = {c: [] for c in customers}
    for mail in relay.received():
        arrived[mail.rcpt_tos[0].split("@")[0]].append(str(mail.message["X-Journey-Trigger-Id"]))
    assert arrived == produced
    records = wait_for(
        lambda: outcomes(env), lambda o: sum(r["outcome"] == "sent" for r in o) >= total
    )
    decided: dict[str, list[str]] = {c: [] for c in customers}
    for r in records:
        decided[r["journey_key"]].append(r["trigger_id"])
    assert decided == produced


def test_a_relay_stuck_on_one_customer_holds_up_only_that_customer(
    settings: Settings, redis_server: Any, relay_dir: Path, tmp_path: Path, started: list[Any]
) -> None:
    relay = SlowRelay(relay_dir, hold=lambda rcpt: rcpt.startswith("c-stuck")).start()
    started.append(relay)
    env = relay_env(settings, redis_server.url, relay.port)
    kafka = Kafka(env)
    started.append(type("Closer", (), {"stop": lambda self: kafka.close()})())
    d = Dispatcher(env, tmp_path / "dispatcher.log").start()
    started.append(d)
    d.wait_ready()
    stuck = make_trigger("c-stuck")
    kafka.trigger(stuck)
    wait_for(lambda: relay.held, lambda n: n == 1, timeout_s=60)
    # Stuck behind it on the same partitions, triggers of 30 other customers.
    others = [make_trigger(f"c-free-{i}") for i in range(30)]
    for t in others:
        kafka.trigger(t, flush=False)
    kafka.producer.flush()
    got = wait_for(relay.received, lambda m: len(m) >= len(others), timeout_s=120)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(
        f"{t.customer_id}@example.com" for t in others
    )
    assert relay.held == 1  # still waiting for the relay, not given up, not sent
    relay.release()
    wait_for(relay.received, lambda m: len(m) == len(others) + 1, timeout_s=60)
    sent = wait_for(
        lambda: by_trigger(outcomes(env)),
        lambda o: o.get(stuck.trigger_id) == ["sent"],
        timeout_s=60,
    )
    assert all(sent[t.trigger_id] == ["sent"] for t in others)


def test_a_kept_connection_the_relay_closed_is_replaced_before_use(
    settings: Settings, redis_server: Any, tmp_path: Path, started: list[Any]
) -> None:
    relay = SmtpCatcher(tmp_path / "mail-1").start()
    started.append(relay)
    env = relay_env(settings, redis_server.url, relay.port)
    kafka = Kafka(env)
    started.append(type("Closer", (), {"stop": lambda self: kafka.close()})())
    d = Dispatcher(env, tmp_path / "dispatcher.log").start()
    started.append(d)
    d.wait_ready()
    kafka.trigger(make_trigger("c-first"))
    wait_for(relay.received, lambda m: len(m) == 1, timeout_s=60)
    # The relay restarts: the connection the dispatcher kept is closed under it.
    relay.stop()
    relay = SmtpCatcher(tmp_path / "mail-2", port=relay.port).start()
    started.append(relay)
    kafka.trigger(make_trigger("c-second"))
    got = wait_for(relay.received, lambda m: len(m) == 1, timeout_s=60)
    assert got[0].rcpt_tos == ("c-second@example.com",)
    assert metric_at(d.url, "journey_dispatch_errors_total", stage="smtp") == 0
