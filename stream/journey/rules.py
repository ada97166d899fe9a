"""The journey rules: pure functions over :class:`JourneyState`.

- :func:`apply` takes one touchpoint in. Events at or after the state's
  ``settled_until`` wait in ``pending`` (event-time order, ties by event id);
  older ones are *late*: counted and folded at once without rewriting history.
- :func:`advance` settles pending events up to a watermark, in order, and
  returns the stage transitions that produced. Because settling happens in
  event-time order, any arrival order within the allowed lateness gives the
  same state and the same transitions.
- :func:`merge` folds an orphan journey (anonymous, loyalty card, email) into a
  customer's, exactly once.

They return the state and its *effects*, in order: stage transitions,
follow-up triggers (abandonment deadlines
passed, configured stage follow-ups),
recovery records and, when the model keeps them, stage visits opened,
touched and closed (see :mod:`stream.journey.visits`). Carts, checkouts and
orders are kept by :mod:`stream.journey.commerce`.

Functions take ownership of the state passed in (they may change it) and
return the new state; they read no clock and do no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from stream.contract import Touchpoint
from stream.journey import abandonment, commerce, visits
from stream.journey.abandonment import Recovery
from stream.journey.stages import StageModel
from stream.journey.state import (
    JOURNAL_EVENTS,
    SEEN_IDS,
    VIEWED_PRODUCTS,
    JourneyState,
    StageVisit,
    Transition,
)
from stream.journey.visits import VisitClosed, VisitEffect, VisitOpened, VisitTouched
from stream.triggers.trigger import Trigger

LAPSE_CAUSE = "lapse"

Effect = Transition | Trigger | Recovery | VisitOpened | VisitTouched | VisitClosed


def split(
    effects: Iterable[Effect],
) -> tuple[list[Transition], list[Trigger], list[Recovery]]:
    """Transitions, triggers and recoveries, each list in the order produced.

    Visit effects are left out: :func:`visit_effects` picks them.
    """
    transitions: list[Transition] = []
    triggers: list[Trigger] = []
    recoveries: list[Recovery] = []
    for e in effects:
        if isinstance(e, Transition):
            transitions.append(e)
        elif isinstance(e, Trigger):
            triggers.append(e)
        elif isinstance(e, Recovery):
            recoveries.append(e)
    return transitions, triggers, recoveries


def visit_effects(effects: Iterable[Effect]) -> list[VisitEffect]:
    """The visits opened and closed among ``effects``, in the order produced."""
    return [e for e in effects if isinstance(e, VisitOpened | VisitTouched | VisitClosed)]


def _order(tp: Touchpoint) -> tuple[int, str]:
    return (tp.timestamp, tp.event_id)


def is_duplicate(state: JourneyState, tp: Touchpoint) -> bool:
    if tp.event_id in state.seen_ids:
        return True
    return any(p.event_id == tp.event_id for p in state.pending)


def apply(
    state: JourneyState, tp: Touchpoint, model: StageModel
) -> tuple[JourneyState, list[Effect]]:
    """Take one touchpoint in; returns transitions only for late events."""
    if is_duplicate(state, tp):
        return state, []
    if tp.timestamp <= state.settled_until:
        # Too late to be placed in order (events up to settled_until are already
        # folded, ties included): apply now, never back in time.
        state.late_events += 1
        transitions = _step(state, tp, model, at=max(tp.timestamp, state.stage_entered_at))
        _remember(state, tp.event_id)
        _journal(state, tp)
        return state, transitions
    keys = [_order(p) for p in state.pending]
    state.pending.insert(bisect.bisect_right(keys, _order(tp)), tp)
    return state, []


def advance(
    state: JourneyState, watermark: int, model: StageModel
) -> tuple[JourneyState, list[Effect]]:
    """Settle every pending event with event time <= ``watermark``.

    Time passing fires what is due before each settled event (abandonment
    deadlines strictly earlier than it, then lapse), so an event at a deadline
    still cancels it; deadlines at or before ``watermark`` fire at the end.
    """
    transitions: list[Effect] = []
    if watermark <= state.settled_until:
        return state, transitions
    pending = state.pending
    n = 0
    while n < len(pending) and pending[n].timestamp <= watermark:
        tp = pending[n]
        transitions.extend(_pass_time(state, model, before=tp.timestamp))
        transitions.extend(_step(state, tp, model, at=tp.timestamp))
        _remember(state, tp.event_id)
        _journal(state, tp)
        n += 1
    if n:
        del pending[:n]
    transitions.extend(_pass_time(state, model, before=watermark + 1))
    state.settled_until = watermark
    return state, transitions


def next_due(state: JourneyState, model: StageModel) -> int | None:
    """The smallest watermark at which :func:`advance` would change something."""
    due = [state.pending[0].timestamp] if state.pending else []
    lapse_at = _lapse_at(state, model)
    if lapse_at is not None:
        due.append(lapse_at)
    deadline = abandonment.next_deadline(state)
    if deadline is not None:
        due.append(deadline)
    if model.visits is not None:
        visit_due = visits.deadline(state, model.visits)
        if visit_due is not None:
            due.append(visit_due)
    # Anything at or before settled_until is acted on by the next advance past it.
    return max(min(due), state.settled_until + 1) if due else None


def run(
    state: JourneyState, tps: Iterable[Touchpoint], watermark: int, model: StageModel
) -> tuple[JourneyState, list[Effect]]:
    """Apply a batch of touchpoints, then advance to ``watermark``."""
    transitions: list[Effect] = []
    for tp in tps:
        state, out = apply(state, tp, model)
        transitions.extend(out)
    state, out = advance(state, watermark, model)
    transitions.extend(out)
    return state, transitions


def merge(
    into: JourneyState, other: JourneyState, alias: str, model: StageModel
) -> tuple[JourneyState, list[Effect]]:
    """Fold the orphan journey ``other`` (known as ``alias``) into ``into``, once.

    The orphan's events are replayed into the customer's journey as events: its
    settled ones from its journal (late here if the customer's journey already
    settled past them: applied without rewriting history), its pending ones in
    event-time order with the customer's own. So an in-store purchase made under
    a loyalty card before the card was linked closes the cart it belongs to.
    Only an orphan too long to keep a journal is added as totals; if it had
    reached a later stage, the customer moves there (never back in time).
    """
    if alias in into.merged_from:
        return into, []
    into.merged_from.append(alias)
    transitions: list[Effect] = []
    if model.visits is not None:
        # The orphan's open visit ends here; its events go on in the customer's.
        transitions.extend(visits.merged(other, alias))
    if other.events and (other.journal_truncated or len(other.journal) != other.events):
        if other.settled_until > into.settled_until:
            # Settle the customer's own events up to where the orphan already is,
            # so entering the orphan's stage below cannot come before them.
            into, out = advance(into, other.settled_until, model)
            transitions.extend(out)
        _merge_settled(into, other)
        abandonment.merge_waits(into, other)
        last_order = other.orders.last_at
        if last_order is not None:
            abandonment.cancel_by_purchase(into, last_order, model.playbook, model.purchase_types)
        if other.stage is not None and (
            into.stage is None or model.rank(other.stage) > model.rank(into.stage)
        ):
            at = max(other.stage_entered_at, into.stage_entered_at)
            transitions.extend(_enter(into, other.stage, at, f"merge:{alias}", model))
    elif other.events:
        for tp in other.journal:
            into, out = apply(into, tp, model)
            transitions.extend(out)
    for tp in other.pending:
        into, out = apply(into, tp, model)
        transitions.extend(out)
    return into, transitions


def _merge_settled(into: JourneyState, other: JourneyState) -> None:
    into.events += other.events
    for src, dst in (
        (other.counts_by_channel, into.counts_by_channel),
        (other.counts_by_type, into.counts_by_type),
        (other.viewed, into.viewed),
    ):
        for k, v in src.items():
            dst[k] = dst.get(k, 0) + v
    if other.first_seen is not None:
        into.first_seen = min(into.first_seen or other.first_seen, other.first_seen)
    if other.last_seen is not None:
        into.last_seen = max(into.last_seen or other.last_seen, other.last_seen)
    commerce.merge(into, other)
    if other.email_opt_out:
        into.email_opt_out = True
        into.email_opt_out_at = other.email_opt_out_at
    into.segment_value = into.segment_value or other.segment_value
    into.timezone = into.timezone or other.timezone
    into.first_name = into.first_name or other.first_name
    for src_list, dst_list in (
        (other.anonymous_ids, into.anonymous_ids),
        (other.emails, into.emails),
        (other.loyalty_ids, into.loyalty_ids),
    ):
        for ident in src_list:
            _add_unique(dst_list, ident)
    into.late_events += other.late_events
    for event_id in other.seen_ids:
        _remember(into, event_id)


def _journal(state: JourneyState, tp: Touchpoint) -> None:
    """Orphan journeys (no customer id) keep their settled events for a later merge."""
    if state.customer_id is not None or state.journal_truncated:
        return
    if len(state.journal) >= JOURNAL_EVENTS:
        state.journal = []
        state.journal_truncated = True
        return
    state.journal.append(tp)


def _remember(state: JourneyState, event_id: str) -> None:
    seen = state.seen_ids
    seen.append(event_id)
    if len(seen) > SEEN_IDS:
        del seen[: len(seen) - SEEN_IDS]


def _add_unique(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


def _enter(state: JourneyState, stage: str, at: int, cause: str, model: StageModel) -> list[Effect]:
    prev = state.stage
    at = max(at, state.stage_entered_at)  # never back in time
    if state.history:
        state.history[-1].left_at = at
    state.history.append(StageVisit(stage=stage, entered_at=at, cause=cause))
    state.stage = stage
    state.stage_entered_at = at
    transition = Transition(state.customer_id or state.key, prev, stage, at, cause)
    out: list[Effect] = [transition]
    if model.playbook.followups:
        out.extend(abandonment.stage_followups(state, transition, model.playbook))
    if model.visits is not None:
        out.extend(visits.enter(state, prev, stage, at, cause, model))
    return out


def _pass_time(state: JourneyState, model: StageModel, before: int) -> list[Effect]:
    out: list[Effect] = []
    if state.waits:
        out.extend(abandonment.fire_due(state, before, model.playbook))
    if model.visits is None:
        out.extend(_maybe_lapse(state, model, before))
        return out
    # In event-time order: a visit window ending at or before a lapse drops the
    # visit first; a lapse before it ends the visit itself (and opens one in the
    # lapse stage, whose window may end before ``before`` too).
    lapse_at = _lapse_at(state, model)
    first = before if lapse_at is None else min(before, lapse_at + 1)
    out.extend(visits.expire(state, model.visits, first))
    out.extend(_maybe_lapse(state, model, before))
    out.extend(visits.expire(state, model.visits, before))
    return out


def _lapse_at(state: JourneyState, model: StageModel) -> int | None:
    if model.lapse_stage is None or state.stage not in model.lapse_from or state.last_seen is None:
        return None
    return state.last_seen + model.lapse_after_ms


def _maybe_lapse(state: JourneyState, model: StageModel, before: int) -> list[Effect]:
    at = _lapse_at(state, model)
    if at is None or at >= before:
        return []
    assert model.lapse_stage is not None
    return _enter(state, model.lapse_stage, max(at, state.stage_entered_at), LAPSE_CAUSE, model)


def _target_stage(state: JourneyState, tp: Touchpoint, model: StageModel) -> str | None:
    target = model.stage_for(tp)
    loyalty = model.loyalty_stage
    if loyalty is None:
        return target
    last_order_at = state.orders.last_at
    if target == model.purchase_stage and tp.type in model.purchase_types:
        if (
            last_order_at is not None
            and state.orders.count > 0
            and tp.timestamp - last_order_at <= model.repeat_purchase_within_ms
        ):
            return loyalty
    elif (
        tp.type in model.engagement_types
        and state.stage == model.purchase_stage
        and last_order_at is not None
        and tp.timestamp - last_order_at <= model.engagement_within_ms
    ):
        return loyalty
    return target


def _allowed(state: JourneyState, target: str, model: StageModel) -> bool:
    current = state.stage
    if current is None or current == model.lapse_stage:
        return True
    if target == current:
        return False
    rank_t, rank_c = model.rank(target), model.rank(current)
    if rank_t > rank_c:
        return True
    if model.allow_regression:
        return True
    return (
        model.new_cycle_after_purchase
        and current == model.purchase_stage
        and 0 < rank_t < model.rank(model.purchase_stage)
    )


def _step(state: JourneyState, tp: Touchpoint, model: StageModel, at: int) -> list[Effect]:
    """Fold one settled event into the state, in order."""
    target = _target_stage(state, tp, model)
    _record(state, tp)
    if model.visits is not None:
        visits.note_segment(state, tp, model.visits)
    out: list[Effect] = []
    if model.playbook.abandonment:
        out.extend(abandonment.observe(state, tp, model.playbook, model.purchase_types))
    if state.stage is None and target is None:
        target = model.initial
    if target is not None and _allowed(state, target, model):
        out.extend(_enter(state, target, at, tp.event_id, model))
    if model.visits is not None:
        out.extend(visits.touch(state, tp, at, model.visits))
    return out


def _record(state: JourneyState, tp: Touchpoint) -> None:
    """Counters, identifiers, cart, orders, consent: everything but the stage."""
    ts = tp.timestamp
    props = tp.properties
    state.events += 1
    state.counts_by_channel[tp.channel] = state.counts_by_channel.get(tp.channel, 0) + 1
    state.counts_by_type[tp.type] = state.counts_by_type.get(tp.type, 0) + 1
    state.first_seen = ts if state.first_seen is None else min(state.first_seen, ts)
    state.last_seen = ts if state.last_seen is None else max(state.last_seen, ts)
    if tp.customer_id and state.customer_id is None:
        state.customer_id = tp.customer_id
    if tp.anonymous_id:
        _add_unique(state.anonymous_ids, tp.anonymous_id)
    email = props.get("email")
    if isinstance(email, str) and "@" in email:
        _add_unique(state.emails, email.strip().lower())
    loyalty = props.get("loyalty_id")
    if isinstance(loyalty, str) and loyalty:
        _add_unique(state.loyalty_ids, loyalty)
    first_name = props.get("first_name")
    if isinstance(first_name, str) and first_name:
        state.first_name = first_name
    tz = tp.context.get("timezone") or props.get("timezone")
    if isinstance(tz, str) and tz:
        state.timezone = tz
    store = props.get("store_id")
    if isinstance(store, str) and store and tp.channel == "pos":
        state.last_store = store
    handler = _HANDLERS.get(tp.type)
    if handler is not None:
        handler(state, tp)


def _on_unsubscribe(state: JourneyState, tp: Touchpoint) -> None:
    state.email_opt_out = True
    state.email_opt_out_at = tp.timestamp


def _on_view(state: JourneyState, tp: Touchpoint) -> None:
    sku = tp.properties.get("sku") or tp.properties.get("product_id")
    if not sku:
        return
    viewed = state.viewed
    sku = str(sku)
    viewed[sku] = viewed.get(sku, 0) + 1
    if len(viewed) > VIEWED_PRODUCTS:
        least = min(viewed, key=lambda k: viewed[k])
        del viewed[least]


_HANDLERS = {
    **commerce.HANDLERS,
    "unsubscribe": _on_unsubscribe,
    "product_view": _on_view,
}
