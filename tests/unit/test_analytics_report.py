"""The journey map: impact verdicts, alerts, and reports that do not depend on arrival order."""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.analytics import alerts
from stream.analytics.aggregate import Aggregate, merge
from stream.analytics.config import check, map_model
from stream.analytics.impact import INSUFFICIENT, MOMENT_OF_TRUTH, NEUTRAL, PAIN_POINT, impact
from stream.analytics.offline import aggregate
from stream.analytics.report import report
from stream.contract import Touchpoint
from stream.defaults import ConfigError
from stream.journey.replay import END, run_oracle
from stream.journey.stages import load_model, with_visits
from stream.journey.visits import VisitClosed, VisitOpened
from stream.settings import AnalyticsSettings, Settings, load_settings
from tests.builders import touchpoint

A = AnalyticsSettings()
FIVE = with_visits(load_model("five-stage"), 7 * 86_400, "page_type", "context.platform")
T0 = 1_767_225_600_000
MIN = 60_000
DAY = 86_400_000
LATENESS = 10 * MIN


# -- impact --------------------------------------------------------------------------


def test_a_clear_lift_is_a_moment_of_truth() -> None:
    i = impact(
        visits_with=200, advanced_with=160, visits_without=800, advanced_without=320, min_visits=20
    )
    assert i.verdict == MOMENT_OF_TRUTH
    assert i.lift == pytest.approx(2.0)
    assert i.ci_low is not None and i.ci_high is not None and 1 < i.ci_low < 2 < i.ci_high


def test_a_clear_drop_is_a_pain_point() -> None:
    i = impact(
        visits_with=200, advanced_with=40, visits_without=800, advanced_without=480, min_visits=20
    )
    assert i.verdict == PAIN_POINT
    assert i.lift == pytest.approx(1 / 3)
    assert i.ci_high is not None and i.ci_high < 1


def test_no_difference_is_neutral() -> None:
    i = impact(
        visits_with=300, advanced_with=150, visits_without=700, advanced_without=350, min_visits=20
    )
    assert i.verdict == NEUTRAL
    assert i.ci_low is not None and i.ci_high is not None and i.ci_low < 1 < i.ci_high


def test_a_small_sample_is_insufficient_even_with_a_big_lift() -> None:
    i = impact(
        visits_with=10, advanced_with=10, visits_without=990, advanced_without=100, min_visits=20
    )
    assert i.verdict == INSUFFICIENT
    assert i.lift == pytest.approx(9.9)
    # A touchpoint in every visit has nothing to compare with.
    everywhere = impact(500, 250, 0, 0, min_visits=20)
    assert (everywhere.verdict, everywhere.lift, everywhere.ci_low) == (INSUFFICIENT, None, None)


def test_no_advance_without_it_has_no_lift_but_an_interval() -> None:
    i = impact(
        visits_with=100, advanced_with=30, visits_without=100, advanced_without=0, min_visits=20
    )
    assert i.lift is None
    assert i.verdict == MOMENT_OF_TRUTH


# -- alerts --------------------------------------------------------------------------


def test_an_alert_opens_on_the_incident_day_and_closes_after() -> None:
    # 100 visits a day, 60% advance, except days 20 and 21 (20%).
    totals = dict.fromkeys(range(40), 100)
    hits = {d: 20 if d in (20, 21) else 60 for d in range(40)}
    episodes = alerts.scan(
        hits,
        totals,
        list(range(15, 41)),
        window=1,
        baseline=14,
        level=0.001,
        min_count=20,
        direction=alerts.LOWER,
    )
    assert [(e.opened, e.closed) for e in episodes] == [(21, 23)]
    [e] = episodes
    assert e.rate == pytest.approx(0.2)
    assert 0.5 < e.baseline_rate < 0.6 and e.p_value < 0.001


def test_no_alert_below_the_minimum_count_or_the_other_way() -> None:
    totals = dict.fromkeys(range(30), 10)
    hits = {d: 0 if d == 20 else 6 for d in range(30)}
    args: dict[str, Any] = dict(window=1, baseline=14, level=0.001, min_count=20)
    assert alerts.scan(hits, totals, list(range(15, 31)), direction=alerts.LOWER, **args) == []
    big = {d: 100 for d in range(30)}
    better = {d: 90 if d == 20 else 50 for d in range(30)}
    assert alerts.scan(better, big, list(range(15, 31)), direction=alerts.LOWER, **args) == []
    assert alerts.scan(better, big, list(range(15, 31)), direction=alerts.HIGHER, **args)


def test_report_alerts_use_same_day_cohorts_and_only_complete_buckets() -> None:
    agg = Aggregate.for_settings(A)
    rng = random.Random(1)
    for day in range(25):
        for i in range(60):
            key = f"d{day}-{i}"
            start = T0 + day * DAY + i * MIN
            agg.add(VisitOpened(key, "decision", start, "ios", True))
            fails = day in (20, 21) or rng.random() < 0.4
            if not fails:
                agg.add(
                    VisitClosed(
                        key, "decision", start, start + 5 * MIN, "advanced", "purchase", "e", "ios"
                    )
                )
    rep = report(agg, FIVE)
    drops = [a for a in rep["alerts"] if a["kind"] == "stage_advance_drop"]
    assert [(a["stage"], a["opened_at"], a["closed_at"]) for a in drops] == [
        ("decision", "2026-01-22T00:00:00.000Z", "2026-01-24T00:00:00.000Z")
    ]
    # As of the middle of day 21 only day 20 is complete: the alert is open.
    as_of = report(agg, FIVE, now=T0 + 21 * DAY + DAY // 2)
    assert [
        (a["opened_at"], a["closed_at"])
        for a in as_of["alerts"]
        if a["kind"] == "stage_advance_drop"
    ] == [("2026-01-22T00:00:00.000Z", None)]


# -- reports ---------------------------------------------------------------------------


def ev(
    eid: str, type_: str, at: int, customer: str, platform: str = "ios", **props: Any
) -> Touchpoint:
    return touchpoint(eid, type_, at, customer=customer, context={"platform": platform}, **props)


def test_report_counts_stages_flows_open_visits_and_segments() -> None:
    events = [
        ev("a1", "page_view", T0, "c1"),
        ev("a2", "product_view", T0 + MIN, "c1", sku="A"),
        ev("a3", "add_to_cart", T0 + 2 * MIN, "c1", sku="A"),
        ev("b1", "page_view", T0, "c2", platform="android"),
        ev("c1", "page_view", T0 + 9 * DAY, "c3"),
    ]
    oracle = run_oracle(events, FIVE, LATENESS, T0 + 9 * DAY + MIN)
    rep = report(aggregate(oracle.visits, A), FIVE)
    stages = {s["stage"]: s for s in rep["stages"]}
    assert (stages["awareness"]["advanced"], stages["awareness"]["dropped"]) == (1, 1)
    assert stages["awareness"]["open"] == 1  # c3's, begun on day 9
    assert stages["awareness"]["median_time_to_advance_s"] == pytest.approx(60, rel=0.02)
    assert (stages["decision"]["open"], stages["decision"]["dropped"]) == (0, 1)
    assert rep["customers"] == 3
    assert {(f["from"], f["to"]): f["count"] for f in rep["flows"]} == {
        ("awareness", "consideration"): 1,
        ("awareness", "dropped"): 1,
        ("consideration", "decision"): 1,
        ("decision", "dropped"): 1,
    }
    assert rep["segments"]["values"] == [
        {"value": "ios", "visits": 4},
        {"value": "android", "visits": 1},
    ]
    android = report(aggregate(oracle.visits, A), FIVE, segment="context.platform:android")
    assert {s["stage"]: s["dropped"] for s in android["stages"]}["awareness"] == 1
    assert android["customers"] == 1
    with pytest.raises(ValueError, match="cut by"):
        report(aggregate(oracle.visits, A), FIVE, segment="context.store:x")
    window = report(aggregate(oracle.visits, A), FIVE, since=T0 + 5 * DAY)
    assert window["window"]["since"] == "2026-01-06T00:00:00.000Z"
    assert {s["stage"]: s["visits"] for s in window["stages"]}["awareness"] == 2


@st.composite
def shop_logs(draw: st.DrawFn) -> list[Touchpoint]:
    types = [
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "checkout_started",
        "purchase",
        "payment_error",
        "support_contact",
    ]
    out = []
    for c in range(draw(st.integers(1, 6))):
        for i in range(draw(st.integers(1, 8))):
            type_ = draw(st.sampled_from(types))
            at = T0 + draw(st.integers(0, 30)) * 5 * MIN + draw(st.sampled_from([0, 9 * DAY]))
            out.append(
                ev(
                    f"e{c}-{i}",
                    type_,
                    at,
                    f"c{c}",
                    platform=draw(st.sampled_from(["ios", "android"])),
                    sku="A",
                    page_type=draw(st.sampled_from(["home", "comparison"])),
                )
            )
    return sorted(out, key=lambda e: (e.timestamp, e.event_id))


def within_lateness(events: list[Touchpoint], rng: random.Random) -> list[Touchpoint]:
    """A shuffled arrival order in which no event comes after the watermark passed it.

    An event may come next only if it is less than the lateness newer than the
    oldest one still to come, so that one is never behind the watermark.
    """
    pending = list(events)
    out: list[Touchpoint] = []
    while pending:
        oldest = min(e.timestamp for e in pending)
        e = rng.choice([e for e in pending if e.timestamp < oldest + LATENESS])
        pending.remove(e)
        out.append(e)
    return out


@settings(max_examples=60, deadline=None)
@given(events=shop_logs(), seed=st.integers(0, 10_000))
def test_permutations_within_the_lateness_give_the_same_report(
    events: list[Touchpoint], seed: int
) -> None:
    rng = random.Random(seed)
    reports = []
    for order in (events, within_lateness(events, rng), within_lateness(events, rng)):
        oracle = run_oracle(order, FIVE, LATENESS, END)
        assert all(s.late_events == 0 for s in oracle.final_states())
        reports.append(report(aggregate(oracle.visits, A), FIVE))
    assert reports[0] == reports[1] == reports[2]


def test_per_partition_aggregates_of_a_log_merge_into_the_one_pass_report() -> None:
    events = [
        ev(f"e{c}-{i}", t, T0 + c * 7 * MIN + i * MIN + (c % 4) * DAY, f"c{c}", platform=p, sku="A")
        for c, p in zip(range(60), ["ios", "android", "desktop"] * 20, strict=True)
        for i, t in enumerate(["page_view", "product_view", "add_to_cart", "purchase"][: 1 + c % 4])
    ]
    oracle = run_oracle(events, FIVE, LATENESS, END)
    whole = aggregate(oracle.visits, A)
    parts = [Aggregate.for_settings(A) for _ in range(4)]
    for v in oracle.visits:
        parts[zlib.crc32(v.journey_key.encode()) % 4].add(v)
    merged = merge(merge(parts[3], parts[1]), merge(parts[0], parts[2]))
    assert report(merged, FIVE) == report(whole, FIVE)


# -- settings --------------------------------------------------------------------------


def test_analytics_settings_come_from_the_environment_and_are_checked() -> None:
    s = load_settings(
        environ={"JOURNEY_ANALYTICS_VISIT_WINDOW_S": "3600", "JOURNEY_ANALYTICS_SEGMENT": "channel"}
    )
    assert s.analytics.visit_window_s == 3600 and s.analytics.segment == "channel"
    model = map_model(s)
    assert model.visits is not None and model.visits.window_ms == 3_600_000
    with pytest.raises(ConfigError, match="alert_window_s"):
        check(AnalyticsSettings(alert_window_s=3600))
    with pytest.raises(ConfigError, match="segment"):
        map_model(Settings(analytics=AnalyticsSettings(segment="cookie")))
