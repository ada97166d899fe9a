"""The usual personas and the whole simulated population, deterministic from a seed.

Personas: browsers who leave, cart abandoners, online buyers, in-store buyers,
returning loyal customers, and anonymous visitors who log in (and may later buy
in store with their loyalty card). Sessions of 3-15 events, seconds to minutes
apart; customers come back after hours. :func:`generate` returns every
customer's touchpoint dicts sorted by event time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from stream.simulator.journey_map import Incident, map_shopper
from stream.simulator.shoppers import Shopper

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

PERSONAS: dict[str, float] = {
    "browser_leaves": 0.30,
    "cart_abandoner": 0.20,
    "online_buyer": 0.15,
    "in_store_buyer": 0.12,
    "loyal_returning": 0.08,
    "anon_then_identified": 0.15,
}


def play(c: Shopper, persona: str, incident: Incident | None = None) -> None:
    """Make ``c`` act out ``persona`` (a name of :data:`PERSONAS` or :data:`MAP_PERSONAS`)."""
    rng = c.rng
    if persona in ("cart_abandoner", "online_buyer", "loyal_returning"):
        # A logged-in shopper: the site identifies them with their profile on login.
        c.emit("identify", ids="customer", email=c.email, first_name=f"Shopper{c.n}")
    if persona == "browser_leaves":
        c.browse("anon", rng.randint(1, 5))
        if rng.random() < 0.3:
            c.new_session(rng.uniform(2, 20))
            c.browse("anon", rng.randint(1, 3))
    elif persona == "cart_abandoner":
        c.browse("customer", rng.randint(1, 4))
        c.add_items("customer", rng.randint(1, 3))
        if rng.random() < 0.3:
            c.remove_one("customer")
        if rng.random() < 0.4 and c.cart:
            c.checkout("customer")
    elif persona == "online_buyer":
        c.browse("customer", rng.randint(1, 4))
        c.add_items("customer", rng.randint(1, 3))
        c.checkout("customer")
        c.buy_online("customer")
    elif persona == "in_store_buyer":
        c.buy_in_store(rng.choice(("customer", "customer", "loyalty", "email")))
    elif persona == "loyal_returning":
        c.browse("customer", rng.randint(1, 3))
        c.add_items("customer", rng.randint(1, 2))
        c.checkout("customer")
        c.buy_online("customer")
        c.new_session(rng.uniform(4, 20))
        c.emit("email_open", channel="email", ids="customer", campaign="winback")
        c.emit("email_click", channel="email", ids="customer", campaign="winback")
        c.browse("customer", rng.randint(1, 2))
        c.add_items("customer", 1)
        c.buy_online("customer")
    elif persona == "anon_then_identified":
        c.browse("anon", rng.randint(1, 4))
        traits: dict[str, Any] = {"email": c.email, "first_name": f"Shopper{c.n}"}
        with_loyalty = rng.random() < 0.5
        if with_loyalty:
            traits["loyalty_id"] = c.loyalty_id
        c.emit("identify", ids="both", **traits)
        c.browse("both", rng.randint(0, 2))
        if rng.random() < 0.5:
            c.add_items("both", rng.randint(1, 2))
        if with_loyalty and rng.random() < 0.5:
            c.new_session(rng.uniform(3, 24))
            c.buy_in_store("loyalty")
    elif persona == "map_shopper":
        map_shopper(c, incident)
    else:
        raise ValueError(f"unknown persona {persona!r}")


def _customers(
    customers: int,
    seed: int,
    start_ms: int,
    span_s: float,
    personas: dict[str, float] | None,
    incident: Incident | None = None,
) -> Iterator[Shopper]:
    weights = personas or PERSONAS
    names, probs = list(weights), list(weights.values())
    for n in range(customers):
        rng = random.Random(f"{seed}:{n}")
        t = start_ms + int(rng.uniform(0, span_s) * 1000)
        c = Shopper(rng, n, seed, t, start_ms)
        play(c, rng.choices(names, probs)[0], incident)
        yield c


def generate(
    customers: int,
    seed: int = 1,
    start_ms: int | None = None,
    span_s: float = 6 * 3600,
    personas: dict[str, float] | None = None,
    incident: Incident | None = None,
) -> list[dict[str, Any]]:
    """All events of ``customers`` simulated customers, sorted by (timestamp, event_id).

    ``incident`` applies to ``map_shopper`` customers (see :data:`MAP_PERSONAS`).
    """
    start = DEFAULT_START_MS if start_ms is None else start_ms
    out = [
        {k: v for k, v in e.items() if k != "_session"}
        for c in _customers(customers, seed, start, span_s, personas, incident)
        for e in c.events
    ]
    out.sort(key=lambda e: (e["timestamp"], e["event_id"]))
    return out
