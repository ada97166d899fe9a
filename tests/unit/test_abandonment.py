"""Abandonment waits and follow-up triggers: start, cancel, restart, fire, ids, ordering."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import Touchpoint
from stream.journey import rules
from stream.journey.abandonment import Recovery
from stream.journey.model import journey_model
from stream.journey.stages import with_playbook
from stream.journey.state import JourneyState
from stream.settings import DEFAULT_ABANDONMENT, DEFAULT_FOLLOWUPS, load_settings
from stream.triggers.playbook import parse_playbook
from stream.triggers.trigger import ABANDONMENT, TRANSITION, Trigger, trigger_id
from tests.builders import touchpoint

MODEL = journey_model(load_settings(environ={}))
STDC = journey_model(load_settings(environ={}), "see-think-do-care")

T0 = 1_700_000_000_000
MIN = 60_000
HOUR = 60 * MIN
END = 2**62
KEY = "c-1"


#: A touchpoint of the test journey, in Paris time (see tests.builders.touchpoint).
ev = partial(touchpoint, customer=KEY, context={"timezone": "Europe/Paris"})


def add(event_id: str, at: int, sku: str = "S1", price: float = 10.0, qty: int = 1) -> Touchpoint:
    return ev(
        event_id,
        "add_to_cart",
        at,
        sku=sku,
        name=f"Item {sku}",
        price=price,
        quantity=qty,
        cart_id="cart-1",
        currency="EUR",
    )


def run(events: Iterable[Touchpoint], until: int = END, model=MODEL) -> tuple[JourneyState, list]:
    state = JourneyState(key=KEY)
    return rules.run(state, list(events), until, model)


def triggers(effects: list) -> list[Trigger]:
    return rules.split(effects)[1]


def fired(effects: list) -> list[tuple[str, int]]:
    return [(t.rule, t.deadline) for t in triggers(effects) if t.kind == ABANDONMENT]


IDENTIFY = ev("id", "identify", T0 - HOUR, email="Ana@Example.com", first_name="Ana")


# -- cart ----------------------------------------------------------------


def test_cart_abandoned_fires_once_at_the_deadline_with_the_cart() -> None:
    events = [IDENTIFY, add("a1", T0, "S1", 10.0, 2), add("a2", T0 + 5 * MIN, "S2", 5.5)]
    deadline = T0 + 5 * MIN + 30 * MIN
    state, out = run(events, until=deadline - 1)
    assert fired(out) == []
    state, out = rules.advance(state, deadline, MODEL)
    [t] = triggers(out)
    assert (t.rule, t.kind, t.template, t.deadline) == (
        "cart",
        ABANDONMENT,
        "cart_abandoned",
        deadline,
    )
    assert t.email == "ana@example.com" and t.first_name == "Ana"
    assert t.timezone == "Europe/Paris" and t.stage == "decision"
    assert t.cart_id == "cart-1" and t.currency == "EUR" and t.value == 25.5
    assert [(i.sku, i.quantity, i.price) for i in t.items] == [("S1", 2, 10.0), ("S2", 1, 5.5)]
    assert t.event_at == T0 + 5 * MIN and t.cause_event_id == "a2"
    assert t.trigger_id == trigger_id(KEY, "cart", "cart-1", deadline)
    # Nothing fires twice, however far the watermark moves.
    state, out = rules.advance(state, END, MODEL)
    assert fired(out) == []
    assert state.abandonments == 1 and state.abandoned == {"cart": deadline}


def test_a_cart_change_restarts_the_wait() -> None:
    remove = ev("r1", "remove_from_cart", T0 + 20 * MIN, sku="S1", quantity=1)
    _, out = run([add("a1", T0, qty=2), remove])
    assert fired(out) == [("cart", T0 + 50 * MIN)]


@pytest.mark.parametrize(
    "closing",
    [
        ev("c", "checkout_started", T0 + 29 * MIN),
        ev("p", "purchase", T0 + 29 * MIN, order_id="o1", value=10.0),
        ev("p", "pos_purchase", T0 + 29 * MIN, channel="pos", order_id="o1", value=10.0),
        ev("p", "purchase", T0 + 30 * MIN, order_id="o1", value=10.0),  # exactly at the deadline
        ev("r", "remove_from_cart", T0 + 10 * MIN, sku="S1"),  # emptied cart
    ],
    ids=["checkout", "purchase", "pos-purchase", "purchase-at-deadline", "emptied"],
)
def test_cart_wait_is_cancelled(closing: Touchpoint) -> None:
    _, out = run([add("a1", T0), closing])
    assert "cart" not in [rule for rule, _ in fired(out)]


def test_purchase_after_the_deadline_does_not_cancel_but_counts_as_recovery() -> None:
    buy = ev("p", "purchase", T0 + 31 * MIN, order_id="o1", value=10.0)
    state, out = run([add("a1", T0), buy])
    assert fired(out) == [("cart", T0 + 30 * MIN)]
    assert [r for r in out if isinstance(r, Recovery)] == [Recovery("cart", KEY, T0 + 31 * MIN)]
    assert state.recoveries == 1 and state.abandoned == {}


def test_the_wait_fires_only_when_the_watermark_passes_it() -> None:
    state, out = run([add("a1", T0)], until=T0 + 30 * MIN - 1)
    assert fired(out) == []
    assert rules.next_due(state, MODEL) == T0 + 30 * MIN
    # A late purchase that arrives before the watermark passes still cancels.
    state, _ = rules.apply(state, ev("p", "purchase", T0 + 29 * MIN, value=1.0), MODEL)
    state, out = rules.advance(state, END, MODEL)
    assert fired(out) == []


# -- checkout and browse ------------------------------------------------------------


def test_checkout_abandoned_after_15_minutes() -> None:
    events = [add("a1", T0), ev("c1", "checkout_started", T0 + MIN, cart_id="cart-1")]
    _, out = run(events)
    [t] = triggers(out)
    assert (t.rule, t.deadline, t.cart_id) == ("checkout", T0 + 16 * MIN, "cart-1")


def test_checkout_cancelled_by_a_purchase() -> None:
    events = [
        add("a1", T0),
        ev("c1", "checkout_started", T0 + MIN),
        ev("p", "purchase", T0 + 10 * MIN),
    ]
    _, out = run(events)
    assert fired(out) == []


def views(n: int, start: int, gap: int = MIN, prefix: str = "v") -> list[Touchpoint]:
    return [ev(f"{prefix}{i}", "product_view", start + i * gap, sku=f"P{i % 2}") for i in range(n)]


def test_browse_needs_three_views_in_a_session() -> None:
    assert fired(run(views(2, T0))[1]) == []
    _, out = run(views(4, T0))
    [t] = triggers(out)
    assert (t.rule, t.deadline) == ("browse", T0 + 3 * MIN + HOUR)
    assert t.top_products == ("P0", "P1") and t.cart_id is None


def test_browse_views_in_separate_sessions_do_not_add_up() -> None:
    events = views(2, T0) + views(2, T0 + 2 * HOUR, prefix="w")
    assert fired(run(events)[1]) == []


def test_browse_cancelled_by_add_to_cart_and_not_restarted_in_that_session() -> None:
    events = [*views(3, T0), add("a1", T0 + 10 * MIN), *views(3, T0 + 11 * MIN, prefix="w")]
    _, out = run([*events, ev("p", "purchase", T0 + 20 * MIN, value=1.0)])
    assert fired(out) == []


# -- stage follow-ups ------------------------------------------------------------


def test_first_purchase_sends_welcome_and_loyalty_thank_you_once() -> None:
    buys = [
        ev(f"p{i}", "purchase", T0 + i * 10 * 86_400_000, value=5.0, order_id=f"o{i}")
        for i in range(3)
    ]
    _, out = run([IDENTIFY, *buys])
    follow = [(t.rule, t.kind, t.deadline) for t in triggers(out)]
    assert follow == [
        ("welcome", TRANSITION, T0),
        ("thank_you", TRANSITION, T0 + 10 * 86_400_000),
    ]


def test_followups_adapt_to_the_stage_model() -> None:
    _, out = run([ev("p", "purchase", T0, value=5.0)], model=STDC)
    assert [(t.rule, t.stage) for t in triggers(out)] == [("welcome", "care")]


# -- identity, ids, ordering ------------------------------------------------------------


def test_an_orphan_cart_wait_moves_into_the_customer_journey() -> None:
    orphan = JourneyState(key="anon:x")
    anonymous = replace(add("a1", T0), customer_id=None, anonymous_id="x")
    orphan, _ = rules.run(orphan, [anonymous], T0 + MIN, MODEL)
    assert "cart" in orphan.waits
    into = JourneyState(key=KEY)
    into, _ = rules.run(into, [IDENTIFY], T0 + MIN, MODEL)
    into, out = rules.merge(into, orphan, "anon:x", MODEL)
    into, more = rules.advance(into, END, MODEL)
    [t] = triggers(out + more)
    assert (t.rule, t.journey_key, t.email) == ("cart", KEY, "ana@example.com")


def test_trigger_ids_are_stable_across_runs_and_change_with_the_deadline() -> None:
    events = [IDENTIFY, add("a1", T0)]
    first = [t.trigger_id for t in triggers(run(events)[1])]
    again = [t.trigger_id for t in triggers(run(copy.deepcopy(events))[1])]
    later = [t.trigger_id for t in triggers(run([IDENTIFY, add("a1", T0 + 1)])[1])]
    assert first == again and len(first) == 1
    assert later != first


def test_state_round_trips_with_open_waits_and_sessions() -> None:
    state, _ = run([*views(3, T0), add("a1", T0 + 5 * MIN)], until=T0 + 6 * MIN)
    assert state.waits and state.session is not None
    assert JourneyState.loads(state.dumps()) == state


def test_playbook_rejects_bad_rules() -> None:
    stages = MODEL.all_stages
    with pytest.raises(ValueError, match="wait_s"):
        parse_playbook([{"name": "x", "start": ["add_to_cart"], "wait_s": 0}], [], stages)
    with pytest.raises(ValueError, match="requires"):
        parse_playbook([{"name": "x", "start": ["a"], "wait_s": 1, "requires": "moon"}], [], stages)
    with pytest.raises(ValueError, match="not a stage"):
        parse_playbook([], [{"name": "f", "to_stage": "nowhere"}], stages)
    with pytest.raises(ValueError, match="duplicate"):
        parse_playbook(DEFAULT_ABANDONMENT + DEFAULT_ABANDONMENT[:1], [], stages)


def test_no_playbook_no_triggers() -> None:
    bare = with_playbook(MODEL, [], [])
    _, out = run([IDENTIFY, add("a1", T0), ev("p", "purchase", T0 + HOUR)], model=bare)
    assert triggers(out) == []


# -- properties ------------------------------------------------------------

LATENESS = 10 * MIN


def _shopping(draw: st.DrawFn) -> list[Touchpoint]:
    kinds = st.sampled_from(
        [
            "product_view",
            "add_to_cart",
            "remove_from_cart",
            "checkout_started",
            "purchase",
            "pos_purchase",
        ]
    )
    n = draw(st.integers(1, 14))
    t = T0
    out = [IDENTIFY]
    for i in range(n):
        t += draw(st.integers(0, 40 * MIN))
        kind = draw(kinds)
        sku = draw(st.sampled_from(["S1", "S2"]))
        if kind in ("add_to_cart", "remove_from_cart"):
            out.append(ev(f"e{i}", kind, t, sku=sku, price=3.0, cart_id="cart-1", currency="EUR"))
        elif kind == "pos_purchase":
            out.append(ev(f"e{i}", kind, t, channel="pos", value=3.0, store_id="ST1"))
        else:
            out.append(ev(f"e{i}", kind, t, sku=sku, value=3.0))
    return out


shopping = st.composite(_shopping)


def _stream(events: list[Touchpoint], order: list[int]) -> tuple[JourneyState, list]:
    """Arrival in ``order``, watermark = newest seen - lateness, as the stream runs."""
    state = JourneyState(key=KEY)
    effects: list = []
    newest = -(2**62)
    for i in order:
        tp = events[i]
        newest = max(newest, tp.timestamp)
        state, out = rules.apply(state, tp, MODEL)
        effects.extend(out)
        state, out = rules.advance(state, newest - LATENESS, MODEL)
        effects.extend(out)
    state, out = rules.advance(state, END, MODEL)
    return state, effects + out


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_arrival_order_within_lateness_gives_the_same_triggers(data: st.DataObject) -> None:
    events = data.draw(shopping())
    in_order = sorted(range(len(events)), key=lambda i: (events[i].timestamp, events[i].event_id))
    reference_state, reference = _stream(events, in_order)
    # Shuffle only among events within the lateness of each other: a late event
    # is never older than newest - lateness when it arrives.
    order = data.draw(st.permutations(in_order))
    newest = -(2**62)
    for i in order:
        if events[i].timestamp < newest - LATENESS:
            order = in_order
            break
        newest = max(newest, events[i].timestamp)
    state, effects = _stream(events, order)
    assert triggers(effects) == triggers(reference)
    assert state.waits == reference_state.waits == {}
    # Invariants: a trigger fires at most once per id, and only after its deadline passed
    # without a cancelling event at or before it.
    ids = [t.trigger_id for t in triggers(effects)]
    assert len(ids) == len(set(ids))
    for t in triggers(effects):
        if t.rule == "cart":
            closing = [
                e for e in events if e.type in ("checkout_started", "purchase", "pos_purchase")
            ]
            # Ordered by time, ties by event id: a closing event sorting before the
            # wait's last (re)start does not close it.
            started = (t.event_at, t.cause_event_id)
            assert not any(
                started < (e.timestamp, e.event_id) and e.timestamp <= t.deadline for e in closing
            )


def test_shipped_config_matches_the_defaults_and_survives_the_environment() -> None:
    from stream.settings import to_environ

    shipped = load_settings(environ={})  # reads config/journey.toml
    assert [dict(r) for r in shipped.journey.abandonment] == [dict(r) for r in DEFAULT_ABANDONMENT]
    assert [dict(r) for r in shipped.journey.followups] == [dict(r) for r in DEFAULT_FOLLOWUPS]
    # Child processes get settings through JOURNEY_* variables (JSON for rule lists).
    short = [{**r, "wait_s": 20} for r in shipped.journey.abandonment]
    env = to_environ(load_settings(environ={}, overrides={"journey": {"abandonment": short}}))
    again = load_settings(environ=env)
    assert [r["wait_s"] for r in again.journey.abandonment] == [20, 20, 20]
