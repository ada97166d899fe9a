"""Conversion attribution in event time (pure): decided follow-ups, purchases, records.

Per journey key (a customer after identity resolution):

- A *decided* trigger (outcome ``sent``: treated, or ``held_out``: control)
  opens a conversion window ``(start, start + window]``. ``start`` is the
  trigger's ``deadline``: the event-time moment it fired, fixed by the journey
  rules, so a replay or a re-delivery opens the very same window whatever the
  wall clock or the dispatcher's delays (quiet hours hold treated and control
  alike). The window is open on the left: the purchase that caused a stage
  follow-up does not convert it.
- A purchase (``PURCHASE_TYPES``, any channel) inside a window converts it.
  Each order's revenue goes to one window only, the most recent decided window
  containing it (last touch: latest start, ties by trigger id); every window
  containing an order still records that its customer converted.
- A window closes once the watermark passes its end plus ``grace_ms``, the time
  a decision may take to arrive after its trigger's deadline (quiet hours,
  dispatcher lag). Its :class:`Conversion` is emitted then, once: records do
  not depend on the arrival order of triggers, outcomes and purchases as long
  as purchases arrive within the allowed lateness (the watermark) and
  decisions within the grace. A decision later than that still gets its
  record, decided from the purchases kept, but an order already credited to a
  closed window keeps its credit.

Triggers (with the deadline) and outcomes (with the decision) come on
different topics and are joined here by trigger id, in either order.
Everything is bounded per key: purchases kept, triggers and decisions waiting
for each other, ids of closed windows kept to drop re-deliveries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream import contract
from stream.contract import Touchpoint
from stream.dispatch.facts import PURCHASE_TYPES
from stream.dispatch.outcomes import FINAL, HELD_OUT, SENT
from stream.journey.linking import MERGE_IN
from stream.settings import Settings

TREATED = "treated"
CONTROL = "control"
#: The arm of a decided trigger, by its outcome.
ARMS: Mapping[str, str] = {SENT: TREATED, HELD_OUT: CONTROL}
#: Outcomes after which a trigger is never decided: it opens no window.
UNDECIDED = FINAL - ARMS.keys()


def conversion_id(trigger_id: str) -> str:
    """The deterministic id of a trigger's one conversion record."""
    return hashlib.sha256(f"conversion\x1f{trigger_id}".encode()).hexdigest()[:32]


def order_cents(props: Mapping[str, Any]) -> int:
    """An order's value in minor units (``value``, ``total``, ``revenue``, else its lines).

    Integers, so revenue sums are exact and merge in any order.
    """
    for name in ("value", "total", "revenue"):
        v = props.get(name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return round(v * 100)
    total = 0.0
    for item in props.get("products") or props.get("items") or ():
        if isinstance(item, Mapping):
            price, qty = item.get("price", 0), item.get("quantity", 1)
            if isinstance(price, int | float) and isinstance(qty, int | float):
                total += price * qty
    return round(total * 100)


def purchases_in(tp: Touchpoint) -> list[Touchpoint]:
    """The purchases a touchpoint of ``touchpoints.resolved`` brings its journey.

    A purchase itself; an orphan journey's answer to an identity merge
    (``merge_in``) brings the purchases it kept (settled and pending), made
    under the alias (a loyalty card in store) before the link was known.
    """
    if tp.type in PURCHASE_TYPES:
        return [tp]
    if tp.type != MERGE_IN or tp.source != contract.INTERNAL_SOURCE:
        return []
    state = tp.properties.get("state")
    if not isinstance(state, Mapping):
        return []
    out = []
    for name in ("journal", "pending"):
        for d in state.get(name) or ():
            if isinstance(d, Mapping) and d.get("type") in PURCHASE_TYPES:
                out.append(contract.from_trusted(d))
    return out


@dataclass(frozen=True, slots=True)
class Policy:
    """How long windows are and how long things are kept (event-time ms)."""

    window_ms: int = 7 * 86_400_000
    grace_ms: int = 86_400_000
    #: A rule's own window (``attribution_window_s`` on the rule), by rule name.
    rule_windows: Mapping[str, int] = field(default_factory=dict)
    max_purchases: int = 100
    max_waiting: int = 256

    def window_of(self, rule: str) -> int:
        return self.rule_windows.get(rule, self.window_ms)

    @property
    def max_window_ms(self) -> int:
        return max((self.window_ms, *self.rule_windows.values()))


@dataclass(slots=True)
class Window:
    trigger_id: str
    rule: str
    outcome: str
    start: int
    end: int


@dataclass(slots=True)
class Purchase:
    event_id: str
    at: int
    cents: int
    currency: str
    order_id: str
    #: The trigger whose closed window took this order's revenue.
    credited: str | None = None


@dataclass(frozen=True, slots=True)
class Conversion:
    """The one record of a decided trigger (``journey.conversions``)."""

    conversion_id: str
    trigger_id: str
    rule: str
    journey_key: str | None
    arm: str
    outcome: str
    decided_at: int
    window_end: int
    converted: bool
    converted_at: int | None
    order_id: str | None
    #: Orders credited to this window (last touch), their value in minor units.
    orders: int
    revenue_cents: int
    currency: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "conversion_id": self.conversion_id,
            "trigger_id": self.trigger_id,
            "rule": self.rule,
            "journey_key": self.journey_key,
            "arm": self.arm,
            "outcome": self.outcome,
            "decided_at": self.decided_at,
            "window_end": self.window_end,
            "converted": self.converted,
            "converted_at": self.converted_at,
            "order_id": self.order_id,
            "orders": self.orders,
            "revenue": self.revenue_cents / 100,
            "revenue_cents": self.revenue_cents,
            "currency": self.currency,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Conversion:
        return cls(
            conversion_id=str(d["conversion_id"]),
            trigger_id=str(d["trigger_id"]),
            rule=str(d["rule"]),
            journey_key=d.get("journey_key"),
            arm=str(d["arm"]),
            outcome=str(d["outcome"]),
            decided_at=int(d["decided_at"]),
            window_end=int(d["window_end"]),
            converted=bool(d["converted"]),
            converted_at=d.get("converted_at"),
            order_id=d.get("order_id"),
            orders=int(d.get("orders", 0)),
            revenue_cents=int(d["revenue_cents"]),
            currency=str(d.get("currency", "")),
        )


@dataclass
class Attribution:
    """One journey key's attribution state (what the ``attribution`` table holds)."""

    key: str
    #: Triggers waiting for their decision: id -> (rule, deadline).
    triggers: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Decisions waiting for their trigger: id -> (rule, outcome, forget at).
    decisions: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    #: Recent purchases, by (event time, event id).
    purchases: list[Purchase] = field(default_factory=list)
    #: Closed windows' trigger ids -> event time to forget them at.
    closed: dict[str, int] = field(default_factory=dict)
    erased: bool = False

    @property
    def empty(self) -> bool:
        return not (self.triggers or self.decisions or self.windows or self.purchases) and not (
            self.closed
        )

    # -- inputs ---------------------------------------------------------------
    def on_trigger(self, trigger_id: str, rule: str, deadline: int, p: Policy) -> None:
        """A trigger was emitted (``journey.triggers``)."""
        if trigger_id in self.closed or trigger_id in self.windows:
            return
        decision = self.decisions.pop(trigger_id, None)
        if decision is not None:
            self._open(trigger_id, rule, decision[1], deadline, p)
            return
        self.triggers[trigger_id] = (rule, deadline)
        _bound(self.triggers, p.max_waiting)

    def on_outcome(self, trigger_id: str, rule: str, outcome: str, at: int, p: Policy) -> None:
        """The dispatcher decided a trigger (``journey.dispatch``) at wall-clock ``at``."""
        if outcome in UNDECIDED:
            self.triggers.pop(trigger_id, None)
            return
        if outcome not in ARMS or trigger_id in self.closed or trigger_id in self.windows:
            return
        waiting = self.triggers.pop(trigger_id, None)
        if waiting is not None:
            self._open(trigger_id, waiting[0], outcome, waiting[1], p)
            return
        # A trigger fires once the watermark passes its deadline, so its deadline is
        # before the decision's wall time: past that plus every window and grace, the
        # trigger is not coming.
        forget = at + p.max_window_ms + 2 * p.grace_ms
        self.decisions[trigger_id] = (rule, outcome, forget)
        _bound(self.decisions, p.max_waiting)

    def on_purchase(self, tp: Touchpoint, p: Policy) -> None:
        """A purchase touchpoint of this journey (any channel); duplicates are ignored."""
        if tp.type not in PURCHASE_TYPES or self.erased:
            return
        if any(b.event_id == tp.event_id for b in self.purchases):
            return
        props = tp.properties
        self.purchases.append(
            Purchase(
                event_id=tp.event_id,
                at=tp.timestamp,
                cents=order_cents(props),
                currency=str(props.get("currency") or ""),
                order_id=str(props.get("order_id") or tp.event_id),
            )
        )
        self.purchases.sort(key=lambda b: (b.at, b.event_id))
        if len(self.purchases) > p.max_purchases:
            del self.purchases[: len(self.purchases) - p.max_purchases]

    def erase(self) -> None:
        """The customer was erased: forget their orders; windows still close, anonymously."""
        self.purchases.clear()
        self.erased = True

    def _open(self, trigger_id: str, rule: str, outcome: str, start: int, p: Policy) -> None:
        self.windows[trigger_id] = Window(
            trigger_id, rule, outcome, start, start + p.window_of(rule)
        )

    # -- the watermark ----------------------------------------------------------
    def advance(self, wm: int, p: Policy) -> list[Conversion]:
        """Close the windows ``wm`` passed (end + grace), oldest first; forget what is old."""
        due = sorted(
            (w for w in self.windows.values() if w.end + p.grace_ms <= wm),
            key=lambda w: (w.end, w.start, w.trigger_id),
        )
        out = [self._close(w, p) for w in due]
        horizon = p.max_window_ms + p.grace_ms
        self.purchases = [b for b in self.purchases if b.at + horizon > wm]
        self.closed = {t: at for t, at in self.closed.items() if at > wm}
        self.triggers = {
            t: (rule, deadline)
            for t, (rule, deadline) in self.triggers.items()
            if deadline + p.window_of(rule) + 2 * p.grace_ms > wm
        }
        self.decisions = {t: d for t, d in self.decisions.items() if d[2] > wm}
        return out

    def _close(self, w: Window, p: Policy) -> Conversion:
        del self.windows[w.trigger_id]
        self.closed[w.trigger_id] = w.end + 2 * p.grace_ms
        inside = [b for b in self.purchases if w.start < b.at <= w.end]
        mine = (w.start, w.trigger_id)
        credited = []
        for b in inside:
            if b.credited is not None:
                continue
            newer = any(
                (o.start, o.trigger_id) > mine and o.start < b.at <= o.end
                for o in self.windows.values()
            )
            if not newer:
                b.credited = w.trigger_id
                credited.append(b)
        first = inside[0] if inside else None
        currency = credited[0].currency if credited else (first.currency if first else "")
        return Conversion(
            conversion_id=conversion_id(w.trigger_id),
            trigger_id=w.trigger_id,
            rule=w.rule,
            journey_key=None if self.erased else self.key,
            arm=ARMS[w.outcome],
            outcome=w.outcome,
            decided_at=w.start,
            window_end=w.end,
            converted=first is not None,
            converted_at=first.at if first else None,
            order_id=first.order_id if first else None,
            orders=len(credited),
            revenue_cents=sum(b.cents for b in credited),
            currency=currency,
        )

    def next_due(self, p: Policy) -> int | None:
        """The watermark at which this state next changes by itself (None: never)."""
        times = [w.end + p.grace_ms for w in self.windows.values()]
        horizon = p.max_window_ms + p.grace_ms
        times += [b.at + horizon for b in self.purchases]
        times += list(self.closed.values())
        times += [d + p.window_of(r) + 2 * p.grace_ms for r, d in self.triggers.values()]
        times += [d[2] for d in self.decisions.values()]
        return min(times) if times else None

    # -- (de)serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "triggers": {t: list(v) for t, v in self.triggers.items()},
            "decisions": {t: list(v) for t, v in self.decisions.items()},
            "windows": [
                [w.trigger_id, w.rule, w.outcome, w.start, w.end] for w in self.windows.values()
            ],
            "purchases": [
                [b.event_id, b.at, b.cents, b.currency, b.order_id, b.credited]
                for b in self.purchases
            ],
            "closed": self.closed,
            "erased": self.erased,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attribution:
        return cls(
            key=str(d["key"]),
            triggers={t: (str(v[0]), int(v[1])) for t, v in d.get("triggers", {}).items()},
            decisions={
                t: (str(v[0]), str(v[1]), int(v[2])) for t, v in d.get("decisions", {}).items()
            },
            windows={w[0]: Window(w[0], w[1], w[2], int(w[3]), int(w[4])) for w in d["windows"]},
            purchases=[Purchase(*b) for b in d.get("purchases", ())],
            closed={t: int(at) for t, at in d.get("closed", {}).items()},
            erased=bool(d.get("erased", False)),
        )


def _bound(waiting: dict[str, Any], limit: int) -> None:
    """Drop the oldest entries (insertion order) past ``limit``."""
    while len(waiting) > limit:
        del waiting[next(iter(waiting))]


def rule_windows(rules: Any, default_s: float) -> dict[str, int]:
    """``attribution_window_s`` of each configured rule that sets one, in ms.

    ``rules`` are the raw ``[[journey.abandonment]]`` and ``[[journey.followups]]``
    tables; a bad value is a ``ValueError`` naming the rule.
    """
    out: dict[str, int] = {}
    for raw in rules:
        name, value = raw.get("name"), raw.get("attribution_window_s", default_s)
        if not isinstance(name, str):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3.2e7:
            raise ValueError(
                f"rule {name!r}: attribution_window_s must be a number of seconds in (0, 3.2e7]"
            )
        if value != default_s:
            out[name] = int(value * 1000)
    return out


def policy_of(settings: Settings) -> Policy:
    """The attribution policy of ``settings`` (``[attribution]`` and the rules' own windows)."""
    a = settings.attribution
    rules = (*settings.journey.abandonment, *settings.journey.followups)
    return Policy(
        window_ms=int(a.window_s * 1000),
        grace_ms=int(a.decision_grace_s * 1000),
        rule_windows=rule_windows(rules, a.window_s),
        max_purchases=a.max_purchases,
        max_waiting=a.max_waiting,
    )
