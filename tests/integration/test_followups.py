"""Worker + dispatcher + SMTP: abandoned carts become emails, once, also across a crash.

Real broker, real Redis, real SMTP server; the worker and the dispatcher run as
child processes, as in production.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.embedded import SmtpCatcher
from stream.journey.model import journey_model
from stream.journey.replay import run_oracle
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import read_topic, wait_for
from tests.integration.test_abandonment_stream import event, shopper
from tests.integration.test_journey_oracle import LATENESS_S, simulated_log
from tests.procs import Dispatcher, Worker, dispatch_settings

MIN = 60_000
#: Outcomes that end a trigger's life (``delayed_quiet_hours`` is not one).
FINAL = {"sent", "suppressed_consent", "capped", "cancelled_purchased", "unreachable", "failed"}


def outcomes(settings: Settings) -> list[dict[str, Any]]:
    records = read_topic(settings.broker.bootstrap, settings.topics.dispatch, timeout_s=30)
    return [orjson.loads(r.value) for r in records]


def final_outcomes(settings: Settings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in outcomes(settings):
        if o["outcome"] in FINAL:
            out.setdefault(o["trigger_id"], []).append(o["outcome"])
    return out


def stuck_report(settings: Settings, expected: dict[str, Any], services: list[Any]) -> str:
    """Where the triggers without a final outcome got stuck: emitted or not, last outcome."""
    fired = {
        orjson.loads(r.value)["trigger_id"]
        for r in read_topic(settings.broker.bootstrap, settings.topics.triggers)
    }
    last: dict[str, str] = {}
    for o in outcomes(settings):
        last[o["trigger_id"]] = o["outcome"]
    final = final_outcomes(settings)
    missing = sorted(set(expected) - set(final))
    lines = [f"{len(missing)} of {len(expected)} expected triggers have no final outcome:"]
    for tid in missing[:20]:
        t = expected[tid]
        lines.append(
            f"  {tid} rule={t.rule} key={t.journey_key} deadline={t.deadline} "
            f"emitted={tid in fired} last_outcome={last.get(tid)}"
        )
    unexpected = sorted(set(final) - set(expected))
    lines.append(f"unexpected final outcomes: {unexpected[:10]}")
    for service in services:
        if service is not None:
            lines.append(f"--- {service.log_path.name}\n{service.log_tail(30)}")
    return "\n".join(lines)


def emailed(smtp: SmtpCatcher) -> list[str]:
    return [str(m.message["X-Journey-Trigger-Id"]) for m in smtp.received()]


def test_abandoned_cart_gets_one_email_and_an_in_store_purchase_none(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    s = dispatch_settings(settings, redis_server.url, smtp.port)
    ensure_topics(s)
    now = int(time.time() * 1000)
    events = shopper("ann", now, added_ago_min=90) + shopper("bob", now, added_ago_min=90)
    # Bob pays in store 10 minutes later, known there only by his loyalty card.
    events.append(
        event(
            "bob-pos",
            "pos_purchase",
            now - 80 * MIN,
            channel="pos",
            properties={
                "loyalty_id": "L-bob",
                "store_id": "ST-1",
                "order_id": "R-1",
                "value": 101.0,
                "currency": "EUR",
            },
        )
    )
    from stream import simulator

    simulator.produce(s, sorted(events, key=lambda e: e["timestamp"]), pack_sessions=False)
    worker = Worker(s, tmp_path / "worker.log")
    dispatcher = Dispatcher(s, tmp_path / "dispatcher.log")
    try:
        worker.start()
        dispatcher.start()
        worker.wait_ready()
        dispatcher.wait_ready()
        # Ann's cart email and Bob's welcome (first purchase) email.
        mails = wait_for(smtp.received, lambda got: len(got) >= 2, timeout_s=90)
        by_rcpt = {m.rcpt_tos[0]: m.message for m in mails}
        ann = by_rcpt["ann@example.com"]
        assert ann["X-Journey-Rule"] == "cart"
        text = ann.get_body(preferencelist=("plain",)).get_content()
        assert "Blue Coat x 1" in text and "Red Scarf x 2" in text and "101.00 EUR" in text
        assert by_rcpt["bob@example.com"]["X-Journey-Rule"] == "welcome"
        # Everything the worker emitted has a final outcome; still exactly two emails.
        triggers = read_topic(s.broker.bootstrap, s.topics.triggers)
        ids = {orjson.loads(r.value)["trigger_id"] for r in triggers}
        wait_for(lambda: final_outcomes(s), lambda got: set(got) >= ids, timeout_s=30)
        assert {orjson.loads(r.value)["rule"] for r in triggers} == {"cart", "welcome"}
        assert len(smtp.received()) == 2
    finally:
        dispatcher.stop()
        worker.stop()


@pytest.mark.slow
def test_worker_killed_mid_stream_sends_every_expected_email_exactly_once(
    settings: Settings, redis_server: Any, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    s = dispatch_settings(
        replace(settings, journey=replace(settings.journey, allowed_lateness_s=LATENESS_S)),
        redis_server.url,
        smtp.port,
        cap_max=1000,
    )
    ensure_topics(s)
    events = simulated_log(customers=300, seed=23)
    until = int(time.time() * 1000) - int(LATENESS_S * 1000)
    oracle = run_oracle(events, journey_model(s), int(LATENESS_S * 1000), until)
    expected = {t.trigger_id: t for t in oracle.triggers}
    assert sum(1 for t in expected.values() if t.email) >= 50

    from stream import simulator

    half = len(events) // 2
    simulator.produce(s, [e.to_dict() for e in events[:half]])
    dispatcher = Dispatcher(s, tmp_path / "dispatcher.log")
    first = Worker(s, tmp_path / "worker-1.log")
    second = None
    try:
        dispatcher.start()
        first.start().wait_ready()
        wait_for(
            lambda: first.metric("journey_events_applied_total"),
            lambda n: n >= half // 3,
            timeout_s=120,
        )
        simulator.produce(s, [e.to_dict() for e in events[half:]])
        first.kill()
        fresh = replace(s, worker=replace(s.worker, data_dir=str(tmp_path / "worker-2")))
        second = Worker(fresh, tmp_path / "worker-2.log")
        second.start().wait_ready()
        dispatcher.wait_ready()

        try:
            done = wait_for(
                lambda: final_outcomes(s),
                lambda got: set(got) >= set(expected),
                timeout_s=240,
                every_s=1.0,
            )
        except AssertionError:
            raise AssertionError(stuck_report(s, expected, [dispatcher, first, second])) from None
        # Every trigger the oracle expects, and nothing else, reached one final outcome.
        assert set(done) == set(expected)
        assert all(len(v) == 1 for v in done.values()), {
            k: v for k, v in done.items() if len(v) > 1
        }
        sent = {k for k, v in done.items() if v == ["sent"]}
        assert sent and all(expected[k].email for k in sent)
        wait_for(lambda: emailed(smtp), lambda got: len(got) >= len(sent), timeout_s=30)
        mails = emailed(smtp)
        assert sorted(mails) == sorted(sent)  # exactly once each
        for k, (outcome,) in done.items():
            if outcome == "unreachable":
                assert expected[k].email is None
    finally:
        dispatcher.stop()
        first.stop()
        if second is not None:
            second.stop()
