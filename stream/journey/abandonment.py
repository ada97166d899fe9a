"""Abandonment waits and follow-up triggers: pure functions over JourneyState.

The journey rules call these for every *settled* event, in event-time order
(:func:`observe`), and whenever event time passes (:func:`fire_due`), so a
wait fires only once the watermark has passed its deadline with no cancelling
event at or before it: a purchase in the backlog always wins over the email.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from stream.contract import Touchpoint
from stream.journey.state import JourneyState, Session, Transition, Wait
from stream.triggers.playbook import AbandonmentRule, Playbook
from stream.triggers.trigger import (
    ABANDONMENT,
    TRANSITION,
    Trigger,
    TriggerItem,
    trigger_id,
)

#: Channels whose events make up a browsing session.
SESSION_CHANNELS = frozenset({"web", "app"})
TOP_PRODUCTS = 3


@dataclass(frozen=True, slots=True)
class Recovery:
    """A purchase after an abandonment of ``kind`` (for recovery-rate metrics)."""

    kind: str
    journey_key: str
    at: int


def observe(
    state: JourneyState, tp: Touchpoint, playbook: Playbook, purchase_types: Collection[str]
) -> list[Recovery]:
    """Update sessions and waits after ``tp`` was folded into ``state``."""
    out: list[Recovery] = []
    if not playbook.abandonment:
        return out
    if tp.type in purchase_types and state.abandoned:
        for kind, deadline in sorted(state.abandoned.items()):
            if tp.timestamp - deadline <= playbook.recovery_within_ms:
                state.recoveries += 1
                out.append(Recovery(kind, state.key, tp.timestamp))
        state.abandoned = {}
    session = _track_session(state, tp, playbook)
    for rule in playbook.abandonment:
        wait = state.waits.get(rule.name)
        counted = False
        if rule.requires == "session_views" and session is not None and tp.type in rule.start:
            session.counts[rule.name] = session.counts.get(rule.name, 0) + 1
            counted = True
        if tp.type in rule.cancel or (wait is not None and not _holds(rule, state, wait)):
            if wait is not None:
                del state.waits[rule.name]
            if (
                rule.requires == "session_views"
                and session is not None
                and rule.name not in session.fired
            ):
                # A session that reached a cancelling event sends no browse email.
                session.fired.append(rule.name)
            continue
        ref = _ref(rule, state)
        starts = tp.type in rule.start and (counted or rule.requires != "session_views")
        if starts and ref is not None and (wait is None or wait.ref != ref):
            state.waits[rule.name] = Wait(
                rule=rule.name,
                ref=ref,
                started_at=tp.timestamp,
                deadline=tp.timestamp + rule.wait_ms,
                cause_event_id=tp.event_id,
            )
            continue
        if wait is not None and tp.type in rule.restart and wait.ref == _current_ref(rule, state):
            wait.deadline = max(wait.deadline, tp.timestamp + rule.wait_ms)
            wait.cause_event_id = tp.event_id
            wait.started_at = max(wait.started_at, tp.timestamp)
    return out


def next_deadline(state: JourneyState) -> int | None:
    return min((w.deadline for w in state.waits.values()), default=None)


def fire_due(state: JourneyState, before: int, playbook: Playbook) -> list[Trigger]:
    """Fire every wait whose deadline is earlier than ``before``, in deadline order."""
    if not state.waits:
        return []
    due = sorted(
        (w for w in state.waits.values() if w.deadline < before),
        key=lambda w: (w.deadline, w.rule),
    )
    rules = {r.name: r for r in playbook.abandonment}
    out = []
    for wait in due:
        del state.waits[wait.rule]
        rule = rules.get(wait.rule)
        if rule is None:  # the rule was removed from config since the wait opened
            continue
        state.abandoned[rule.name] = wait.deadline
        state.abandonments += 1
        if state.session is not None and state.session.ref == wait.ref:
            state.session.fired.append(rule.name)
        out.append(_abandonment_trigger(state, rule, wait))
    return out


def stage_followups(
    state: JourneyState, transition: Transition, playbook: Playbook
) -> list[Trigger]:
    """Follow-ups configured for entering ``transition.to_stage`` (just recorded)."""
    out = []
    for f in playbook.followups:
        if f.to_stage != transition.to_stage:
            continue
        if f.first_time and sum(1 for v in state.history if v.stage == f.to_stage) > 1:
            continue
        out.append(
            _trigger(
                state,
                rule=f.name,
                kind=TRANSITION,
                template=f.template,
                ref=f"{transition.from_stage or ''}>{transition.to_stage}",
                deadline=transition.at,
                event_at=transition.at,
                cause_event_id=transition.cause_event_id,
                with_cart=False,
            )
        )
    return out


def merge_waits(into: JourneyState, other: JourneyState) -> None:
    """Carry an orphan journey's open waits and abandonments over (latest wins)."""
    for name, wait in other.waits.items():
        mine = into.waits.get(name)
        if mine is None or wait.deadline > mine.deadline:
            into.waits[name] = wait
    for kind, deadline in other.abandoned.items():
        into.abandoned[kind] = max(deadline, into.abandoned.get(kind, deadline))
    into.abandonments += other.abandonments
    into.recoveries += other.recoveries


def cancel_by_purchase(
    state: JourneyState, at: int, playbook: Playbook, purchase_types: Collection[str]
) -> None:
    """Close open waits a purchase at ``at`` cancels (it fell before their deadline)."""
    for rule in playbook.abandonment:
        wait = state.waits.get(rule.name)
        if wait is not None and rule.cancel & set(purchase_types) and at <= wait.deadline:
            del state.waits[rule.name]


def _track_session(state: JourneyState, tp: Touchpoint, playbook: Playbook) -> Session | None:
    if tp.channel not in SESSION_CHANNELS:
        return None
    raw_id = tp.properties.get("session_id") or tp.context.get("session_id")
    sid = str(raw_id) if raw_id else None
    session = state.session
    if (
        session is None
        or (sid is not None and sid != session.session_id)
        or tp.timestamp - session.last_at > playbook.session_gap_ms
    ):
        session = Session(
            ref=f"session:{tp.event_id}",
            started_at=tp.timestamp,
            last_at=tp.timestamp,
            session_id=sid,
        )
        state.session = session
    else:
        session.last_at = max(session.last_at, tp.timestamp)
    return session


def _holds(rule: AbandonmentRule, state: JourneyState, wait: Wait) -> bool:
    """Whether an open wait still stands (an emptied cart or closed checkout ends it)."""
    if rule.requires == "cart":
        return state.cart is not None
    if rule.requires == "checkout":
        return state.checkout is not None
    return True


def _current_ref(rule: AbandonmentRule, state: JourneyState) -> str | None:
    """The cart, checkout or session the customer is in now."""
    if rule.requires == "cart":
        return state.cart.cart_id if state.cart is not None else None
    if rule.requires == "checkout":
        return f"checkout:{state.checkout.event_id}" if state.checkout is not None else None
    return state.session.ref if state.session is not None else None


def _ref(rule: AbandonmentRule, state: JourneyState) -> str | None:
    """What the wait is about, or None when the rule cannot start now."""
    if rule.requires == "cart":
        return state.cart.cart_id if state.cart is not None else None
    if rule.requires == "checkout":
        if state.checkout is None:
            return None
        return f"checkout:{state.checkout.event_id}"
    session = state.session
    if (
        session is None
        or rule.name in session.fired
        or session.counts.get(rule.name, 0) < rule.min_count
    ):
        return None
    return session.ref


def _abandonment_trigger(state: JourneyState, rule: AbandonmentRule, wait: Wait) -> Trigger:
    return _trigger(
        state,
        rule=rule.name,
        kind=ABANDONMENT,
        template=rule.template,
        ref=wait.ref,
        deadline=wait.deadline,
        event_at=wait.started_at,
        cause_event_id=wait.cause_event_id,
        with_cart=rule.requires in ("cart", "checkout"),
    )


def _trigger(
    state: JourneyState,
    *,
    rule: str,
    kind: str,
    template: str,
    ref: str,
    deadline: int,
    event_at: int,
    cause_event_id: str,
    with_cart: bool,
) -> Trigger:
    cart = state.cart if with_cart else None
    viewed = sorted(state.viewed.items(), key=lambda kv: (-kv[1], kv[0]))
    return Trigger(
        trigger_id=trigger_id(state.key, rule, ref, deadline),
        rule=rule,
        kind=kind,
        template=template,
        journey_key=state.key,
        customer_id=state.customer_id,
        email=state.emails[-1] if state.emails else None,
        stage=state.stage,
        deadline=deadline,
        event_at=event_at,
        ref=ref,
        cause_event_id=cause_event_id,
        cart_id=cart.cart_id if cart is not None else None,
        items=tuple(
            TriggerItem(sku=i.sku, name=i.name, price=i.price, quantity=i.quantity)
            for i in cart.items.values()
        )
        if cart is not None
        else (),
        value=cart.value if cart is not None else 0.0,
        currency=cart.currency if cart is not None else "",
        first_name=state.first_name,
        top_products=tuple(sku for sku, _ in viewed[:TOP_PRODUCTS]),
        last_store=state.last_store,
        timezone=state.timezone,
    )
