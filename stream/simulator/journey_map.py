"""Journey-map shoppers: the funnel walked with planted effects (opt-in).

``journey report`` must find what is planted here, every other touchpoint
being independent of the outcome: a product comparison page
(``page_view:comparison``) that helps shoppers from consideration to
decision, a support contact before checkout that hurts them from decision to
purchase, and optionally an :class:`Incident` (from a given day, checkouts on
one platform, ``context.platform``, fail with a ``payment_error``).
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.simulator.shoppers import Shopper

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


def map_shopper(c: Shopper, incident: Incident | None) -> None:
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
    if (
        incident is not None
        and platform == incident.platform
        and incident.day <= (c.t - c.start_ms) // DAY_MS < incident.day + incident.days
    ):
        c.emit("payment_error", ids="customer", cart_id=c.cart_id, reason="declined")
        return
    if rng.random() < (MAP_BUY_AFTER_SUPPORT if contacted else MAP_BUY):
        c.buy_online("customer")
