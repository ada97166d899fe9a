"""One simulated shopper's events: a running clock, a cart and the catalogue.

:class:`Shopper` holds the identifiers and the clock of one customer and
appends touchpoint dicts (``stream.contract.parse`` accepts them) as the
personas (:mod:`stream.simulator.personas`) make it browse, fill a cart, check
out and buy online or in store. All randomness comes from its own ``rng``.
"""

from __future__ import annotations

import random
from typing import Any

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


class Shopper:
    """Builds one customer's events with a running clock and counters."""

    def __init__(
        self,
        rng: random.Random,
        n: int,
        seed: int,
        t: int,
        start_ms: int = 0,
    ) -> None:
        self.start_ms = start_ms
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
