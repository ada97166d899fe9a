"""A customer's journey as plain data, and its (de)serialisation.

``JourneyState`` is what the journey table holds per journey key. It splits in
two: the *settled* part (stage, history, counts, cart, orders: everything up to
``settled_until``, the watermark it was last advanced to) and ``pending``, the
events newer than that, kept in event-time order until the watermark passes
them. That split is what makes the result independent of arrival order within
the allowed lateness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.contract import Touchpoint, from_trusted
from stream.journey.visits import OpenVisit

#: How many settled event ids a journey remembers for de-duplication.
SEEN_IDS = 256
#: How many settled events an orphan journey keeps to be replayed into a customer's.
JOURNAL_EVENTS = 200
#: How many distinct viewed products a journey remembers for personalisation.
VIEWED_PRODUCTS = 20


@dataclass(frozen=True, slots=True)
class Transition:
    """A stage change: ``from_stage`` is None when a journey starts."""

    customer_id: str
    from_stage: str | None
    to_stage: str
    at: int
    cause_event_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "from": self.from_stage,
            "to": self.to_stage,
            "at": self.at,
            "cause_event_id": self.cause_event_id,
        }


@dataclass(slots=True)
class StageVisit:
    stage: str
    entered_at: int
    left_at: int | None = None
    cause: str = ""


@dataclass(slots=True)
class CartItem:
    sku: str
    name: str = ""
    price: float = 0.0
    quantity: int = 1


@dataclass(slots=True)
class Cart:
    cart_id: str
    items: dict[str, CartItem] = field(default_factory=dict)
    currency: str = ""
    updated_at: int = 0

    @property
    def value(self) -> float:
        return round(sum(i.price * i.quantity for i in self.items.values()), 2)


@dataclass(slots=True)
class Checkout:
    started_at: int
    cart_id: str | None
    event_id: str


@dataclass(slots=True)
class Wait:
    """An open abandonment wait: fires at ``deadline`` unless cancelled first."""

    rule: str
    ref: str
    started_at: int
    deadline: int
    cause_event_id: str


@dataclass(slots=True)
class Session:
    """The current browsing session (for rules that count events per session)."""

    ref: str
    started_at: int
    last_at: int
    session_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Orders:
    count: int = 0
    total_value: float = 0.0
    returns: int = 0
    returned_value: float = 0.0
    last_order_id: str | None = None
    last_value: float = 0.0
    last_currency: str = ""
    last_at: int | None = None
    last_channel: str = ""


@dataclass(slots=True)
class JourneyState:
    key: str
    customer_id: str | None = None
    stage: str | None = None
    stage_entered_at: int = 0
    history: list[StageVisit] = field(default_factory=list)
    first_seen: int | None = None
    last_seen: int | None = None
    events: int = 0
    counts_by_channel: dict[str, int] = field(default_factory=dict)
    counts_by_type: dict[str, int] = field(default_factory=dict)
    cart: Cart | None = None
    checkout: Checkout | None = None
    orders: Orders = field(default_factory=Orders)
    email_opt_out: bool = False
    email_opt_out_at: int | None = None
    timezone: str | None = None
    first_name: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    loyalty_ids: list[str] = field(default_factory=list)
    viewed: dict[str, int] = field(default_factory=dict)
    last_store: str | None = None
    late_events: int = 0
    merged_from: list[str] = field(default_factory=list)
    merged_into: str | None = None
    waits: dict[str, Wait] = field(default_factory=dict)
    session: Session | None = None
    #: Abandonments fired and not yet recovered: rule -> deadline.
    abandoned: dict[str, int] = field(default_factory=dict)
    abandonments: int = 0
    recoveries: int = 0
    #: Identity links sent and not yet answered: alias -> wall ms (stream shell only).
    awaiting: dict[str, int] = field(default_factory=dict)
    #: Aliases whose links were answered (stream shell only).
    linked: list[str] = field(default_factory=list)
    settled_until: int = 0
    seen_ids: list[str] = field(default_factory=list)
    #: An orphan journey's settled events, replayed when it merges into a customer's.
    journal: list[Touchpoint] = field(default_factory=list)
    journal_truncated: bool = False
    pending: list[Touchpoint] = field(default_factory=list)
    #: The stage visit in progress (None: visits not kept, or the last one ended).
    visit: OpenVisit | None = None
    #: The latest value of the analytics segment dimension seen on the journey.
    segment_value: str | None = None
    #: Visit effects published so far (stream shell only: numbers them for de-duplication).
    visit_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "customer_id": self.customer_id,
            "stage": self.stage,
            "stage_entered_at": self.stage_entered_at,
            "history": [
                {
                    "stage": v.stage,
                    "entered_at": v.entered_at,
                    "left_at": v.left_at,
                    "cause": v.cause,
                }
                for v in self.history
            ],
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "events": self.events,
            "counts_by_channel": self.counts_by_channel,
            "counts_by_type": self.counts_by_type,
            "cart": None
            if self.cart is None
            else {
                "cart_id": self.cart.cart_id,
                "items": [
                    {"sku": i.sku, "name": i.name, "price": i.price, "quantity": i.quantity}
                    for i in self.cart.items.values()
                ],
                "value": self.cart.value,
                "currency": self.cart.currency,
                "updated_at": self.cart.updated_at,
            },
            "checkout": None
            if self.checkout is None
            else {
                "started_at": self.checkout.started_at,
                "cart_id": self.checkout.cart_id,
                "event_id": self.checkout.event_id,
            },
            "orders": {
                "count": self.orders.count,
                "total_value": self.orders.total_value,
                "returns": self.orders.returns,
                "returned_value": self.orders.returned_value,
                "last_order_id": self.orders.last_order_id,
                "last_value": self.orders.last_value,
                "last_currency": self.orders.last_currency,
                "last_at": self.orders.last_at,
                "last_channel": self.orders.last_channel,
            },
            "email_opt_out": self.email_opt_out,
            "email_opt_out_at": self.email_opt_out_at,
            "timezone": self.timezone,
            "first_name": self.first_name,
            "anonymous_ids": self.anonymous_ids,
            "emails": self.emails,
            "loyalty_ids": self.loyalty_ids,
            "viewed": self.viewed,
            "last_store": self.last_store,
            "late_events": self.late_events,
            "merged_from": self.merged_from,
            "merged_into": self.merged_into,
            "waits": {
                name: {
                    "rule": w.rule,
                    "ref": w.ref,
                    "started_at": w.started_at,
                    "deadline": w.deadline,
                    "cause_event_id": w.cause_event_id,
                }
                for name, w in self.waits.items()
            },
            "session": None
            if self.session is None
            else {
                "ref": self.session.ref,
                "started_at": self.session.started_at,
                "last_at": self.session.last_at,
                "session_id": self.session.session_id,
                "counts": self.session.counts,
                "fired": self.session.fired,
            },
            "abandoned": self.abandoned,
            "abandonments": self.abandonments,
            "recoveries": self.recoveries,
            "awaiting": self.awaiting,
            "linked": self.linked,
            "settled_until": self.settled_until,
            "seen_ids": self.seen_ids,
            "pending": [tp.to_dict() for tp in self.pending],
            "journal": [tp.to_dict() for tp in self.journal],
            "journal_truncated": self.journal_truncated,
            "visit": None if self.visit is None else self.visit.to_dict(),
            "segment_value": self.segment_value,
            "visit_seq": self.visit_seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JourneyState:
        cart = d.get("cart")
        checkout = d.get("checkout")
        session = d.get("session")
        visit = d.get("visit")
        return cls(
            key=d["key"],
            customer_id=d.get("customer_id"),
            stage=d.get("stage"),
            stage_entered_at=d.get("stage_entered_at", 0),
            history=[StageVisit(**v) for v in d.get("history", ())],
            first_seen=d.get("first_seen"),
            last_seen=d.get("last_seen"),
            events=d.get("events", 0),
            counts_by_channel=d.get("counts_by_channel", {}),
            counts_by_type=d.get("counts_by_type", {}),
            cart=None
            if cart is None
            else Cart(
                cart_id=cart["cart_id"],
                items={i["sku"]: CartItem(**i) for i in cart["items"]},
                currency=cart.get("currency", ""),
                updated_at=cart.get("updated_at", 0),
            ),
            checkout=None if checkout is None else Checkout(**checkout),
            orders=Orders(**d.get("orders", {})),
            email_opt_out=d.get("email_opt_out", False),
            email_opt_out_at=d.get("email_opt_out_at"),
            timezone=d.get("timezone"),
            first_name=d.get("first_name"),
            anonymous_ids=d.get("anonymous_ids", []),
            emails=d.get("emails", []),
            loyalty_ids=d.get("loyalty_ids", []),
            viewed=d.get("viewed", {}),
            last_store=d.get("last_store"),
            late_events=d.get("late_events", 0),
            merged_from=d.get("merged_from", []),
            merged_into=d.get("merged_into"),
            waits={name: Wait(**w) for name, w in (d.get("waits") or {}).items()},
            session=None if session is None else Session(**session),
            abandoned=d.get("abandoned") or {},
            abandonments=d.get("abandonments", 0),
            recoveries=d.get("recoveries", 0),
            awaiting=d.get("awaiting") or {},
            linked=d.get("linked") or [],
            settled_until=d.get("settled_until", 0),
            seen_ids=d.get("seen_ids", []),
            pending=[from_trusted(p) for p in d.get("pending", ())],
            journal=[from_trusted(p) for p in d.get("journal", ())],
            journal_truncated=d.get("journal_truncated", False),
            # States stored before visits were kept have neither: they load as none.
            visit=None if visit is None else OpenVisit.from_dict(visit),
            segment_value=d.get("segment_value"),
            visit_seq=int(d.get("visit_seq", 0)),
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def loads(cls, raw: bytes) -> JourneyState:
        return cls.from_dict(orjson.loads(raw))

    def summary(self) -> dict[str, Any]:
        """The settled, public view (no pending buffer, no dedupe bookkeeping)."""
        d = self.to_dict()
        for private in (
            "seen_ids",
            "pending",
            "awaiting",
            "linked",
            "journal",
            "journal_truncated",
            "visit_seq",
        ):
            d.pop(private)
        d["pending_events"] = len(self.pending)
        return d
