"""Conversion attribution in the worker: decided follow-ups and purchases in, one
conversion record per decided trigger out, across a restart; GET /followups.

Real broker; the worker runs as a child process. The test writes triggers on
``journey.triggers`` and their outcomes on ``journey.dispatch`` as the journey
agent and the dispatcher would, and purchases as touchpoints (web, and in store
under a loyalty card linked to the customer).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from kafka.partitioner import DefaultPartitioner

from stream import contract
from stream.analytics.attribution import conversion_id
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.builders import outcome_record, trigger
from tests.helpers import API_TOKEN, read_topic, wait_for
from tests.procs import Worker, http_get

SEC = 1000
WINDOW_S = 90
GRACE_S = 5
#: The rule whose window outlives the worker's restart.
LONG_RULE, LONG_WINDOW_S = "welcome", 240


def attribution_settings(settings: Settings) -> Settings:
    journey = replace(
        settings.journey,
        allowed_lateness_s=2.0,
        followups=tuple(
            {**f, "attribution_window_s": LONG_WINDOW_S} if f.get("name") == LONG_RULE else f
            for f in settings.journey.followups
        ),
    )
    attribution = replace(
        settings.attribution,
        window_s=float(WINDOW_S),
        decision_grace_s=float(GRACE_S),
        min_per_arm=1,
    )
    return replace(settings, journey=journey, attribution=attribution)


class Feed:
    """Touchpoints, triggers and outcomes, each keyed as the engine keys them."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")

    def touchpoint(self, body: dict[str, Any]) -> None:
        tp = contract.parse(body)
        self.producer.send(
            self.s.topics.touchpoints, key=tp.routing_key.encode(), value=contract.dumps(tp)
        )
        self.producer.flush()

    def purchase(self, event_id: str, customer: str, at: int, value: float, **extra: Any) -> None:
        props = {"order_id": f"o-{event_id}", "value": value, "currency": "EUR"}
        self.touchpoint(
            {
                "event_id": event_id,
                "type": "purchase",
                "channel": "web",
                "timestamp": at,
                "customer_id": customer,
                "properties": props,
                **extra,
            }
        )

    def trigger(self, tid: str, rule: str, customer: str, deadline: int) -> None:
        t = trigger(
            trigger_id=tid, rule=rule, journey_key=customer, customer_id=customer, deadline=deadline
        )
        self.producer.send(self.s.topics.triggers, key=customer.encode(), value=t.dumps())
        self.producer.flush()

    def outcome(self, tid: str, rule: str, customer: str, outcome: str, at: int) -> None:
        body = outcome_record(tid, outcome, rule=rule, key=customer, at=at)
        self.producer.send(self.s.topics.dispatch, key=customer.encode(), value=orjson.dumps(body))
        self.producer.flush()

    def raw(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        self.producer.send(topic, key=key, value=value, partition=partition)
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


def conversions(settings: Settings) -> list[dict[str, Any]]:
    records = read_topic(settings.broker.bootstrap, settings.topics.conversions, timeout_s=30)
    return [orjson.loads(r.value) for r in records]


def stage_of(worker: Worker, customer: str) -> Any:
    status, body = worker.api(f"/customers/{customer}/journey")
    return body.get("stage") if status == 200 and isinstance(body, dict) else None


@pytest.mark.slow
def test_one_conversion_record_per_decided_trigger_with_last_touch_and_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    s = attribution_settings(settings)
    ensure_topics(s)
    feed = Feed(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        t0 = int(time.time() * 1000)
        # In store, identified only by the loyalty card linked to c-d.
        feed.touchpoint(
            {
                "event_id": "d-identify",
                "type": "identify",
                "channel": "web",
                "timestamp": t0 - 80 * SEC,
                "customer_id": "c-d",
                "properties": {"loyalty_id": "L-d", "email": "d@example.com"},
            }
        )
        # Purchases first: every outcome below arrives after its purchase.
        feed.purchase("a-buy", "c-a", t0 - 30 * SEC, 40.0)
        feed.purchase("b-buy", "c-b", t0 - 20 * SEC, 70.0)  # inside both of c-b's windows
        feed.purchase("f-early", "c-f", t0 - 70 * SEC, 99.0)  # before its trigger's deadline
        feed.touchpoint(
            {
                "event_id": "d-pos",
                "type": "pos_purchase",
                "channel": "pos",
                "timestamp": t0 - 10 * SEC,
                "properties": {
                    "loyalty_id": "L-d",
                    "order_id": "R-d",
                    "value": 25.0,
                    "currency": "EUR",
                },
            }
        )
        for customer in ("c-a", "c-b", "c-d", "c-f"):
            wait_for(lambda c=customer: stage_of(worker, c), lambda st: st == "purchase", 60)
        feed.trigger("A1", "cart", "c-a", t0 - 60 * SEC)
        feed.outcome("A1", "cart", "c-a", "sent", t0)
        feed.trigger("B1", "cart", "c-b", t0 - 60 * SEC)
        feed.outcome("B1", "cart", "c-b", "sent", t0)
        feed.trigger("B2", "browse", "c-b", t0 - 40 * SEC)
        feed.outcome("B2", "browse", "c-b", "held_out", t0)
        feed.trigger("C1", "cart", "c-c", t0 - 60 * SEC)
        feed.outcome("C1", "cart", "c-c", "held_out", t0)
        feed.outcome("D1", "cart", "c-d", "sent", t0)  # before its trigger
        feed.trigger("D1", "cart", "c-d", t0 - 60 * SEC)
        feed.trigger("E1", "cart", "c-e", t0 - 60 * SEC)
        feed.outcome("E1", "cart", "c-e", "capped", t0)
        feed.trigger("F1", "cart", "c-f", t0 - 60 * SEC)
        feed.outcome("F1", "cart", "c-f", "sent", t0)
        feed.outcome("F1", "cart", "c-f", "sent", t0)  # delivered twice
        # Hostile: not an outcome; an outcome on another journey's partition. Both go to
        # the dead-letter topic, with the reason.
        feed.raw(s.topics.dispatch, b"c-x", b'{"trigger_id": 42}')
        wrong = outcome_record("X1", "sent", rule="cart", key="c-x", at=t0)
        home = DefaultPartitioner()(b"c-x", [0, 1, 2, 3], [0, 1, 2, 3])
        feed.raw(s.topics.dispatch, b"c-x", orjson.dumps(wrong), partition=(home + 1) % 4)
        # A window that outlives the restart below, converted after it.
        feed.trigger("G1", LONG_RULE, "c-g", t0 - 5 * SEC)
        feed.outcome("G1", LONG_RULE, "c-g", "sent", t0)

        first = {"A1", "B1", "B2", "C1", "D1", "F1"}
        records = wait_for(
            lambda: conversions(s),
            lambda rs: {r["trigger_id"] for r in rs} >= first,
            timeout_s=WINDOW_S + GRACE_S + 90,
            every_s=1.0,
        )
        got = {r["trigger_id"]: r for r in records}
        assert len(records) == len(got) == 6, records
        expect = {  # trigger: (arm, converted, revenue)
            "A1": ("treated", True, 40.0),
            "B1": ("treated", True, 0.0),  # the later window takes the order's revenue
            "B2": ("control", True, 70.0),
            "C1": ("control", False, 0.0),
            "D1": ("treated", True, 25.0),  # in store, through the loyalty card's link
            "F1": ("treated", False, 0.0),
        }
        for tid, (arm, converted, revenue) in expect.items():
            r = got[tid]
            assert (r["arm"], r["converted"], r["revenue"]) == (arm, converted, revenue), r
            assert r["conversion_id"] == conversion_id(tid)
        assert got["B1"]["converted_at"] == got["B2"]["converted_at"] == t0 - 20 * SEC
        assert got["D1"]["journey_key"] == "c-d" and got["D1"]["order_id"] == "R-d"
        dead = read_topic(s.broker.bootstrap, s.topics.dlq, timeout_s=10)
        reasons = [
            dict(r.headers)["reason"].decode()
            for r in dead
            if dict(r.headers).get("stage") == b"attribution"
        ]
        assert len(reasons) == 2, reasons
        assert any("trigger_id must be text" in r for r in reasons), reasons
        assert any("belongs to partition" in r for r in reasons), reasons
        assert worker.metric("journey_followup_decided_total", rule=LONG_RULE) == 1.0

        status, body = worker.api("/followups")
        assert status == 200, body
        rules = {f["rule"]: f for f in body["followups"]}
        cart = rules["cart"]
        assert (cart["decided"], cart["sent"], cart["held_out"]) == (5, 4, 1)
        assert (cart["treated_conversions"], cart["control_conversions"]) == (3, 0)
        assert (cart["treated_rate"], cart["control_rate"], cart["uplift_abs"]) == (0.75, 0.0, 0.75)
        assert cart["uplift_abs_ci_low"] < 0.75 < cart["uplift_abs_ci_high"]
        assert cart["revenue_attributed"] == 65.0 and cart["currency"] == "EUR"
        assert cart["verdict"] in ("helps", "no_effect")
        assert rules["browse"]["verdict"] == "insufficient"  # nothing sent to compare
        assert LONG_RULE not in rules  # its window is still open
        assert (
            worker.metric("journey_followup_windows_closed_total", rule="cart", converted="true")
            == 3.0
        )
        assert worker.metric("journey_followup_revenue_total", rule="browse", arm="control") == 70.0

        worker.stop()
        worker = Worker(s, tmp_path / "worker2.log").start()
        worker.wait_ready()
        feed.purchase("g-buy", "c-g", int(time.time() * 1000), 12.5)
        g_end = t0 - 5 * SEC + LONG_WINDOW_S * SEC
        wait_for(
            lambda: conversions(s),
            lambda rs: any(r["trigger_id"] == "G1" for r in rs),
            timeout_s=(g_end - int(time.time() * 1000)) / 1000 + GRACE_S + 90,
            every_s=1.0,
        )
        again = conversions(s)
        assert sorted(r["trigger_id"] for r in again) == sorted([*first, "G1"]), again
        g = next(r for r in again if r["trigger_id"] == "G1")
        assert (g["converted"], g["revenue"]) == (True, 12.5)
        status, body = http_get(f"{worker.url}/followups", token=API_TOKEN)
        assert status == 200
        rules = {f["rule"]: f for f in body["followups"]}
        assert rules["cart"]["decided"] == 5 and rules["cart"]["treated_conversions"] == 3
        assert rules[LONG_RULE]["treated_conversions"] == 1
    finally:
        worker.stop()
        feed.close()


def test_followups_query_is_checked(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    worker = Worker(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        window = "since=2026-03-01T00:00:00Z&until=2026-03-08T00:00:00Z"
        status, body = worker.api(f"/followups?{window}")
        assert status == 200 and body["followups"] == [], body
        assert body["window"]["since"].startswith("2026-03-01")
        for query, reason in [
            ("since=yesterday", "since"),
            ("until=99999999999999999999", "until"),
            ("since=2026-03-08T00:00:00Z&until=2026-03-01T00:00:00Z", "before"),
            ("rule=cart", "unknown query parameter"),
            ("since=" + "9" * 100, "64 characters"),
        ]:
            status, body = worker.api(f"/followups?{query}")
            assert status == 400 and reason in body["error"], (query, status, body)
        assert http_get(f"{worker.url}/followups")[0] == 401
    finally:
        worker.stop()


@pytest.mark.slow
def test_a_worker_killed_mid_stream_loses_and_double_counts_no_window(
    settings: Settings, tmp_path: Path
) -> None:
    window_s, grace_s = 20, 5
    s = replace(
        settings,
        journey=replace(settings.journey, allowed_lateness_s=2.0),
        attribution=replace(
            settings.attribution,
            window_s=float(window_s),
            decision_grace_s=float(grace_s),
            min_per_arm=1,
        ),
    )
    ensure_topics(s)
    feed = Feed(s)
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        t0 = int(time.time() * 1000) + 2 * SEC
        # (wall ms to send at, what): each customer's decided trigger, and one purchase
        # before its window, inside it or after it; sent as their time comes.
        plan: list[tuple[int, str, Any]] = []
        expect: dict[str, tuple[str, bool, float]] = {}
        n = 90
        for i in range(n):
            customer, tid = f"k{i}", f"K{i}"
            deadline = t0 - 20 * SEC + i * 40 * SEC // n
            outcome = "sent" if i % 2 else "held_out"
            plan.append((deadline + SEC, "decision", (tid, customer, deadline, outcome)))
            offset = (-3, 8, window_s + 4)[i % 3]
            value = float(10 + i)
            plan.append((deadline + offset * SEC, "purchase", (f"buy{i}", customer, value)))
            arm = "treated" if outcome == "sent" else "control"
            expect[tid] = (arm, offset == 8, value if offset == 8 else 0.0)
        plan.sort(key=lambda p: p[0])
        kill_at, killed = t0 + 12 * SEC, False
        for at, kind, item in plan:
            if not killed and at >= kill_at:
                worker.kill()
                killed = True
                worker = Worker(s, tmp_path / "worker2.log", web_port=worker.web_port).start()
            delay = at / 1000 - time.time()
            if delay > 0:
                time.sleep(delay)  # pacing the feed in wall time, not synchronisation
            if kind == "decision":
                tid, customer, deadline, outcome = item
                feed.trigger(tid, "cart", customer, deadline)
                feed.outcome(tid, "cart", customer, outcome, at)
            else:
                event_id, customer, value = item
                feed.purchase(event_id, customer, at, value)
        assert killed
        worker.wait_ready()
        records = wait_for(
            lambda: conversions(s),
            lambda rs: {r["trigger_id"] for r in rs} == set(expect),
            timeout_s=180,
            every_s=1.0,
        )
        by_id: dict[str, dict[str, Any]] = {}
        for r in records:  # a record sent again after the kill is the same record
            assert by_id.setdefault(r["trigger_id"], r) == r, (r, by_id[r["trigger_id"]])
        for tid, (arm, converted, revenue) in expect.items():
            r = by_id[tid]
            assert (r["arm"], r["converted"], r["revenue"]) == (arm, converted, revenue), r
        status, body = worker.api("/followups")
        assert status == 200, body
        [cart] = body["followups"]
        want_t = sum(1 for a, c, _ in expect.values() if a == "treated" and c)
        want_c = sum(1 for a, c, _ in expect.values() if a == "control" and c)
        assert (cart["sent"], cart["held_out"]) == (n // 2, n // 2), cart
        assert (cart["treated_conversions"], cart["control_conversions"]) == (want_t, want_c)
    finally:
        worker.stop()
        feed.close()


def owned(worker: Worker, topic: str) -> set[int]:
    status, body = http_get(f"{worker.url}/ready")
    if status != 200:
        return set()
    return {int(p) for t, p in (s.rsplit(":", 1) for s in body["active_partitions"]) if t == topic}


@pytest.mark.slow
def test_followups_merge_every_workers_partitions_for_a_read_token(
    settings: Settings, tmp_path: Path
) -> None:
    reader = "followups-reader-1"
    s = attribution_settings(settings)
    s = replace(s, worker=replace(s.worker, api_tokens={**s.worker.api_tokens, reader: "read"}))
    ensure_topics(s)
    feed = Feed(s)
    workers = [
        Worker(
            replace(s, worker=replace(s.worker, data_dir=str(tmp_path / f"w{i}"))),
            tmp_path / f"worker-{i}.log",
        ).start()
        for i in (1, 2)
    ]
    try:
        for w in workers:
            w.wait_ready()
        resolved = s.topics.resolved
        wait_for(
            lambda: [owned(w, resolved) for w in workers],
            lambda o: all(o) and not (o[0] & o[1]) and o[0] | o[1] == set(range(4)),
            timeout_s=90,
        )
        # Windows long closed: each record is due as soon as its decision is read.
        deadline = int(time.time() * 1000) - 10 * 60 * SEC
        n = 40
        for i in range(n):
            feed.trigger(f"M{i}", "cart", f"m{i}", deadline)
            feed.outcome(f"M{i}", "cart", f"m{i}", "sent" if i % 4 else "held_out", deadline)

        def decided(url: str) -> int:
            status, body = http_get(url, token=reader)
            assert status == 200, body
            return sum(f["decided"] for f in body["followups"])

        for w in workers:
            wait_for(lambda w=w: decided(f"{w.url}/followups"), lambda d: d == n, timeout_s=90)
        shares = []
        for w in workers:
            status, local = http_get(f"{w.url}/followups/local", token=reader)
            assert status == 200, local
            shares.append(sum(arms[a][0] for _, _, arms in local["cells"] for a in arms))
        assert sum(shares) == n and all(shares), shares
        status, body = http_get(f"{workers[0].url}/followups", token=reader)
        [cart] = body["followups"]
        assert (cart["sent"], cart["held_out"]) == (30, 10)
    finally:
        for w in workers:
            w.stop()
        feed.close()
