"""The visit aggregate and its sketches: exact merges in any order, plain JSON, bounds."""

from __future__ import annotations

import random
from functools import reduce

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.analytics.aggregate import OTHER, Aggregate, merge
from stream.analytics.report import report
from stream.analytics.sketch import RELATIVE_ACCURACY, DurationSketch
from stream.journey.stages import load_model, with_visits
from stream.journey.visits import VisitClosed, VisitEffect, VisitOpened, VisitTouched

FIVE = with_visits(load_model("five-stage"), 7 * 86_400, "page_type", "context.platform")
T0 = 1_767_225_600_000
DAY = 86_400_000
STAGES = ["awareness", "consideration", "decision", "purchase", "loyalty"]


def shape(**kw: int) -> Aggregate:
    return Aggregate(segment="context.platform", **kw)


@st.composite
def visit_effects(draw: st.DrawFn) -> list[VisitEffect]:
    """Visits of many journeys: each opened, maybe touched, maybe closed."""
    out: list[VisitEffect] = []
    for i in range(draw(st.integers(1, 30))):
        key = f"j{i}"
        stage_i = draw(st.integers(0, 3))
        stage = STAGES[stage_i]
        entered = T0 + draw(st.integers(0, 20 * DAY))
        segment = draw(st.sampled_from(["ios", "android", "desktop", "tv", "car", "unknown"]))
        out.append(VisitOpened(key, stage, entered, segment, first=draw(st.booleans())))
        names = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True))
        pairs = tuple(sorted((n, draw(st.sampled_from(["web", "pos"]))) for n in names))
        for n in names:
            out.append(
                VisitTouched(key, stage, entered, segment, n, entered + draw(st.integers(0, DAY)))
            )
        outcome = draw(st.sampled_from(["advanced", "dropped", "merged", None]))
        if outcome is None:
            continue
        ended = entered + draw(st.integers(0, 7 * DAY))
        to = STAGES[stage_i + 1] if outcome == "advanced" else None
        out.append(VisitClosed(key, stage, entered, ended, outcome, to, "x", segment, pairs))
    return out


def one_pass(effects: list[VisitEffect], **kw: int) -> Aggregate:
    agg = shape(**kw)
    agg.add_all(effects)
    return agg


@settings(max_examples=150, deadline=None)
@given(
    effects=visit_effects(),
    parts=st.integers(1, 5),
    capacity=st.sampled_from([(2, 3, 5), (40, 256, 90), (1, 1, 3)]),
    seed=st.integers(0, 10_000),
)
def test_merging_partitions_in_any_order_and_grouping_equals_one_pass(
    effects: list[VisitEffect], parts: int, capacity: tuple[int, int, int], seed: int
) -> None:
    kw = dict(
        segment_capacity=capacity[0], touchpoint_capacity=capacity[1], retention_buckets=capacity[2]
    )
    whole = one_pass(effects, **kw)
    rng = random.Random(seed)
    # Split as partitions would: by journey key, each partition in its own order.
    by_part: list[list[VisitEffect]] = [[] for _ in range(parts)]
    owner = {e.journey_key: rng.randrange(parts) for e in effects}
    for e in effects:
        by_part[owner[e.journey_key]].append(e)
    aggs = [one_pass(rng.sample(p, len(p)), **kw) for p in by_part]
    rng.shuffle(aggs)
    left = reduce(merge, aggs)
    right = aggs[0] if len(aggs) == 1 else merge(aggs[0], reduce(merge, aggs[1:]))
    # Stored and read back as the stream would, bucket by bucket.
    stored = [
        Aggregate.from_dict(orjson.loads(orjson.dumps(a.to_dict(buckets=[b]))))
        for a in aggs
        for b in a.buckets
    ]
    rng.shuffle(stored)
    rebuilt = reduce(merge, stored, shape(**kw))
    for got in (left, right, rebuilt):
        assert got.to_dict() == whole.to_dict()
    assert report(left, FIVE) == report(whole, FIVE)


@settings(max_examples=100, deadline=None)
@given(effects=visit_effects())
def test_aggregate_round_trips_through_json(effects: list[VisitEffect]) -> None:
    agg = one_pass(effects)
    again = Aggregate.from_dict(orjson.loads(orjson.dumps(agg.to_dict())))
    assert again.to_dict() == agg.to_dict()
    assert report(again, FIVE) == report(agg, FIVE)


def test_segment_values_beyond_the_capacity_add_up_as_other() -> None:
    agg = shape(segment_capacity=2)
    for i, value in enumerate(["a", "b", "c", "d", "e"]):
        agg.add(VisitOpened(f"j{i}", "awareness", T0, value, True))
    [bucket] = agg.buckets.values()
    assert len(bucket) == 3 and OTHER in bucket
    assert sum(s["awareness"].opened for s in bucket.values()) == 5
    assert bucket[OTHER]["awareness"].opened == 3


def test_touchpoints_beyond_the_capacity_are_counted_as_dropped() -> None:
    agg = shape(touchpoint_capacity=2)
    pairs = (("a", "web"), ("b", "web"), ("c", "web"))
    agg.add(VisitClosed("j", "awareness", T0, T0 + 1, "dropped", None, "window", "x", pairs))
    [bucket] = agg.buckets.values()
    counts = bucket["x"]["awareness"]
    assert len(counts.touchpoints) == 2
    # Six keys (three names, each in web and in any channel) for one visit: four dropped.
    assert counts.touchpoints_dropped == 4


def test_buckets_behind_the_retention_are_forgotten() -> None:
    agg = shape(retention_buckets=3)
    for day in range(6):
        agg.add(VisitOpened(f"j{day}", "awareness", T0 + day * DAY, "x", True))
    assert sorted(agg.buckets) == [agg.bucket_of(T0 + d * DAY) for d in (3, 4, 5)]
    assert agg.add(VisitOpened("late", "awareness", T0, "x", True)) is None
    assert len(agg.to_dict()["buckets"]) == 3


def test_aggregates_of_other_shapes_do_not_merge() -> None:
    try:
        merge(shape(bucket_s=3600), shape())
    except ValueError as exc:
        assert "shape" in str(exc)
    else:
        raise AssertionError("merged aggregates of different bucket sizes")


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.integers(0, 7 * DAY), min_size=1, max_size=300),
    cut=st.integers(0, 300),
    seed=st.integers(0, 1000),
)
def test_sketches_merge_exactly_and_keep_their_accuracy(
    values: list[int], cut: int, seed: int
) -> None:
    whole = DurationSketch()
    for v in values:
        whole.add(v)
    shuffled = random.Random(seed).sample(values, len(values))
    a, b = DurationSketch(), DurationSketch()
    for v in shuffled[:cut]:
        a.add(v)
    for v in shuffled[cut:]:
        b.add(v)
    b.merge(a)
    assert b.to_dict() == whole.to_dict()
    again = DurationSketch.from_dict(orjson.loads(orjson.dumps(whole.to_dict())))
    assert again == whole
    ordered = sorted(values)
    for q in (0.5, 0.9):
        exact = ordered[int(q * (len(ordered) - 1))]
        got = whole.quantile(q)
        assert got is not None
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact + 1e-9
