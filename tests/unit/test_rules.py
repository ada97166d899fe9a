"""Journey rules: scenarios for each stage move, and properties of ordering, lateness and merges."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Sequence
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import Touchpoint
from stream.journey import rules
from stream.journey.stages import DAY_MS, StageModel, load_model
from stream.journey.state import JourneyState, Transition
from tests.builders import touchpoint

FIVE = load_model("five-stage")
STDC = load_model("see-think-do-care")
MODELS = [FIVE, STDC]

T0 = 1_700_000_000_000
HOUR = 3_600_000
END = 2**62
CUSTOMER = "c-1"


#: A touchpoint of the test customer (see tests.builders.touchpoint).
ev = partial(touchpoint, customer=CUSTOMER)


def settle(
    events: Iterable[Touchpoint],
    until: int | None = None,
    model: StageModel = FIVE,
    state: JourneyState | None = None,
) -> tuple[JourneyState, list[Transition]]:
    """Apply ``events`` and advance to ``until`` (default: the newest event)."""
    events = list(events)
    if until is None:
        until = max(e.timestamp for e in events)
    return rules.run(state or JourneyState(key=CUSTOMER), events, until, model)


def moves(transitions: Sequence[Transition]) -> list[tuple[str | None, str]]:
    return [(t.from_stage, t.to_stage) for t in transitions]


def stages(state: JourneyState) -> list[str]:
    return [v.stage for v in state.history]


# -- scenarios ---------------------------------------------------------------------


def test_browsing_moves_through_awareness_and_consideration() -> None:
    state, out = settle([ev("a", "page_view", T0), ev("b", "product_view", T0 + HOUR, sku="S")])
    assert moves(out) == [(None, "awareness"), ("awareness", "consideration")]
    assert [(t.at, t.cause_event_id, t.customer_id) for t in out] == [
        (T0, "a", CUSTOMER),
        (T0 + HOUR, "b", CUSTOMER),
    ]
    assert state.stage == "consideration"
    assert state.stage_entered_at == T0 + HOUR
    assert state.viewed == {"S": 1}
    assert (state.events, state.first_seen, state.last_seen) == (2, T0, T0 + HOUR)
    assert state.counts_by_type == {"page_view": 1, "product_view": 1}
    assert state.counts_by_channel == {"web": 2}


def test_pricing_page_is_decision_and_first_unknown_event_is_initial_stage() -> None:
    _, out = settle(
        [ev("a", "webinar_attended", T0), ev("b", "page_view", T0 + 1, page_type="pricing")]
    )
    assert moves(out) == [(None, "awareness"), ("awareness", "decision")]


def test_add_to_cart_is_decision_with_cart_items_and_value() -> None:
    state, out = settle(
        [
            ev(
                "a",
                "add_to_cart",
                T0,
                sku="MUG",
                name="Mug",
                price=8.5,
                quantity=2,
                cart_id="k1",
                currency="EUR",
            ),
            ev("b", "add_to_cart", T0 + 1, sku="MUG", price=8.5, quantity=1, cart_id="k1"),
            ev(
                "c",
                "add_to_cart",
                T0 + 2,
                products=[{"product_id": "TEA", "price": 6.9}],
                cart_id="k1",
            ),
        ]
    )
    assert moves(out) == [(None, "decision")]
    assert state.cart is not None
    assert state.cart.cart_id == "k1"
    assert {s: (i.quantity, i.price) for s, i in state.cart.items.items()} == {
        "MUG": (3, 8.5),
        "TEA": (1, 6.9),
    }
    assert state.cart.items["MUG"].name == "Mug"
    assert state.cart.value == 32.4
    assert state.cart.currency == "EUR"
    assert state.cart.updated_at == T0 + 2


def test_a_new_cart_id_replaces_the_cart() -> None:
    state, _ = settle(
        [
            ev("a", "add_to_cart", T0, sku="A", cart_id="k1"),
            ev("b", "add_to_cart", T0 + 1, sku="B", cart_id="k2"),
        ]
    )
    assert state.cart is not None
    assert (state.cart.cart_id, list(state.cart.items)) == ("k2", ["B"])


def test_removing_everything_empties_the_cart_and_checkout() -> None:
    state, out = settle(
        [
            ev("a", "add_to_cart", T0, sku="A", price=2.0, quantity=3),
            ev("b", "add_to_cart", T0 + 1, sku="B", price=1.0),
            ev("c", "checkout_started", T0 + 2),
            ev("d", "remove_from_cart", T0 + 3, sku="A", quantity=1),
        ]
    )
    assert state.cart is not None
    assert state.cart.items["A"].quantity == 2
    assert state.checkout is not None and state.checkout.cart_id == state.cart.cart_id
    state, out = settle(
        [
            ev("e", "remove_from_cart", T0 + 4, sku="A"),
            ev("f", "remove_from_cart", T0 + 5, sku="B"),
        ],
        state=state,
    )
    assert state.cart is None
    assert state.checkout is None
    assert out == []  # removing is not a stage move
    assert state.stage == "decision"


def test_remove_honours_per_product_quantity() -> None:
    state, _ = settle(
        [
            ev("a", "add_to_cart", T0, sku="A", price=2.0, quantity=3),
            ev("b", "remove_from_cart", T0 + 1, products=[{"sku": "A", "quantity": 1}]),
        ]
    )
    assert state.cart is not None and state.cart.items["A"].quantity == 2


def test_purchase_clears_cart_and_counts_the_order() -> None:
    state, out = settle(
        [
            ev("a", "add_to_cart", T0, sku="A", price=10.0),
            ev("b", "checkout_started", T0 + 1),
            ev("c", "purchase", T0 + 2, order_id="o-1", value=10.0, currency="EUR"),
        ]
    )
    assert moves(out) == [(None, "decision"), ("decision", "purchase")]
    assert state.cart is None and state.checkout is None
    o = state.orders
    assert (o.count, o.total_value, o.last_order_id, o.last_value, o.last_currency) == (
        1,
        10.0,
        "o-1",
        10.0,
        "EUR",
    )
    assert (o.last_at, o.last_channel) == (T0 + 2, "web")


def test_pos_purchase_value_from_items_and_store() -> None:
    state, out = settle(
        [
            ev(
                "p",
                "pos_purchase",
                T0,
                channel="pos",
                store_id="berlin-01",
                products=[{"sku": "A", "price": 2.5, "quantity": 2}, {"sku": "B", "price": 1.0}],
            )
        ]
    )
    assert moves(out) == [(None, "purchase")]
    assert state.orders.last_value == 6.0
    assert state.orders.last_order_id == "p"
    assert state.orders.last_channel == "pos"
    assert state.last_store == "berlin-01"


def test_return_is_counted_without_moving() -> None:
    state, out = settle(
        [ev("a", "purchase", T0, value=20), ev("b", "return", T0 + DAY_MS, value=-5)]
    )
    assert moves(out) == [(None, "purchase")]
    assert (state.orders.returns, state.orders.returned_value) == (1, 5.0)


def test_second_purchase_within_90_days_is_loyalty() -> None:
    state, out = settle(
        [ev("a", "purchase", T0, value=5), ev("b", "purchase", T0 + 89 * DAY_MS, value=7)]
    )
    assert moves(out) == [(None, "purchase"), ("purchase", "loyalty")]
    assert state.orders.count == 2
    assert state.orders.total_value == 12.0


def test_second_purchase_after_90_days_lapses_then_purchases_again() -> None:
    _, out = settle([ev("a", "purchase", T0), ev("b", "purchase", T0 + 100 * DAY_MS)])
    assert moves(out) == [(None, "purchase"), ("purchase", "lapsed"), ("lapsed", "purchase")]
    assert out[1].at == T0 + 90 * DAY_MS
    assert out[1].cause_event_id == rules.LAPSE_CAUSE


@pytest.mark.parametrize("engagement", ["email_click", "store_visit"])
def test_engagement_within_30_days_after_purchase_is_loyalty(engagement: str) -> None:
    _, out = settle([ev("a", "purchase", T0), ev("b", engagement, T0 + 29 * DAY_MS)])
    assert moves(out) == [(None, "purchase"), ("purchase", "loyalty")]


def test_engagement_after_30_days_is_a_new_cycle_not_loyalty() -> None:
    _, out = settle([ev("a", "purchase", T0), ev("b", "email_click", T0 + 31 * DAY_MS)])
    assert moves(out) == [(None, "purchase"), ("purchase", "consideration")]


def test_product_view_after_purchase_starts_a_new_cycle() -> None:
    state, out = settle([ev("a", "purchase", T0), ev("b", "product_view", T0 + DAY_MS, sku="S")])
    assert moves(out)[-1] == ("purchase", "consideration")
    assert state.orders.count == 1


def test_awareness_after_purchase_does_not_start_a_new_cycle() -> None:
    _, out = settle([ev("a", "purchase", T0), ev("b", "page_view", T0 + DAY_MS)])
    assert moves(out) == [(None, "purchase")]


def test_see_think_do_care_stays_in_care_after_purchase() -> None:
    _, out = settle(
        [
            ev("a", "purchase", T0),
            ev("b", "product_view", T0 + DAY_MS),
            ev("c", "purchase", T0 + 2 * DAY_MS),
        ],
        model=STDC,
    )
    assert moves(out) == [(None, "care")]


def test_no_regression_to_an_earlier_stage() -> None:
    state, out = settle(
        [
            ev("a", "add_to_cart", T0, sku="A"),
            ev("b", "product_view", T0 + 1),
            ev("c", "page_view", T0 + 2),
        ]
    )
    assert moves(out) == [(None, "decision")]
    assert state.stage == "decision"
    assert state.events == 3


def test_loyalty_does_not_fall_back_to_purchase() -> None:
    _, out = settle(
        [
            ev("a", "purchase", T0),
            ev("b", "purchase", T0 + DAY_MS),
            ev("c", "purchase", T0 + 2 * DAY_MS),
        ]
    )
    assert moves(out) == [(None, "purchase"), ("purchase", "loyalty")]


def test_lapse_after_90_days_of_inactivity_when_the_watermark_advances() -> None:
    state, out = settle([ev("a", "purchase", T0)])
    lapse_at = T0 + 90 * DAY_MS
    assert rules.next_due(state, FIVE) == lapse_at
    state, out = rules.advance(state, lapse_at - 1, FIVE)
    assert out == [] and state.stage == "purchase"
    state, out = rules.advance(state, lapse_at + 5 * DAY_MS, FIVE)
    assert moves(out) == [("purchase", "lapsed")]
    assert out[0].at == lapse_at
    assert state.history[-2].left_at == lapse_at
    assert rules.next_due(state, FIVE) is None
    # Any activity brings them back.
    state, out = settle([ev("b", "page_view", lapse_at + 10 * DAY_MS)], state=state)
    assert moves(out) == [("lapsed", "awareness")]


def test_no_lapse_before_a_purchase() -> None:
    state, out = settle([ev("a", "product_view", T0)], until=T0 + 1000 * DAY_MS)
    assert moves(out) == [(None, "consideration")]
    assert rules.next_due(state, FIVE) is None


def test_next_due_is_the_first_pending_event() -> None:
    state = JourneyState(key=CUSTOMER)
    for e in [ev("b", "page_view", T0 + 5), ev("a", "page_view", T0 + 3)]:
        state, _ = rules.apply(state, e, FIVE)
    assert [p.event_id for p in state.pending] == ["a", "b"]
    assert rules.next_due(state, FIVE) == T0 + 3


def test_late_event_is_counted_and_never_moves_back_in_time() -> None:
    state, out = settle(
        [ev("a", "page_view", T0), ev("b", "product_view", T0 + 5 * HOUR)], until=T0 + 10 * HOUR
    )
    assert state.settled_until == T0 + 10 * HOUR
    state, late = rules.apply(state, ev("c", "add_to_cart", T0 + HOUR, sku="A"), FIVE)
    assert state.late_events == 1
    assert state.pending == []  # folded at once
    assert state.cart is not None
    assert moves(late) == [("consideration", "decision")]
    assert late[0].at == T0 + 5 * HOUR  # not T0 + 1h: history is never rewritten
    assert late[0].at >= out[-1].at
    assert [v.entered_at for v in state.history] == [T0, T0 + 5 * HOUR, T0 + 5 * HOUR]
    # A late event that moves nothing is still counted and recorded.
    state, late = rules.apply(state, ev("d", "page_view", T0 + 2 * HOUR), FIVE)
    assert (state.late_events, state.events, late) == (2, 4, [])


def test_duplicates_are_ignored_pending_and_settled() -> None:
    state = JourneyState(key=CUSTOMER)
    first = ev("a", "purchase", T0, value=5)
    state, _ = rules.apply(state, first, FIVE)
    state, _ = rules.apply(state, ev("a", "purchase", T0 + 1, value=5), FIVE)
    assert len(state.pending) == 1
    state, out = rules.advance(state, T0 + DAY_MS, FIVE)
    assert state.orders.count == 1
    for dup in (first, ev("a", "purchase", T0 + 2 * DAY_MS)):  # settled, on time or late
        state, out = rules.apply(state, dup, FIVE)
        assert out == []
    state, out = rules.advance(state, T0 + 3 * DAY_MS, FIVE)
    assert out == []
    assert (state.orders.count, state.events, state.late_events) == (1, 1, 0)


def test_unsubscribe_sets_email_opt_out() -> None:
    state, out = settle(
        [ev("a", "page_view", T0), ev("b", "unsubscribe", T0 + HOUR, channel="email")]
    )
    assert state.email_opt_out is True
    assert state.email_opt_out_at == T0 + HOUR
    assert moves(out) == [(None, "awareness")]


def test_identifiers_and_profile_are_recorded() -> None:
    state, _ = settle(
        [
            ev(
                "a",
                "page_view",
                T0,
                customer=None,
                anon="dev-1",
                context={"timezone": "Europe/Berlin"},
            ),
            ev("b", "identify", T0 + 1, anon="dev-1", email=" Ann@Example.COM ", first_name="Ann"),
            ev("c", "pos_purchase", T0 + 2, channel="pos", loyalty_id="L-9", store_id="s-1"),
        ]
    )
    assert state.customer_id == CUSTOMER
    assert state.anonymous_ids == ["dev-1"]
    assert state.emails == ["ann@example.com"]
    assert state.loyalty_ids == ["L-9"]
    assert state.first_name == "Ann"
    assert state.timezone == "Europe/Berlin"
    assert state.last_store == "s-1"


def test_viewed_products_are_bounded() -> None:
    events = [ev(f"v{i}", "product_view", T0 + i, sku=f"S{i}") for i in range(30)]
    events.append(ev("again", "product_view", T0 + 100, sku="S29"))
    state, _ = settle(events)
    assert len(state.viewed) == 20
    assert state.viewed["S29"] == 2


def test_state_survives_serialisation_with_pending_events() -> None:
    state, _ = settle(
        [ev("a", "add_to_cart", T0, sku="A", price=1.5), ev("b", "checkout_started", T0 + 1)],
        until=T0 + 1,
    )
    state, _ = rules.apply(state, ev("c", "purchase", T0 + 10, value=1.5), FIVE)
    again = JourneyState.loads(state.dumps())
    assert again.to_dict() == state.to_dict()
    assert again.pending == state.pending
    assert "pending" not in state.summary() and state.summary()["pending_events"] == 1


def test_merge_pending_orphan_events_settle_in_order() -> None:
    into, _ = settle([ev("a", "page_view", T0)], until=T0)
    orphan = JourneyState(key="anon:x")
    orphan, _ = rules.apply(
        orphan, ev("o", "add_to_cart", T0 + 2, customer=None, anon="x", sku="A"), FIVE
    )
    into, _ = rules.apply(into, ev("b", "product_view", T0 + 1), FIVE)
    into, out = rules.merge(into, orphan, "anon:x", FIVE)
    assert out == []
    assert [p.event_id for p in into.pending] == ["b", "o"]
    into, out = rules.advance(into, T0 + 2, FIVE)
    assert moves(out) == [("awareness", "consideration"), ("consideration", "decision")]
    assert into.merged_from == ["anon:x"]
    assert into.anonymous_ids == ["x"]


def test_merge_replays_settled_orphan_events_from_its_journal() -> None:
    into, _ = settle([ev("a", "page_view", T0)], until=T0 + HOUR)
    orphan, _ = settle(
        [ev("o1", "pos_purchase", T0 + 1, customer=None, channel="pos", loyalty_id="L", value=9)],
        until=T0 + HOUR,
        state=JourneyState(key="loyalty:L"),
    )
    assert [tp.event_id for tp in orphan.journal] == ["o1"]
    into, out = rules.merge(into, orphan, "loyalty:L", FIVE)
    assert moves(out) == [("awareness", "purchase")]
    assert out[0].cause_event_id == "o1"
    assert out[0].at == T0 + 1
    assert (into.events, into.orders.count, into.orders.total_value) == (2, 1, 9.0)
    assert into.loyalty_ids == ["L"]
    assert "o1" in into.seen_ids
    # The orphan's events are never counted twice.
    into, out = rules.apply(into, ev("o1", "pos_purchase", T0 + 1, customer=None), FIVE)
    assert into.events == 2


def test_merge_of_an_orphan_without_a_full_journal_adds_totals_and_moves_ahead() -> None:
    into, _ = settle([ev("a", "page_view", T0)], until=T0 + HOUR)
    orphan, _ = settle(
        [ev("o1", "pos_purchase", T0 + 1, customer=None, channel="pos", loyalty_id="L", value=9)],
        until=T0 + HOUR,
        state=JourneyState(key="loyalty:L"),
    )
    orphan.journal, orphan.journal_truncated = [], True
    into, out = rules.merge(into, orphan, "loyalty:L", FIVE)
    assert moves(out) == [("awareness", "purchase")]
    assert out[0].cause_event_id == "merge:loyalty:L"
    assert (into.events, into.orders.count, into.orders.total_value) == (2, 1, 9.0)


def test_merge_reports_transitions_of_late_orphan_events() -> None:
    into, _ = settle([ev("a", "page_view", T0)], until=T0 + 10 * HOUR)
    orphan = JourneyState(key="anon:x")
    orphan, _ = rules.apply(
        orphan, ev("o", "add_to_cart", T0 + HOUR, customer=None, anon="x", sku="A"), FIVE
    )
    into, out = rules.merge(into, orphan, "anon:x", FIVE)
    assert into.stage == "decision"  # this part holds ...
    assert moves(out) == [("awareness", "decision")]  # ... but no transition is reported


def test_merge_never_moves_a_journey_back_in_time() -> None:
    into = JourneyState(key=CUSTOMER)
    into, _ = rules.apply(into, ev("p", "purchase", T0, value=5), FIVE)  # not settled yet
    orphan, _ = settle(
        [ev("o", "add_to_cart", T0 + 2 * HOUR, customer=None, anon="x", sku="A")],
        until=T0 + 3 * HOUR,
        state=JourneyState(key="anon:x"),
    )
    into, out = rules.merge(into, orphan, "anon:x", FIVE)
    into, more = rules.advance(into, T0 + 3 * HOUR, FIVE)
    ats = [t.at for t in out + more]
    assert ats == sorted(ats)  # fails: decision at T0+2h, then purchase at T0


def test_event_at_the_settled_point_is_late() -> None:
    # Events up to settled_until (ties included) are already folded, so one more at
    # exactly that millisecond cannot be placed among them: it is late, like any older one.
    state = JourneyState(key=CUSTOMER)
    state, _ = rules.apply(state, ev("x", "purchase", T0), FIVE)
    state, _ = rules.advance(state, T0, FIVE)
    state, out = rules.apply(state, ev("y", "add_to_cart", T0, sku="A"), FIVE)
    assert state.late_events == 1
    assert state.pending == []
    assert all(t.at >= T0 for t in out)


# -- properties --------------------------------------------------------------------

EXTRA_TYPES = ["remove_from_cart", "unsubscribe", "return", "webinar_attended", "checkout_started"]


def model_types(model: StageModel) -> list[str]:
    types: set[str] = set(EXTRA_TYPES) | set(model.engagement_types)
    for rule in model.rules:
        types |= rule.types
    return sorted(types)


PROPS = {
    "page_view": st.fixed_dictionaries(
        {"page_type": st.sampled_from(["pricing", "demo", "home", "blog"])}
    ),
    "product_view": st.fixed_dictionaries({"sku": st.sampled_from("ABC")}),
    "add_to_cart": st.fixed_dictionaries(
        {
            "sku": st.sampled_from("ABC"),
            "price": st.sampled_from([1.0, 2.5]),
            "quantity": st.integers(1, 3),
        }
    ),
    "remove_from_cart": st.fixed_dictionaries({"sku": st.sampled_from("ABC")}),
    "purchase": st.fixed_dictionaries({"value": st.integers(1, 50)}),
    "pos_purchase": st.fixed_dictionaries({"total": st.integers(1, 50), "store_id": st.just("s1")}),
}
STEP = 6 * HOUR  # 800 steps ~ 200 days: enough for loyalty, engagement and lapse windows


@st.composite
def event_lists(
    draw: st.DrawFn,
    model: StageModel,
    *,
    anon: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    prefix: str = "",
) -> list[Touchpoint]:
    types = model_types(model)
    ids = draw(
        st.lists(
            st.text("abcdef", min_size=1, max_size=3),
            min_size=min_size,
            max_size=max_size,
            unique=True,
        )
    )
    out = []
    for eid in ids:
        type_ = draw(st.sampled_from(types))
        step = draw(st.integers(0, 3) | st.integers(0, 800))  # small range: many ties
        props = draw(PROPS.get(type_, st.just({})))
        out.append(
            ev(
                prefix + eid,
                type_,
                T0 + step * STEP,
                customer=None if anon else CUSTOMER,
                anon=anon,
                channel=draw(st.sampled_from(["web", "pos", "email"])),
                **props,
            )
        )
    return out


def check_journey(
    state: JourneyState, transitions: Sequence[Transition], model: StageModel
) -> None:
    """History is contiguous, transitions chain, and both tell the same story."""
    history = state.history
    assert all(v.stage in model.all_stages for v in history)
    for prev, nxt in itertools.pairwise(history):
        assert prev.left_at == nxt.entered_at
        assert prev.entered_at <= nxt.entered_at
    if history:
        assert history[-1].left_at is None
        assert (state.stage, state.stage_entered_at) == (history[-1].stage, history[-1].entered_at)
    else:
        assert state.stage is None
    assert [t.to_stage for t in transitions] == [v.stage for v in history]
    assert [t.at for t in transitions] == [v.entered_at for v in history]
    for i, t in enumerate(transitions):
        assert t.from_stage == (transitions[i - 1].to_stage if i else None)
        assert t.from_stage != t.to_stage
    assert sum(state.counts_by_type.values()) == state.events


model_param = pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)


@model_param
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_history_is_contiguous_for_any_arrival_order_and_lateness(
    model: StageModel, data: st.DataObject
) -> None:
    events = data.draw(event_lists(model, max_size=12))
    arrival = data.draw(st.permutations(events))
    lateness = data.draw(st.sampled_from([0, HOUR, 2 * DAY_MS, 30 * DAY_MS, 1000 * DAY_MS]))
    state = JourneyState(key=CUSTOMER)
    transitions: list[Transition] = []
    expected_late = 0
    newest = 0
    for tp in arrival:
        expected_late += tp.timestamp <= state.settled_until
        newest = max(newest, tp.timestamp)
        state, out = rules.apply(state, tp, model)
        transitions += out
        state, out = rules.advance(state, newest - lateness, model)
        transitions += out
        check_journey(state, transitions, model)
    state, out = rules.advance(state, END, model)
    transitions += out
    check_journey(state, transitions, model)
    assert state.pending == []
    assert state.events == len(events)
    assert state.late_events == expected_late
    assert state.first_seen == min(e.timestamp for e in events)
    assert state.last_seen == newest
    if lateness >= 800 * STEP:
        assert expected_late == 0


@model_param
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_arrival_order_within_lateness_does_not_matter(
    model: StageModel, data: st.DataObject
) -> None:
    events = data.draw(event_lists(model, max_size=12))
    cut = T0 + data.draw(st.integers(-1, 800)) * STEP
    settled = [e for e in events if e.timestamp <= cut]
    tail = [e for e in events if e.timestamp > cut]
    base, base_out = rules.run(JourneyState(key=CUSTOMER), settled, cut, model)
    final = data.draw(st.sampled_from([END, max(cut, *(e.timestamp for e in events))]))
    results = []
    for order in (data.draw(st.permutations(tail)), data.draw(st.permutations(tail))):
        state, transitions = copy.deepcopy(base), list(base_out)
        for tp in order:
            state, out = rules.apply(state, tp, model)
            transitions += out
            # The watermark moves, but never past an unsettled event.
            state, out = rules.advance(state, min(e.timestamp for e in tail) - 1, model)
            transitions += out
        state, out = rules.advance(state, final, model)
        transitions += out
        check_journey(state, transitions, model)
        results.append((state.to_dict(), transitions))
    assert results[0] == results[1]
    sorted_state, sorted_out = rules.run(
        JourneyState(key=CUSTOMER),
        sorted(events, key=lambda e: (e.timestamp, e.event_id)),
        final,
        model,
    )
    assert results[0][0] == sorted_state.to_dict()
    assert results[0][1] == sorted_out


@model_param
@settings(max_examples=75, deadline=None)
@given(data=st.data())
def test_next_due_is_exactly_when_advance_changes_something(
    model: StageModel, data: st.DataObject
) -> None:
    events = data.draw(event_lists(model, max_size=8))
    until = T0 + data.draw(st.integers(0, 800)) * STEP
    state, _ = rules.run(JourneyState(key=CUSTOMER), events, until, model)
    due = rules.next_due(state, model)
    if due is None:
        assert state.pending == []
        _, out = rules.advance(copy.deepcopy(state), END, model)
        assert out == []
        return
    if due - 1 > state.settled_until:
        before = state.to_dict()
        quiet, out = rules.advance(copy.deepcopy(state), due - 1, model)
        after = quiet.to_dict()
        assert out == []
        assert {**after, "settled_until": 0} == {**before, "settled_until": 0}
    if due > state.settled_until:
        moved, out = rules.advance(copy.deepcopy(state), due, model)
        assert out or len(moved.pending) < len(state.pending)


@model_param
@settings(max_examples=75, deadline=None)
@given(data=st.data())
def test_merge_of_pending_orphan_equals_one_journey(model: StageModel, data: st.DataObject) -> None:
    own = data.draw(event_lists(model, max_size=6, prefix="c"))
    theirs = data.draw(event_lists(model, anon="x", max_size=6, prefix="o"))
    into, orphan = JourneyState(key=CUSTOMER), JourneyState(key="anon:x")
    for tp in own:
        into, _ = rules.apply(into, tp, model)
    for tp in theirs:
        orphan, _ = rules.apply(orphan, tp, model)
    into, merged_out = rules.merge(into, orphan, "anon:x", model)
    assert merged_out == []
    into, out = rules.advance(into, END, model)
    reference, ref_out = rules.run(JourneyState(key=CUSTOMER), own + theirs, END, model)
    assert out == ref_out
    assert {**into.to_dict(), "merged_from": []} == reference.to_dict()
    assert into.merged_from == ["anon:x"]


@model_param
@settings(max_examples=75, deadline=None)
@given(data=st.data())
def test_merge_is_idempotent_and_keeps_the_journey_contiguous(
    model: StageModel, data: st.DataObject
) -> None:
    own = data.draw(event_lists(model, max_size=6, prefix="c"))
    theirs = data.draw(event_lists(model, anon="x", max_size=6, prefix="o"))
    # Both journeys settled to the same watermark, as in one partition.
    wm = T0 + data.draw(st.integers(0, 800)) * STEP
    into, transitions = rules.run(JourneyState(key=CUSTOMER), own, wm, model)
    orphan, _ = rules.run(JourneyState(key="anon:x"), theirs, wm, model)
    orphan_before = orphan.to_dict()

    into, out = rules.merge(into, orphan, "anon:x", model)
    transitions += out
    once = into.to_dict()
    twice, again = rules.merge(copy.deepcopy(into), copy.deepcopy(orphan), "anon:x", model)
    assert again == []
    assert twice.to_dict() == once
    assert orphan.to_dict() == orphan_before  # the orphan is read, not changed

    assert into.events == sum(e.timestamp <= wm for e in own + theirs)
    into, out = rules.advance(into, END, model)
    transitions += out
    check_journey(into, transitions, model)
    assert into.events == len(own) + len(theirs)
    assert into.pending == []


@model_param
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_state_serialisation_round_trips(model: StageModel, data: st.DataObject) -> None:
    events = data.draw(event_lists(model, max_size=10))
    until = T0 + data.draw(st.integers(0, 800)) * STEP
    state, _ = rules.run(JourneyState(key=CUSTOMER), events, until, model)
    again = JourneyState.loads(state.dumps())
    assert again.to_dict() == state.to_dict()
    assert rules.advance(again, END, model)[1] == rules.advance(state, END, model)[1]
