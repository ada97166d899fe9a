"""Stage visits: opened and closed by the journey rules, in event time."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contract import Touchpoint
from stream.journey import rules
from stream.journey.stages import DAY_MS, StageModel, load_model, with_visits
from stream.journey.state import JourneyState
from stream.journey.visits import VisitClosed, VisitOpened, VisitTouched
from tests.builders import touchpoint

WEEK = 7 * 86_400
FIVE = with_visits(load_model("five-stage"), WEEK, "page_type", "context.platform")
STDC = with_visits(load_model("see-think-do-care"), WEEK, "page_type", "context.platform")
T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 3_600_000
END = 2**62


def ev(event_id: str, type_: str, at: int, *, platform: str | None = None, **kw: Any) -> Touchpoint:
    """A touchpoint of customer c-1, from ``platform`` when given."""
    kw.setdefault("customer", "c-1")
    return touchpoint(
        event_id, type_, at, context={"platform": platform} if platform else None, **kw
    )


def run(
    events: list[Touchpoint], until: int, model: StageModel = FIVE
) -> tuple[JourneyState, list]:
    return rules.run(JourneyState(key="c-1"), events, until, model)


def closed(effects: list) -> list[VisitClosed]:
    return [e for e in effects if isinstance(e, VisitClosed)]


def opened(effects: list) -> list[VisitOpened]:
    return [e for e in effects if isinstance(e, VisitOpened)]


def test_a_move_to_a_later_stage_advances_the_visit_with_what_was_seen_in_it() -> None:
    events = [
        ev("e1", "page_view", T0, platform="ios", page_type="home"),
        ev("e2", "page_view", T0 + MIN, platform="ios", page_type="comparison"),
        ev("e3", "store_visit", T0 + 2 * MIN, channel="pos", store_id="s1"),
        ev("e4", "payment_error", T0 + 3 * MIN),
        ev("e5", "product_view", T0 + HOUR, sku="A"),
    ]
    state, out = run(events, T0 + HOUR)
    [visit] = closed(out)
    assert (visit.stage, visit.outcome, visit.to_stage, visit.cause) == (
        "awareness",
        "advanced",
        "consideration",
        "e5",
    )
    assert (visit.entered_at, visit.ended_at, visit.duration_ms) == (T0, T0 + HOUR, HOUR)
    # Unknown types kept as sent, each by channel; the entry touchpoint included,
    # the one that moved the journey on is the next visit's.
    assert visit.touchpoints == (
        ("page_view:comparison", "web"),
        ("page_view:home", "web"),
        ("payment_error", "web"),
        ("store_visit", "pos"),
    )
    assert visit.segment == "ios"
    assert [(o.stage, o.first) for o in opened(out)] == [
        ("awareness", True),
        ("consideration", False),
    ]
    assert state.visit is not None and state.visit.stage == "consideration"
    assert state.visit.touchpoints == [["product_view", "web"]]
    # The touchpoint kept the journey's platform: the next visit has it too.
    assert state.visit.segment == "ios"


def test_a_visit_drops_exactly_when_the_watermark_reaches_its_window() -> None:
    state, out = run([ev("e1", "product_view", T0, sku="A")], T0)
    deadline = T0 + WEEK * 1000
    assert closed(out) == []
    assert rules.next_due(state, FIVE) == deadline
    state, out = rules.advance(state, deadline - 1, FIVE)
    assert out == [] and state.visit is not None
    state, out = rules.advance(state, deadline, FIVE)
    [visit] = closed(out)
    assert (visit.stage, visit.outcome, visit.to_stage, visit.cause, visit.ended_at) == (
        "consideration",
        "dropped",
        None,
        "window",
        deadline,
    )
    assert state.visit is None and state.stage == "consideration"
    assert rules.next_due(state, FIVE) is None
    # Moving on after the window is a transition, and a new visit, not an advance.
    state, out = rules.run(state, [ev("e2", "add_to_cart", deadline + 1, sku="A")], END, FIVE)
    assert [o.stage for o in opened(out)] == ["decision"]
    assert [(c.stage, c.cause) for c in closed(out)] == [("decision", "window")]


def test_a_move_at_the_very_end_of_the_window_still_advances() -> None:
    deadline = T0 + WEEK * 1000
    events = [ev("e1", "product_view", T0, sku="A"), ev("e2", "add_to_cart", deadline, sku="A")]
    _, out = run(events, deadline)
    assert [(c.stage, c.outcome) for c in closed(out)] == [("consideration", "advanced")]


def test_a_visit_with_no_move_and_time_left_stays_open() -> None:
    state, out = run(
        [ev("e1", "page_view", T0), ev("e2", "add_to_cart", T0 + MIN, sku="A")], T0 + DAY_MS
    )
    assert [(c.stage, c.outcome) for c in closed(out)] == [("awareness", "advanced")]
    assert state.visit is not None
    assert (state.visit.stage, state.visit.entered_at) == ("decision", T0 + MIN)


def test_a_move_back_drops_the_visit() -> None:
    # After a purchase, browsing starts a new cycle: the purchase visit ends dropped.
    events = [
        ev("e1", "add_to_cart", T0, sku="A"),
        ev("e2", "purchase", T0 + MIN, value=5),
        ev("e3", "product_view", T0 + 2 * DAY_MS, sku="B"),
    ]
    _, out = run(events, T0 + 2 * DAY_MS)
    assert [(c.stage, c.outcome, c.to_stage, c.cause) for c in closed(out)] == [
        ("decision", "advanced", "purchase", "e2"),
        ("purchase", "dropped", "consideration", "regression"),
    ]


def test_lapsing_drops_the_visit_and_opens_one_in_the_lapse_stage() -> None:
    long_window = with_visits(load_model("five-stage"), 200 * 86_400)
    events = [ev("e1", "purchase", T0, value=5)]
    _, out = run(events, T0 + 91 * DAY_MS, long_window)
    assert [(c.stage, c.outcome, c.to_stage, c.cause, c.ended_at) for c in closed(out)] == [
        ("purchase", "dropped", "lapsed", "lapse", T0 + 90 * DAY_MS)
    ]
    assert [o.stage for o in opened(out)] == ["purchase", "lapsed"]
    # With the default week, the window ends first, then the lapse opens a new visit.
    _, out = run(events, T0 + 91 * DAY_MS)
    assert [(c.stage, c.cause) for c in closed(out)] == [("purchase", "window")]
    assert [o.stage for o in opened(out)] == ["purchase", "lapsed"]


def test_coming_back_from_lapsed_advances_that_visit() -> None:
    events = [
        ev("e1", "purchase", T0, value=5),
        ev("e2", "product_view", T0 + 92 * DAY_MS, sku="A"),
    ]
    _, out = run(events, T0 + 92 * DAY_MS)
    assert [(c.stage, c.outcome, c.to_stage) for c in closed(out)][-1] == (
        "lapsed",
        "advanced",
        "consideration",
    )


def test_touchpoints_per_visit_are_bounded() -> None:
    small = with_visits(load_model("five-stage"), WEEK, max_touchpoints=3)
    events = [ev(f"e{i}", f"custom_{i}", T0 + i) for i in range(10)]
    state, _ = run(events, T0 + 10, small)
    assert state.visit is not None
    assert len(state.visit.touchpoints) == 3 and state.visit.overflow == 7


def test_segment_is_the_value_known_when_the_visit_began() -> None:
    events = [
        ev("e1", "page_view", T0),
        ev("e2", "identify", T0 + MIN, platform="android"),
        ev("e3", "product_view", T0 + 2 * MIN, sku="A"),
        ev("e4", "add_to_cart", T0 + 3 * MIN, sku="A", platform="ios"),
    ]
    _, out = run(events, T0 + 3 * MIN)
    assert [(o.stage, o.segment) for o in opened(out)] == [
        ("awareness", "unknown"),
        ("consideration", "android"),
        ("decision", "ios"),
    ]
    assert [(c.stage, c.segment) for c in closed(out)] == [
        ("awareness", "unknown"),
        ("consideration", "android"),
    ]


def test_states_stored_before_visits_load_and_count_from_the_next_stage() -> None:
    old, _ = rules.run(
        JourneyState(key="c-1"), [ev("e1", "page_view", T0)], T0, load_model("five-stage")
    )
    stored = old.to_dict()
    del stored["visit"], stored["segment_value"]
    state = JourneyState.from_dict(stored)
    assert state.visit is None and state.segment_value is None
    state, out = rules.run(state, [ev("e2", "product_view", T0 + MIN, sku="A")], T0 + MIN, FIVE)
    assert closed(out) == []  # the awareness stay began before visits were kept
    assert [o.stage for o in opened(out)] == ["consideration"]


def test_state_with_an_open_visit_round_trips() -> None:
    state, _ = run([ev("e1", "page_view", T0, platform="web-desktop", page_type="pricing")], T0)
    again = JourneyState.loads(state.dumps())
    assert again.to_dict() == state.to_dict()
    assert again.visit == state.visit and again.segment_value == "web-desktop"
    assert rules.advance(again, END, FIVE)[1] == rules.advance(state, END, FIVE)[1]


def test_no_visits_without_visit_rules() -> None:
    state, out = run(
        [ev("e1", "page_view", T0), ev("e2", "product_view", T0 + 1)], END, load_model("five-stage")
    )
    assert rules.visit_effects(out) == [] and state.visit is None
    assert rules.split(out)[2] == []  # visits are never taken for recoveries


def test_an_orphan_settled_before_its_merge_closes_its_open_visit_as_merged() -> None:
    orphan, orphan_out = rules.run(
        JourneyState(key="anon:x"),
        [
            ev("o1", "page_view", T0, customer=None, anon="x"),
            ev("o2", "product_view", T0 + MIN, customer=None, anon="x", sku="A"),
        ],
        T0 + MIN,
        FIVE,
    )
    # What the orphan emitted stays emitted: its awareness visit advanced.
    assert [(c.journey_key, c.stage, c.outcome) for c in closed(orphan_out)] == [
        ("anon:x", "awareness", "advanced")
    ]
    into = JourneyState(key="c-1")
    into, out = rules.merge(into, orphan, "anon:x", FIVE)
    [merged] = closed(out)
    assert (merged.journey_key, merged.stage, merged.outcome, merged.cause) == (
        "anon:x",
        "consideration",
        "merged",
        "merge:anon:x",
    )
    assert merged.ended_at == T0 + MIN
    # The orphan's events go on in the customer's journey, in their own visits.
    into, out = rules.advance(into, END, FIVE)
    assert [(c.journey_key, c.stage, c.outcome) for c in closed(out)] == [
        ("c-1", "awareness", "advanced"),
        ("c-1", "consideration", "dropped"),
    ]
    # Merging again changes nothing.
    _, again = rules.merge(into, orphan, "anon:x", FIVE)
    assert again == []


# -- properties --------------------------------------------------------------------

TYPES = [
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "checkout_started",
    "purchase",
    "pos_purchase",
    "store_visit",
    "email_click",
    "support_contact",
    "payment_error",
    "remove_from_cart",
]
STEP = 6 * HOUR


@st.composite
def journeys(
    draw: st.DrawFn, anon: str | None = None, prefix: str = "", max_size: int = 10
) -> list[Touchpoint]:
    ids = draw(
        st.lists(
            st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=max_size, unique=True
        )
    )
    out = []
    for eid in ids:
        type_ = draw(st.sampled_from(TYPES))
        step = draw(st.integers(0, 3) | st.integers(0, 600))
        props: dict[str, Any] = {"sku": "A", "value": 5}
        if type_ == "page_view":
            props["page_type"] = draw(st.sampled_from(["pricing", "home", "comparison"]))
        out.append(
            ev(
                prefix + eid,
                type_,
                T0 + step * STEP,
                customer=None if anon else "c-1",
                anon=anon,
                channel=draw(st.sampled_from(["web", "pos", "email"])),
                platform=draw(st.sampled_from([None, "ios", "android"])),
                **props,
            )
        )
    return out


def check_visits(effects: list, state: JourneyState) -> None:
    """Every visit opened is closed at most once, after it began and within the window."""
    # Counted, not as sets: zero-length visits at one millisecond share (stage, entered_at).
    opens = Counter((o.stage, o.entered_at) for o in opened(effects))
    closes = Counter((c.stage, c.entered_at) for c in closed(effects))
    assert closes <= opens
    still_open = opens - closes
    assert still_open.total() <= 1
    if state.visit is not None:
        assert still_open == Counter([(state.visit.stage, state.visit.entered_at)])
    for c in closed(effects):
        assert 0 <= c.duration_ms <= WEEK * 1000
        assert (c.outcome == "advanced") == (
            c.to_stage is not None and FIVE.rank(c.to_stage) > FIVE.rank(c.stage)
        )


@pytest.mark.parametrize("model", [FIVE, STDC], ids=lambda m: m.name)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_arrival_order_within_lateness_gives_the_same_visits(
    model: StageModel, data: st.DataObject
) -> None:
    events = data.draw(journeys())
    results = []
    for order in (data.draw(st.permutations(events)), data.draw(st.permutations(events))):
        state, effects = JourneyState(key="c-1"), []
        for tp in order:
            state, out = rules.apply(state, tp, model)
            effects += out
            # The watermark moves, but never past an event still to come.
            state, out = rules.advance(state, min(e.timestamp for e in events) - 1, model)
            effects += out
        state, out = rules.advance(state, END, model)
        effects += out
        if model is FIVE:
            check_visits(effects, state)
        results.append((state.to_dict(), rules.visit_effects(effects)))
    assert results[0] == results[1]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_next_due_includes_the_visit_window(data: st.DataObject) -> None:
    events = data.draw(journeys(max_size=6))
    until = T0 + data.draw(st.integers(0, 600)) * STEP
    state, _ = rules.run(JourneyState(key="c-1"), events, until, FIVE)
    due = rules.next_due(state, FIVE)
    if due is None:
        assert state.visit is None and state.pending == []
        return
    if due - 1 > state.settled_until:
        quiet, out = rules.advance(copy.deepcopy(state), due - 1, FIVE)
        assert out == []
        assert {**quiet.to_dict(), "settled_until": 0} == {**state.to_dict(), "settled_until": 0}
    if due > state.settled_until:
        moved, out = rules.advance(copy.deepcopy(state), due, FIVE)
        assert out or len(moved.pending) < len(state.pending)


@settings(max_examples=75, deadline=None)
@given(data=st.data())
def test_merging_a_pending_orphan_gives_the_visits_of_one_journey(data: st.DataObject) -> None:
    own = data.draw(journeys(prefix="c", max_size=6))
    theirs = data.draw(journeys(anon="x", prefix="o", max_size=6))
    into, orphan = JourneyState(key="c-1"), JourneyState(key="anon:x")
    for tp in own:
        into, _ = rules.apply(into, tp, FIVE)
    for tp in theirs:
        orphan, _ = rules.apply(orphan, tp, FIVE)
    into, merged_out = rules.merge(into, orphan, "anon:x", FIVE)
    assert merged_out == []
    into, out = rules.advance(into, END, FIVE)
    reference, ref_out = rules.run(JourneyState(key="c-1"), own + theirs, END, FIVE)
    assert rules.visit_effects(out) == rules.visit_effects(ref_out)
    assert into.visit == reference.visit


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_state_with_visits_round_trips(data: st.DataObject) -> None:
    events = data.draw(journeys())
    until = T0 + data.draw(st.integers(0, 600)) * STEP
    state, _ = rules.run(JourneyState(key="c-1"), events, until, FIVE)
    again = JourneyState.loads(state.dumps())
    assert again.to_dict() == state.to_dict()
    assert rules.advance(again, END, FIVE)[1] == rules.advance(state, END, FIVE)[1]


def test_a_touchpoint_new_to_the_visit_is_reported_when_it_is_seen() -> None:
    events = [
        ev("e1", "page_view", T0, page_type="home"),
        ev("e2", "payment_error", T0 + MIN),
        ev("e3", "payment_error", T0 + 2 * MIN, channel="app"),
        ev("e4", "payment_error", T0 + 3 * MIN),
    ]
    _, out = run(events, T0 + 3 * MIN)
    touched = [e for e in out if isinstance(e, VisitTouched)]
    # Once per name in the visit, whatever the channel, at the time it was seen.
    assert [(t.stage, t.touchpoint, t.at) for t in touched] == [
        ("awareness", "page_view:home", T0),
        ("awareness", "payment_error", T0 + MIN),
    ]
