"""Funnel figures per worker, their combination, percentiles, and the journey view."""

from __future__ import annotations

import orjson
import pytest

from stream.contract import Touchpoint
from stream.journey import rules
from stream.journey.funnel import combine, funnel_figures, journey_view, percentile
from stream.journey.stages import load_model
from stream.journey.state import JourneyState, StageVisit

FIVE = load_model("five-stage")
STDC = load_model("see-think-do-care")
S = 1000  # ms per second
T0 = 1_700_000_000_000


def journey(key: str, *visits: tuple[str, int]) -> JourneyState:
    """A settled journey through ``(stage, entered_at_s)`` visits, the last one current."""
    history = [
        StageVisit(stage, T0 + at * S, None if i + 1 == len(visits) else T0 + visits[i + 1][1] * S)
        for i, (stage, at) in enumerate(visits)
    ]
    state = JourneyState(key=key, history=history)
    if history:
        state.stage, state.stage_entered_at = history[-1].stage, history[-1].entered_at
    return state


BROWSER = journey("c1", ("awareness", 0), ("consideration", 10))
JUMPER = journey("c2", ("purchase", 0))  # straight to purchase: skipped stages count as reached
LAPSED = journey("c3", ("awareness", 0), ("decision", 20), ("purchase", 50), ("lapsed", 100))
NOT_STARTED = journey("c4")  # only pending events: not a customer yet
NEW_CYCLE = journey("c5", ("awareness", 0), ("purchase", 5), ("consideration", 8))
ALL = [BROWSER, JUMPER, LAPSED, NOT_STARTED, NEW_CYCLE]


def test_funnel_figures_count_current_and_reached() -> None:
    fig = funnel_figures(ALL, FIVE)
    assert fig["customers"] == 4
    assert fig["current"] == {
        "awareness": 0,
        "consideration": 2,
        "decision": 0,
        "purchase": 1,
        "loyalty": 0,
        "lapsed": 1,
    }
    assert fig["reached"] == {
        "awareness": 4,
        "consideration": 4,
        "decision": 3,
        "purchase": 3,
        "loyalty": 0,
    }
    assert {k: sorted(v) for k, v in fig["durations"].items()} == {
        "awareness": [5.0, 10.0, 20.0],
        "consideration": [],
        "decision": [30.0],
        "purchase": [3.0, 50.0],
        "loyalty": [],
        "lapsed": [],
    }


def test_combined_report() -> None:
    report = combine([funnel_figures(ALL, FIVE)], FIVE)
    assert report["model"] == "five-stage"
    assert report["customers"] == 4
    assert report["lapsed"] == 1
    assert report["stages"] == [
        {
            "stage": "awareness",
            "customers": 0,
            "reached": 4,
            "median_time_in_stage_s": 10.0,
            "p90_time_in_stage_s": 20.0,
            "next": "consideration",
            "conversion_to_next": 1.0,
            "drop_off": 0,
        },
        {
            "stage": "consideration",
            "customers": 2,
            "reached": 4,
            "median_time_in_stage_s": None,
            "p90_time_in_stage_s": None,
            "next": "decision",
            "conversion_to_next": 0.75,
            "drop_off": 1,
        },
        {
            "stage": "decision",
            "customers": 0,
            "reached": 3,
            "median_time_in_stage_s": 30.0,
            "p90_time_in_stage_s": 30.0,
            "next": "purchase",
            "conversion_to_next": 1.0,
            "drop_off": 0,
        },
        {
            "stage": "purchase",
            "customers": 1,
            "reached": 3,
            "median_time_in_stage_s": 3.0,
            "p90_time_in_stage_s": 50.0,
            "next": "loyalty",
            "conversion_to_next": 0.0,
            "drop_off": 3,
        },
        {
            "stage": "loyalty",
            "customers": 0,
            "reached": 0,
            "median_time_in_stage_s": None,
            "p90_time_in_stage_s": None,
        },
    ]


def test_combining_worker_parts_equals_one_worker() -> None:
    whole = combine([funnel_figures(ALL, FIVE)], FIVE)
    # Workers exchange figures as JSON over HTTP.
    parts = [
        orjson.loads(orjson.dumps(funnel_figures(part, FIVE))) for part in (ALL[:2], ALL[2:], [])
    ]
    assert combine(parts, FIVE) == whole


def test_empty_funnel_has_no_conversion() -> None:
    report = combine([funnel_figures([], STDC)], STDC)
    assert report["customers"] == 0
    assert report["lapsed"] == 0
    assert [s["conversion_to_next"] for s in report["stages"][:-1]] == [None, None, None]
    assert all(s["reached"] == 0 and s["median_time_in_stage_s"] is None for s in report["stages"])


def test_conversion_is_rounded() -> None:
    states = [journey("a", ("see", 0), ("think", 1))] + [
        journey(f"b{i}", ("see", 0)) for i in range(2)
    ]
    (see, think, *_) = combine([funnel_figures(states, STDC)], STDC)["stages"]
    assert (see["reached"], see["conversion_to_next"], see["drop_off"]) == (3, 0.3333, 2)
    assert think["conversion_to_next"] == 0.0


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 90, 7.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([float(i) for i in range(1, 11)], 50, 5.0),
        ([float(i) for i in range(1, 11)], 90, 9.0),
        ([float(i) for i in range(1, 11)], 100, 10.0),
        ([float(i) for i in range(1, 11)], 0, 1.0),
        ([float(i) for i in range(1, 101)], 90, 90.0),
        ([1.23456], 50, 1.235),
    ],
)
def test_percentile_is_nearest_rank(
    values: list[float], pct: float, expected: float | None
) -> None:
    assert percentile(values, pct) == expected


def test_percentile_does_not_reorder_its_input() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


def pending_journey(pending_type: str) -> JourneyState:
    """Settled in awareness, with one event of ``pending_type`` not yet settled."""
    state, _ = rules.run(
        JourneyState(key="c1"),
        [Touchpoint(event_id="a", type="page_view", channel="web", timestamp=T0, customer_id="c1")],
        T0,
        FIVE,
    )
    later = Touchpoint(
        event_id="b", type=pending_type, channel="web", timestamp=T0 + 5, customer_id="c1"
    )
    state, _ = rules.apply(state, later, FIVE)
    return state


def test_journey_view_shows_the_provisional_stage_without_settling() -> None:
    state = pending_journey("add_to_cart")
    before = state.to_dict()
    view = journey_view(state, FIVE)
    assert view["stage"] == "awareness"
    assert view["provisional_stage"] == "decision"
    assert view["pending_events"] == 1
    assert "pending" not in view and "seen_ids" not in view
    assert state.to_dict() == before  # the view never changes the journey

    state, _ = rules.advance(state, T0 + 5, FIVE)
    view = journey_view(state, FIVE)
    assert view["stage"] == view["provisional_stage"] == "decision"
    assert view["pending_events"] == 0


def test_provisional_stage_of_a_pending_purchase_is_purchase() -> None:
    view = journey_view(pending_journey("purchase"), FIVE)
    assert view["provisional_stage"] == "purchase"
