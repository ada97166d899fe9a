"""Control groups through the real dispatcher: held-out customers pass every check,
get no email and end ``held_out``; the split is the same on every run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from stream.embedded import SmtpCatcher
from stream.settings import Settings
from stream.topics import ensure_topics
from stream.triggers.holdout import Holdouts
from tests.helpers import wait_for
from tests.integration.test_dispatcher import Kafka, make_trigger, outcomes
from tests.procs import Dispatcher, dispatch_settings, metric_at


def with_cart_holdout(settings: Settings, fraction: float) -> Settings:
    rules = tuple(
        {**r, "holdout": fraction} if r["name"] == "cart" else r
        for r in settings.journey.abandonment
    )
    return replace(settings, journey=replace(settings.journey, abandonment=rules))


def run(env: Settings, log: Path, customers: list[str], ref: str) -> dict[str, str]:
    """One dispatcher process deciding one cart trigger per customer: outcome by customer."""
    kafka = Kafka(env)
    d = Dispatcher(env, log).start()
    try:
        d.wait_ready()
        for c in customers:
            kafka.trigger(make_trigger(c, ref=ref, rule="cart"), flush=False)
        kafka.producer.flush()
        records = wait_for(
            lambda: [r for r in outcomes(env) if r["trigger_id"].endswith(ref)],
            lambda got: len(got) >= len(customers),
            timeout_s=120,
        )
        assert metric_at(
            d.url, "journey_dispatch_outcomes_total", rule="cart", outcome="held_out"
        ) == sum(r["outcome"] == "held_out" for r in records)
        return {r["journey_key"]: r["outcome"] for r in records}
    finally:
        d.stop()
        kafka.close()


def test_half_held_out_get_no_email_the_rest_do_and_the_split_is_stable(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    env = dispatch_settings(with_cart_holdout(settings, 0.5), redis_server.url, smtp.port)
    ensure_topics(env)
    rule = Holdouts({"cart": 0.5}, env.dispatch.holdout_salt)
    customers = [f"c-hold-{i}" for i in range(60)]
    # A held-out customer whose cap is full is capped, as a treated one would be.
    capped = next(c for c in customers if rule.held_out("cart", c))
    client = redis.Redis.from_url(redis_server.url)
    cap_key = f"{env.dispatch.key_prefix}cap:email:{capped}"
    now = int(time.time() * 1000)
    client.zadd(cap_key, {"earlier-1": now - 1000, "earlier-2": now - 500})
    try:
        first = run(env, tmp_path / "first.log", customers, "cart-1")
        held = {c for c, o in first.items() if o == "held_out"}
        treated = {c for c, o in first.items() if o == "sent"}
        assert first[capped] == "capped"
        assert held | treated | {capped} == set(customers)
        assert 15 <= len(held) + 1 <= 45  # about half of 60
        assert held == {c for c in customers if rule.held_out("cart", c)} - {capped}
        mails = wait_for(smtp.received, lambda m: len(m) >= len(treated), timeout_s=30)
        assert sorted(m.rcpt_tos[0] for m in mails) == sorted(f"{c}@example.com" for c in treated)
        # Held out counts against nothing a customer notices: no frequency-cap slot.
        assert not any(client.exists(f"{env.dispatch.key_prefix}cap:email:{c}") for c in held)
        assert client.zcard(cap_key) == 2

        # Another process, new triggers for the same customers: the same split.
        second = run(env, tmp_path / "second.log", customers, "cart-2")
        assert {c for c, o in second.items() if o == "held_out"} == held
        assert {c for c, o in second.items() if o == "sent"} == treated
        assert len(smtp.received()) == 2 * len(treated)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"holdout": 1.0}, "journey.abandonment[0]: holdout must be at least 0 and below 1"),
        ({"holdout": "half"}, "journey.abandonment[0]: holdout must be a number"),
    ],
)
def test_a_dispatcher_with_a_holdout_out_of_range_stops_at_start_naming_the_rule(
    settings: Settings, redis_server: Any, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    env = dispatch_settings(settings, redis_server.url, 25)
    rules = (dict(env.journey.abandonment[0], **change), *env.journey.abandonment[1:])
    env = replace(env, journey=replace(env.journey, abandonment=rules))
    assert message in refused(env, tmp_path / "refused.log")


def test_a_dispatcher_with_no_slots_stops_at_start(
    settings: Settings, redis_server: Any, tmp_path: Path
) -> None:
    env = dispatch_settings(settings, redis_server.url, 25, max_in_flight=0)
    log = refused(env, tmp_path / "refused.log")
    assert "dispatch.max_in_flight must be from 1 to 10000, not 0" in log


def refused(env: Settings, log: Path) -> str:
    """The log of a dispatcher started with ``env``, which must exit 2 at start."""
    dispatcher = Dispatcher(env, log).start()
    assert dispatcher.proc is not None
    try:
        assert dispatcher.proc.wait(120) == 2, log.read_text()[-2000:]
    finally:
        dispatcher.stop()
    return log.read_text()
