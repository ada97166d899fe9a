"""The follow-up trigger: what the journey agent emits and the dispatcher sends.

A trigger is pure data. Its ``trigger_id`` is a hash of what identifies the
moment it stands for (customer, rule, the cart/checkout/session it is about, the
deadline), so a re-emission after a crash or a replay carries the same id and
the dispatcher's idempotency claim catches it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

#: Kinds of trigger: an abandonment deadline passed, or a configured stage change.
ABANDONMENT = "abandonment"
TRANSITION = "transition"


def trigger_id(customer: str, rule: str, ref: str, deadline: int) -> str:
    """Deterministic id: the same abandonment always hashes to the same id."""
    text = f"{customer}\x1f{rule}\x1f{ref}\x1f{deadline}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class TriggerItem:
    sku: str
    name: str
    price: float
    quantity: int


@dataclass(frozen=True, slots=True)
class Trigger:
    """One follow-up to consider sending.

    ``deadline`` is the event time the rule waited for (for a stage-change
    trigger, the time of the transition); ``event_at`` is the event time of the
    touchpoint that started the wait (or caused the transition); ``fired_at``
    is wall-clock time stamped by the stream shell when it emits the trigger (0
    in the pure core, and ignored when comparing with the oracle).
    """

    trigger_id: str
    rule: str
    kind: str
    template: str
    journey_key: str
    customer_id: str | None
    email: str | None
    stage: str | None
    deadline: int
    event_at: int
    ref: str
    cause_event_id: str
    cart_id: str | None = None
    items: tuple[TriggerItem, ...] = ()
    value: float = 0.0
    currency: str = ""
    first_name: str | None = None
    top_products: tuple[str, ...] = ()
    last_store: str | None = None
    timezone: str | None = None
    fired_at: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def stamped(self, fired_at: int) -> Trigger:
        return replace(self, fired_at=fired_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "rule": self.rule,
            "kind": self.kind,
            "template": self.template,
            "journey_key": self.journey_key,
            "customer_id": self.customer_id,
            "email": self.email,
            "stage": self.stage,
            "deadline": self.deadline,
            "event_at": self.event_at,
            "ref": self.ref,
            "cause_event_id": self.cause_event_id,
            "cart": None
            if self.cart_id is None
            else {
                "cart_id": self.cart_id,
                "items": [
                    {"sku": i.sku, "name": i.name, "price": i.price, "quantity": i.quantity}
                    for i in self.items
                ],
                "value": self.value,
                "currency": self.currency,
            },
            "first_name": self.first_name,
            "top_products": list(self.top_products),
            "last_store": self.last_store,
            "timezone": self.timezone,
            "fired_at": self.fired_at,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trigger:
        cart = d.get("cart") or {}
        return cls(
            trigger_id=d["trigger_id"],
            rule=d["rule"],
            kind=d.get("kind", ABANDONMENT),
            template=d.get("template", d["rule"]),
            journey_key=d.get("journey_key") or d.get("customer_id") or "",
            customer_id=d.get("customer_id"),
            email=d.get("email"),
            stage=d.get("stage"),
            deadline=int(d["deadline"]),
            event_at=int(d.get("event_at", d["deadline"])),
            ref=d.get("ref", ""),
            cause_event_id=d.get("cause_event_id", ""),
            cart_id=cart.get("cart_id"),
            items=tuple(
                TriggerItem(
                    sku=str(i["sku"]),
                    name=str(i.get("name", "")),
                    price=float(i.get("price", 0.0)),
                    quantity=int(i.get("quantity", 1)),
                )
                for i in cart.get("items", ())
            ),
            value=float(cart.get("value", 0.0)),
            currency=cart.get("currency", ""),
            first_name=d.get("first_name"),
            top_products=tuple(d.get("top_products", ())),
            last_store=d.get("last_store"),
            timezone=d.get("timezone"),
            fired_at=int(d.get("fired_at", 0)),
            extra=dict(d.get("extra") or {}),
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def loads(cls, raw: bytes) -> Trigger:
        return cls.from_dict(orjson.loads(raw))
