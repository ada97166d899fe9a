"""Abandonment on the real broker: deadlines fire on event time, after catch-up, once.

The worker is "down" while an hour of events piles up (they are produced before
it starts). Carts whose owners bought before the deadline, online or in a
store under their loyalty card, must not trigger; the others trigger exactly
once, right after the worker has caught up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from stream import simulator
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.builders import event
from tests.helpers import read_topic, wait_for
from tests.procs import Worker

MIN = 60_000


def shopper(name: str, now: int, added_ago_min: int) -> list[dict[str, Any]]:
    """Identify (email, loyalty card) then a cart of two items."""
    t = now - added_ago_min * MIN
    return [
        event(
            f"{name}-id",
            "identify",
            t - 5 * MIN,
            customer_id=name,
            properties={
                "email": f"{name}@example.com",
                "loyalty_id": f"L-{name}",
                "first_name": name.title(),
            },
        ),
        event(
            f"{name}-a1",
            "add_to_cart",
            t,
            customer_id=name,
            properties={
                "sku": "SKU-1",
                "name": "Blue Coat",
                "price": 70.0,
                "quantity": 1,
                "cart_id": f"cart-{name}",
                "currency": "EUR",
            },
        ),
        event(
            f"{name}-a2",
            "add_to_cart",
            t + 1000,
            customer_id=name,
            properties={
                "sku": "SKU-2",
                "name": "Red Scarf",
                "price": 15.5,
                "quantity": 2,
                "cart_id": f"cart-{name}",
                "currency": "EUR",
            },
        ),
    ]


def triggers(settings: Settings) -> list[dict[str, Any]]:
    records = read_topic(settings.broker.bootstrap, settings.topics.triggers, timeout_s=30)
    return [orjson.loads(r.value) for r in records]


def test_backlog_purchase_cancels_and_abandoned_carts_fire_once_after_catch_up(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    now = int(time.time() * 1000)
    abandoners = [f"aban{i}" for i in range(10)]
    store_buyers = [f"store{i}" for i in range(8)]
    web_buyers = [f"web{i}" for i in range(6)]
    recent = [f"recent{i}" for i in range(4)]
    events: list[dict[str, Any]] = []
    for name in abandoners:
        events += shopper(name, now, added_ago_min=65)
    for name in store_buyers:
        events += shopper(name, now, added_ago_min=65)
        # In store, 15 minutes later, identified only by the loyalty card.
        events.append(
            event(
                f"{name}-pos",
                "pos_purchase",
                now - 50 * MIN,
                channel="pos",
                properties={
                    "loyalty_id": f"L-{name}",
                    "store_id": "ST-1",
                    "order_id": f"R-{name}",
                    "value": 101.0,
                    "currency": "EUR",
                },
            )
        )
    for name in web_buyers:
        events += shopper(name, now, added_ago_min=65)
        events.append(
            event(
                f"{name}-buy",
                "purchase",
                now - 40 * MIN,
                customer_id=name,
                properties={"order_id": f"O-{name}", "value": 101.0},
            )
        )
    for name in recent:
        events += shopper(name, now, added_ago_min=5)  # deadline still 25 minutes away
    # Other shoppers fill the hour, so the worker has a real backlog to read: the
    # watermark passes the deadlines long before the identity links sent while
    # reading it come back (the in-store sales are read before their loyalty
    # cards are linked).
    # (Only their first 15 minutes: their carts are all past due after catch-up.)
    filler = simulator.generate(4000, seed=5, start_ms=now - 60 * MIN, span_s=10 * 60)
    events += [e for e in filler if e["timestamp"] <= now - 45 * MIN]
    events.sort(key=lambda e: e["timestamp"])
    simulator.produce(settings, events, rate=None, pack_sessions=False)

    worker = Worker(settings, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        started = int(time.time() * 1000)
        # Everyone's journey settled: purchases in, nothing pending.
        for name in store_buyers + web_buyers:
            wait_for(
                lambda name=name: worker.api(f"/customers/{name}/journey"),
                lambda r: (
                    r[0] == 200
                    and r[1]["orders"]["count"] == 1
                    and r[1]["pending_events"] == 0
                    and r[1]["cart"] is None
                ),
                timeout_s=90,
            )
        ours = set(abandoners + store_buyers + web_buyers + recent)
        carts = wait_for(
            lambda: [
                t for t in triggers(settings) if t["rule"] == "cart" and t["customer_id"] in ours
            ],
            lambda got: len(got) >= len(abandoners),
            timeout_s=60,
        )
        # The abandoners, once each (the topic is read after everything settled).
        assert sorted(t["customer_id"] for t in carts) == sorted(abandoners)
        for t in carts:
            name = t["customer_id"]
            assert t["email"] == f"{name}@example.com"
            assert t["cart"]["cart_id"] == f"cart-{name}"
            assert [(i["sku"], i["quantity"]) for i in t["cart"]["items"]] == [
                ("SKU-1", 1),
                ("SKU-2", 2),
            ]
            assert t["cart"]["value"] == 101.0
            assert t["deadline"] == now - 65 * MIN + 1000 + 30 * MIN
            # During catch-up (40-70 s here), and within seconds of the watermark
            # passing the deadline.
            assert started - 5000 <= t["fired_at"] <= started + 90_000
            assert 0 <= t["fired_at"] - t["extra"]["watermark_passed_at"] <= 5000
        rules_by_customer = {(t["customer_id"], t["rule"]) for t in triggers(settings)}
        for name in store_buyers + web_buyers + recent:
            assert (name, "cart") not in rules_by_customer
            assert (name, "checkout") not in rules_by_customer
        # A first purchase in either channel gets the welcome follow-up.
        for name in web_buyers + store_buyers:
            assert (name, "welcome") in rules_by_customer
        # Every cart trigger the worker counted reaches the topic, each id once.
        all_carts = wait_for(
            lambda: [t for t in triggers(settings) if t["rule"] == "cart"],
            lambda got: len(got) == worker.metric("journey_abandonments_total", kind="cart"),
            timeout_s=30,
        )
        assert len({t["trigger_id"] for t in all_carts}) == len(all_carts)
        assert worker.metric("journey_triggers_total", rule="cart") == len(all_carts)
    finally:
        worker.stop()
