"""The demo's closed loop against the real worker: simulated shoppers buy after follow-ups
at planted rates, and ``GET /followups`` finds the planted uplift.

The test decides the triggers as the dispatcher would (a deterministic third of
the customers held out per rule) and publishes them on ``journey.triggers`` and
``journey.dispatch``; :class:`stream.demo_loop.ClosedLoop` reads the decisions
and sends the purchases to ``touchpoints``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from stream import contract
from stream.demo_loop import ClosedLoop
from stream.reactions import Planted, Reactions
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.builders import outcome_record, trigger
from tests.helpers import wait_for
from tests.procs import Worker

WINDOW_S, GRACE_S = 40, 5
PLANTED = {"cart": Planted(treated=0.5, control=0.2), "browse": Planted(treated=0.3, control=0.3)}
PER_RULE = 300


def held_out(customer: str, rule: str) -> bool:
    """A third of the customers, stable per (customer, rule), as a control group is."""
    return hashlib.sha256(f"salt:{customer}:{rule}".encode()).digest()[0] % 3 == 0


@pytest.mark.slow
def test_the_planted_uplift_lies_inside_the_reported_interval(
    settings: Settings, tmp_path: Path
) -> None:
    s = replace(
        settings,
        journey=replace(settings.journey, allowed_lateness_s=2.0),
        attribution=replace(
            settings.attribution,
            window_s=float(WINDOW_S),
            decision_grace_s=float(GRACE_S),
            min_per_arm=30,
        ),
    )
    ensure_topics(s)
    producer = KafkaProducer(bootstrap_servers=s.broker.bootstrap, acks="all")

    def send(event: dict[str, Any]) -> None:
        tp = contract.parse(event)
        producer.send(s.topics.touchpoints, key=tp.routing_key.encode(), value=contract.dumps(tp))
        producer.flush()

    reactions = Reactions(window_ms=WINDOW_S * 1000, rules=PLANTED, seed=21)
    stop = threading.Event()
    loop = ClosedLoop(s, reactions, send, stop)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        loop.start()
        t0 = int(time.time() * 1000)
        for rule in PLANTED:
            for i in range(PER_RULE):
                customer, tid = f"{rule}-{i}", f"{rule}-t{i}"
                t = trigger(
                    trigger_id=tid,
                    rule=rule,
                    journey_key=customer,
                    customer_id=customer,
                    deadline=t0 - 2000,
                )
                producer.send(s.topics.triggers, key=customer.encode(), value=t.dumps())
                outcome = "held_out" if held_out(customer, rule) else "sent"
                body = outcome_record(tid, outcome, rule=rule, key=customer, at=t0)
                producer.send(s.topics.dispatch, key=customer.encode(), value=orjson.dumps(body))
        producer.flush()

        def report() -> dict[str, Any]:
            status, body = worker.api("/followups")
            assert status == 200, body
            return {f["rule"]: f for f in body["followups"]}

        rules = wait_for(
            report,
            lambda r: all(r.get(rule, {}).get("decided") == PER_RULE for rule in PLANTED),
            timeout_s=WINDOW_S + GRACE_S + 120,
            every_s=2.0,
        )
        assert sum(loop.decided.values()) == 2 * PER_RULE
        for rule, planted in PLANTED.items():
            f = rules[rule]
            sent = loop.bought[rule, "treated"]
            assert (f["sent"], f["treated_conversions"]) == (loop.decided[rule, "treated"], sent)
            assert f["control_conversions"] == loop.bought[rule, "control"]
            assert f["uplift_abs_ci_low"] <= planted.uplift <= f["uplift_abs_ci_high"], f
        assert rules["cart"]["verdict"] == "helps"
        assert rules["browse"]["verdict"] != "helps"
    finally:
        stop.set()
        loop.join(10)
        worker.stop()
        producer.close()
