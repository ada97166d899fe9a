"""Simulated customer journeys, deterministic from a seed.

Personas: browsers who leave, cart abandoners, online buyers, in-store buyers,
returning loyal customers, and anonymous visitors who log in (and may later buy
in store with their loyalty card). Sessions of 3-15 events, seconds to minutes
apart; customers come back after hours.

For the journey map (opt-in: ``personas=MAP_PERSONAS``, ``journey simulate
--map``), shoppers walk the funnel with planted effects that ``journey
report`` must find, every other touchpoint being independent of the outcome:
a product comparison page (``page_view:comparison``) that helps them from
consideration to decision, a support contact before checkout that hurts them
from decision to purchase, and optionally an incident (a :class:`Incident`:
from a given day, checkouts on one platform, ``context.platform``, fail with a
``payment_error``).

``generate`` returns touchpoint dicts accepted by ``stream.contract.parse``,
sorted by event time; ``to_segment`` and ``to_pos_row`` turn them into what
the collector and the POS producer take in; ``produce`` fills the touchpoints
topic (one message per session and routing key, as a Segment batch would).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream import contract

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

PERSONAS: dict[str, float] = {
    "browser_leaves": 0.30,
    "cart_abandoner": 0.20,
    "online_buyer": 0.15,
    "in_store_buyer": 0.12,
    "loyal_returning": 0.08,
    "anon_then_identified": 0.15,
}

#: Journey-map shoppers (see the module docstring); opt-in.
MAP_PERSONAS: dict[str, float] = {"map_shopper": 1.0}
PLATFORMS = ("ios", "android", "desktop")
DAY_MS = 86_400_000
#: The planted effects: advance probabilities with and without the touchpoint.
MAP_COMPARISON_SHARE, MAP_ADVANCE_WITH_COMPARISON, MAP_ADVANCE_WITHOUT = 0.3, 0.8, 0.4
MAP_SUPPORT_SHARE, MAP_BUY_AFTER_SUPPORT, MAP_BUY = 0.2, 0.25, 0.65


@dataclass(frozen=True)
class Incident:
    """Checkouts on ``platform`` fail (``payment_error``, no purchase) for ``days`` days,
    from ``day`` days after the simulation's start."""

    day: int
    days: int = 2
    platform: str = "ios"


TIMEZONES = ("Europe/Paris", "Europe/London", "America/New_York", "Asia/Tokyo", "Europe/Berlin")
LOCALES = ("fr-FR", "en-GB", "en-US", "ja-JP", "de-DE")
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
STORES = ("store-paris-01", "store-lyon-02", "store-lille-03")
CATALOGUE = [
    (f"SKU-{i:04d}", f"{adj} {noun}", round(5 + (i * 37 % 190) + 0.99, 2))
    for i, (adj, noun) in enumerate(
        (a, n)
        for a in (
            "Blue",
            "Red",
            "Linen",
            "Wool",
            "Trail",
            "City",
            "Classic",
            "Light",
            "Soft",
            "Eco",
        )
        for n in (
            "Jacket",
            "Shirt",
            "Sneaker",
            "Scarf",
            "Bag",
            "Cap",
            "Jeans",
            "Sweater",
            "Boot",
            "Dress",
            "Belt",
            "Sock",
            "Coat",
            "Tee",
            "Short",
            "Glove",
            "Hat",
            "Skirt",
            "Vest",
            "Hoodie",
        )
    )
]


class _Customer:
    """Builds one customer's events with a running clock and counters."""

    def __init__(
        self,
        rng: random.Random,
        n: int,
        seed: int,
        t: int,
        start_ms: int = 0,
        incident: Incident | None = None,
    ) -> None:
        self.start_ms = start_ms
        self.incident = incident
        self.rng = rng
        self.n = n
        self.seed = seed
        self.t = t
        self.count = 0
        self.customer_id = f"cust-{seed}-{n}"
        self.anonymous_id = f"anon-{seed}-{n}"
        self.loyalty_id = f"LOY-{seed}-{n}"
        self.email = f"shopper{n}@example.com"
        i = rng.randrange(len(TIMEZONES))
        self.context = {"user_agent": AGENT, "timezone": TIMEZONES[i], "locale": LOCALES[i]}
        self.events: list[dict[str, Any]] = []
        self.session = 0
        self.cart: dict[str, tuple[str, float, int]] = {}
        self.cart_id = ""

    def tick(self, low: float = 5, high: float = 120) -> None:
        """Advance the clock by a think time: log-normal, median ~20 s, within [low, high]."""
        gap = min(high, max(low, self.rng.lognormvariate(3.0, 0.8)))
        self.t += int(gap * 1000)

    def new_session(self, gap_hours: float) -> None:
        self.t += int(gap_hours * 3_600_000)
        self.session += 1

    def emit(self, type_: str, channel: str = "web", ids: str = "anon", **props: Any) -> None:
        self.count += 1
        event: dict[str, Any] = {
            "event_id": f"sim-{self.seed}-{self.n}-{self.count}",
            "type": type_,
            "channel": channel,
            "timestamp": self.t,
            "properties": props,
            "context": dict(self.context) if channel in ("web", "app") else {},
            "_session": self.session,
        }
        if ids in ("anon", "both"):
            event["anonymous_id"] = self.anonymous_id
        if ids in ("customer", "both"):
            event["customer_id"] = self.customer_id
        self.events.append(event)
        self.tick()

    def product(self) -> tuple[str, str, float]:
        # A few best sellers get most of the attention.
        pool = CATALOGUE[:40] if self.rng.random() < 0.7 else CATALOGUE
        return self.rng.choice(pool)

    def browse(self, ids: str, views: int) -> None:
        self.emit("page_view", ids=ids, url="https://shop.example.com/")
        for _ in range(views):
            if self.rng.random() < 0.2:
                self.emit("search", ids=ids, query=self.rng.choice(("jacket", "shoes", "gift")))
            sku, name, price = self.product()
            self.emit(
                "product_view",
                ids=ids,
                sku=sku,
                name=name,
                price=price,
                currency="EUR",
                url=f"https://shop.example.com/p/{sku}",
            )

    def add_items(self, ids: str, items: int) -> None:
        if not self.cart_id:
            self.cart_id = f"cart-{self.seed}-{self.n}-{self.session}"
        for _ in range(items):
            sku, name, price = self.product()
            qty = 1 if self.rng.random() < 0.8 else 2
            held = self.cart.get(sku)
            self.cart[sku] = (name, price, qty + (held[2] if held else 0))
            self.emit(
                "add_to_cart",
                ids=ids,
                sku=sku,
                name=name,
                price=price,
                quantity=qty,
                cart_id=self.cart_id,
                currency="EUR",
            )

    def remove_one(self, ids: str) -> None:
        if self.cart:
            sku = sorted(self.cart)[0]
            name, price, qty = self.cart.pop(sku)
            self.emit(
                "remove_from_cart",
                ids=ids,
                sku=sku,
                name=name,
                price=price,
                quantity=qty,
                cart_id=self.cart_id,
            )

    def products(self) -> list[dict[str, Any]]:
        return [
            {"sku": s, "name": n, "price": p, "quantity": q} for s, (n, p, q) in self.cart.items()
        ]

    def value(self) -> float:
        return round(sum(p * q for _, p, q in self.cart.values()), 2)

    def checkout(self, ids: str) -> None:
        self.emit(
            "checkout_started",
            ids=ids,
            cart_id=self.cart_id,
            value=self.value(),
            currency="EUR",
            products=self.products(),
        )

    def buy_online(self, ids: str) -> None:
        self.emit(
            "purchase",
            ids=ids,
            order_id=f"ord-{self.seed}-{self.n}-{self.session}",
            cart_id=self.cart_id,
            value=self.value(),
            currency="EUR",
            products=self.products(),
        )
        self.cart, self.cart_id = {}, ""

    def buy_in_store(self, by: str) -> None:
        store = self.rng.choice(STORES)
        ids = "customer" if by == "customer" else "none"
        self.emit("store_visit", channel="pos", ids=ids, store_id=store, **self._alias(by))
        items = [self.product() for _ in range(self.rng.randint(1, 3))]
        products: list[dict[str, Any]] = [
            {"sku": s, "name": n, "price": p, "quantity": 1} for s, n, p in items
        ]
        self.emit(
            "pos_purchase",
            channel="pos",
            ids=ids,
            store_id=store,
            register=f"R{self.rng.randint(1, 6)}",
            order_id=f"rcpt-{self.seed}-{self.n}-{self.session}",
            value=round(sum(float(p["price"]) for p in products), 2),
            currency="EUR",
            products=products,
            **self._alias(by),
        )

    def _alias(self, by: str) -> dict[str, str]:
        if by == "loyalty":
            return {"loyalty_id": self.loyalty_id}
        if by == "email":
            return {"email": self.email}
        return {}


def _play(c: _Customer, persona: str) -> None:
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
        _map_shopper(c)
    else:
        raise ValueError(f"unknown persona {persona!r}")


def _map_shopper(c: _Customer) -> None:
    """A logged-in shopper walking the funnel; only the planted touchpoints change the odds."""
    rng = c.rng
    platform = rng.choice(PLATFORMS)
    c.context = {**c.context, "platform": platform}
    c.emit("page_view", ids="customer", page_type="home")
    if rng.random() < 0.3:
        c.emit("email_open", channel="email", ids="customer", campaign="newsletter")
    if rng.random() >= 0.7:
        return  # never looks at a product
    for _ in range(rng.randint(1, 3)):
        sku, name, price = c.product()
        c.emit("product_view", ids="customer", sku=sku, name=name, price=price, currency="EUR")
    if rng.random() < 0.4:
        c.emit("search", ids="customer", query=rng.choice(("jacket", "shoes", "gift")))
    compared = rng.random() < MAP_COMPARISON_SHARE
    if compared:
        c.emit("page_view", ids="customer", page_type="comparison")
    if rng.random() >= (MAP_ADVANCE_WITH_COMPARISON if compared else MAP_ADVANCE_WITHOUT):
        return
    c.add_items("customer", rng.randint(1, 2))
    if rng.random() < 0.3:
        c.emit("page_view", ids="customer", page_type="shipping")
    contacted = rng.random() < MAP_SUPPORT_SHARE
    if contacted:
        c.emit("support_contact", channel="support", ids="customer", topic="delivery")
    c.checkout("customer")
    incident = c.incident
    if (
        incident is not None
        and platform == incident.platform
        and incident.day <= (c.t - c.start_ms) // DAY_MS < incident.day + incident.days
    ):
        c.emit("payment_error", ids="customer", cart_id=c.cart_id, reason="declined")
        return
    if rng.random() < (MAP_BUY_AFTER_SUPPORT if contacted else MAP_BUY):
        c.buy_online("customer")


def _customers(
    customers: int,
    seed: int,
    start_ms: int,
    span_s: float,
    personas: dict[str, float] | None,
    incident: Incident | None = None,
) -> Iterator[_Customer]:
    weights = personas or PERSONAS
    names, probs = list(weights), list(weights.values())
    for n in range(customers):
        rng = random.Random(f"{seed}:{n}")
        t = start_ms + int(rng.uniform(0, span_s) * 1000)
        c = _Customer(rng, n, seed, t, start_ms, incident)
        _play(c, rng.choices(names, probs)[0])
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


SEGMENT_EVENTS = {
    "product_view": "Product Viewed",
    "add_to_cart": "Product Added",
    "remove_from_cart": "Product Removed",
    "checkout_started": "Checkout Started",
    "purchase": "Order Completed",
    "search": "Products Searched",
    "email_open": "Email Opened",
    "email_click": "Email Link Clicked",
}


def to_segment(event: dict[str, Any]) -> dict[str, Any]:
    """A web touchpoint as the Segment Tracking API message an SDK would send."""
    msg: dict[str, Any] = {
        "messageId": event["event_id"],
        "timestamp": contract.format_timestamp(event["timestamp"]),
        "context": {
            "userAgent": event.get("context", {}).get("user_agent", AGENT),
            "locale": event.get("context", {}).get("locale", "en-US"),
            "timezone": event.get("context", {}).get("timezone", "UTC"),
        },
    }
    if event.get("anonymous_id"):
        msg["anonymousId"] = event["anonymous_id"]
    if event.get("customer_id"):
        msg["userId"] = event["customer_id"]
    props = dict(event.get("properties", {}))
    if event["type"] == "page_view":
        msg.update(type="page", properties=props)
    elif event["type"] == "identify":
        msg.update(type="identify", traits=props)
    else:
        msg.update(
            type="track", event=SEGMENT_EVENTS.get(event["type"], event["type"]), properties=props
        )
    return msg


def to_pos_row(event: dict[str, Any]) -> dict[str, Any]:
    """A ``pos_purchase`` touchpoint as a POS JSON Lines export row."""
    props = event["properties"]
    row: dict[str, Any] = {
        "store_id": props["store_id"],
        "register": props.get("register", "R1"),
        "receipt_id": props["order_id"],
        "timestamp": contract.format_timestamp(event["timestamp"]),
        "items": props.get("products", []),
        "total": props.get("value"),
        "currency": props.get("currency", "EUR"),
        "kind": "sale",
    }
    for name in ("customer_id",):
        if event.get(name):
            row[name] = event[name]
    for name in ("loyalty_id", "email"):
        if props.get(name):
            row[name] = props[name]
    return row


def write_jsonl(path: Path, events: Sequence[dict[str, Any]]) -> None:
    with path.open("wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")


def produce(
    settings: Any,
    events: Sequence[dict[str, Any]],
    rate: float | None = None,
    pack_sessions: bool = True,
    chunk: int = 5000,
    sdk_batch: int = 0,
) -> int:
    """Publish ``events`` (in order) to the touchpoints topic; returns messages sent.

    With ``pack_sessions``, consecutive events of one routing key become one JSON
    array message, as a Segment ``/v1/batch`` call would carry them.

    With ``sdk_batch`` > 0, events go out in batches of that many consecutive
    events (many customers each, as a server-side SDK flushes them: Segment's
    ``flush_at`` is 100), and each batch is packed into one message per
    destination partition (:func:`stream.producers.publisher.packed_records`),
    as the collector and the POS producer publish them.
    """
    import time

    from stream.producers.publisher import Publisher, packed_records

    publisher = Publisher(settings.broker, ack_timeout_s=60)
    topic = settings.topics.touchpoints
    records: list[tuple[str, bytes | None, bytes]] = []
    sent = 0
    started = time.monotonic()
    done_events = 0
    tps = [contract.parse(e) for e in events]
    try:
        partitions = publisher.partition_count(topic) if sdk_batch > 0 else 0
        i = 0
        while i < len(tps):
            j = i + 1
            if sdk_batch > 0:
                j = min(len(tps), i + sdk_batch)
                records.extend(packed_records(topic, tps[i:j], partitions))
            else:
                if pack_sessions:
                    while j < len(tps) and tps[j].routing_key == tps[i].routing_key and j - i < 50:
                        j += 1
                group = tps[i:j]
                value = contract.dumps(group[0]) if len(group) == 1 else contract.dumps_many(group)
                records.append((topic, group[0].routing_key.encode(), value))
            done_events += j - i
            i = j
            if len(records) >= chunk:
                sent += publisher.send_and_wait(records)
                records = []
                if rate:
                    ahead = done_events / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        if records:
            sent += publisher.send_and_wait(records)
    finally:
        publisher.close()
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="journey simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start-ms", type=int, default=None, help="first session start (epoch ms)")
    parser.add_argument("--span-s", type=float, default=6 * 3600, help="spread of session starts")
    parser.add_argument("--out", type=Path, help="write JSON Lines here ('-' for stdout)")
    parser.add_argument("--produce", action="store_true", help="publish to the touchpoints topic")
    parser.add_argument("--broker-url", default="", help="broker for --produce")
    parser.add_argument("--rate", type=float, default=None, help="events/s when producing")
    parser.add_argument(
        "--map",
        action="store_true",
        help="journey-map shoppers with planted effects (comparison page helps, support "
        "contact before checkout hurts) instead of the usual personas",
    )
    parser.add_argument(
        "--incident-day",
        type=int,
        default=None,
        help="with --map: from this day after the start, checkouts on --incident-platform fail",
    )
    parser.add_argument("--incident-days", type=int, default=2, help="how long it lasts")
    parser.add_argument("--incident-platform", default="ios", help="context.platform it hits")
    args = parser.parse_args(argv)
    if args.incident_day is not None and not args.map:
        parser.error("--incident-day needs --map")
    incident = (
        None
        if args.incident_day is None
        else Incident(args.incident_day, args.incident_days, args.incident_platform)
    )
    events = generate(
        args.customers,
        args.seed,
        args.start_ms,
        args.span_s,
        personas=MAP_PERSONAS if args.map else None,
        incident=incident,
    )
    if args.out:
        if str(args.out) == "-":
            for e in events:
                sys.stdout.buffer.write(orjson.dumps(e) + b"\n")
        else:
            write_jsonl(args.out, events)
    if args.produce:
        from stream.settings import load_settings

        settings = load_settings()
        if args.broker_url:
            settings = settings.with_broker(args.broker_url)
        sent = produce(settings, events, rate=args.rate)
        print(f"produced {len(events)} events in {sent} messages", file=sys.stderr)
    if not args.out and not args.produce:
        print(f"{len(events)} events (use --out or --produce)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
