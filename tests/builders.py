"""Builders of the engine's data for tests: one place instead of a copy per file."""

from __future__ import annotations

from typing import Any

from stream.contract import Touchpoint
from stream.dispatch.links import TrackingLinks
from stream.triggers.trigger import ABANDONMENT, Trigger, TriggerItem

#: 2026-01-01T12:00:00Z
NOON = 1_767_268_800_000


def touchpoint(
    event_id: str = "e-1",
    type_: str = "page_view",
    at: int = NOON,
    *,
    channel: str = "web",
    customer: str | None = None,
    anon: str | None = None,
    context: dict[str, Any] | None = None,
    **props: Any,
) -> Touchpoint:
    """A parsed touchpoint; every keyword beyond the named ones is a property."""
    return Touchpoint(
        event_id=event_id,
        type=type_,
        channel=channel,
        timestamp=at,
        customer_id=customer,
        anonymous_id=anon,
        properties=props,
        context=dict(context or {}),
    )


def event(
    event_id: str | None = "e-1",
    type: str | None = "page_view",
    timestamp: int | None = NOON,
    **fields: Any,
) -> dict[str, Any]:
    """A touchpoint as the JSON object producers send; ``fields`` add or override
    top-level fields (``channel`` defaults to web), and ``field=None`` leaves one out."""
    obj: dict[str, Any] = {
        "event_id": event_id,
        "type": type,
        "channel": "web",
        "timestamp": timestamp,
    }
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not None}


def trigger(**kw: Any) -> Trigger:
    """A cart-abandonment trigger with every personalisation field set; ``kw`` overrides."""
    base: dict[str, Any] = dict(
        trigger_id="t-1",
        rule="cart_abandoned",
        kind=ABANDONMENT,
        template="cart_abandoned",
        journey_key="c-1",
        customer_id="c-1",
        email="ann@example.com",
        stage="decision",
        deadline=NOON,
        event_at=NOON - 3_600_000,
        ref="cart-1",
        cause_event_id="e-1",
        cart_id="cart-1",
        items=(
            TriggerItem("SKU-1", "Trail <Shoe>", 89.5, 2),
            TriggerItem("SKU-2", "Socks", 5.0, 1),
        ),
        value=184.0,
        currency="EUR",
        first_name="Ann",
        top_products=("SKU-9",),
        last_store="Lyon Part-Dieu",
        timezone="Europe/Paris",
    )
    base.update(kw)
    return Trigger(**base)


def tracking_links() -> TrackingLinks:
    """Links as the dispatcher builds them for one email."""
    return TrackingLinks("https://t.example.com", "https://shop.example.com", "TOKEN.MAC")


def purchase(
    event_id: str,
    at: int,
    *,
    customer: str = "c-1",
    value: float = 50.0,
    currency: str = "EUR",
    channel: str = "web",
) -> Touchpoint:
    """An order of ``value`` by ``customer`` at event time ``at`` (``pos`` channel: in store)."""
    return Touchpoint(
        event_id=event_id,
        type="pos_purchase" if channel == "pos" else "purchase",
        channel=channel,
        timestamp=at,
        customer_id=customer,
        properties={"order_id": f"o-{event_id}", "value": value, "currency": currency},
    )


def outcome_record(
    trigger_id: str, outcome: str, *, rule: str = "cart", key: str = "c-1", at: int = NOON
) -> dict[str, Any]:
    """A dispatcher outcome as published on ``journey.dispatch`` (``at`` is wall-clock ms)."""
    return {
        "trigger_id": trigger_id,
        "rule": rule,
        "journey_key": key,
        "customer_id": key,
        "outcome": outcome,
        "reason": "test",
        "at": at,
    }
