"""Partition watermarks and the index of journeys due for a check."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.journey.clock import NEVER, DueIndex, MergedClock, PartitionClock

T0 = 1_700_000_000_000
LATE = 60_000
IDLE = 2_000


def test_no_events_no_watermark_until_idle_and_caught_up() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE, last_activity_ms=T0)
    assert clock.watermark(T0 + 1, caught_up=True) == NEVER
    assert clock.watermark(T0 + IDLE, caught_up=False) == NEVER
    assert clock.watermark(T0 + IDLE, caught_up=True) == T0 + IDLE - LATE


def test_watermark_is_newest_event_time_minus_lateness() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    clock.observe(T0, now_ms=T0)
    assert clock.watermark(T0, caught_up=False) == T0 - LATE
    clock.observe(T0 + 500, now_ms=T0 + 1)
    assert clock.watermark(T0 + 1, caught_up=False) == T0 + 500 - LATE


def test_watermark_never_goes_backwards() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    clock.observe(T0 + 10_000, now_ms=T0)
    assert clock.watermark(T0, caught_up=False) == T0 + 10_000 - LATE
    clock.observe(T0, now_ms=T0 + 1)  # an older event
    assert clock.watermark(T0 + 1, caught_up=False) == T0 + 10_000 - LATE
    assert clock.max_event_time == T0 + 10_000


def test_idle_caught_up_partition_follows_the_wall_clock() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    clock.observe(T0, now_ms=T0)
    assert clock.watermark(T0 + IDLE - 1, caught_up=True) == T0 - LATE  # not idle yet
    assert clock.watermark(T0 + IDLE, caught_up=True) == T0 + IDLE - LATE
    assert clock.watermark(T0 + 100_000, caught_up=True) == T0 + 100_000 - LATE
    # Behind again (a backlog arrived): the watermark holds, never falls back to events.
    clock.observe(T0 + 1, now_ms=T0 + 100_001)
    assert clock.watermark(T0 + 100_001, caught_up=False) == T0 + 100_000 - LATE
    assert clock.watermark(T0 + 200_000, caught_up=True) == T0 + 200_000 - LATE


def test_not_caught_up_partition_ignores_the_wall_clock() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    clock.observe(T0, now_ms=T0)
    assert clock.watermark(T0 + 10 * IDLE, caught_up=False) == T0 - LATE


def test_activity_resets_idleness() -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    clock.observe(T0 - 5 * LATE, now_ms=T0)  # replaying old events
    clock.observe(T0 - 5 * LATE, now_ms=T0 + IDLE)
    assert clock.watermark(T0 + IDLE + 1, caught_up=True) == T0 - 6 * LATE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(10**6), 10**6),  # event time offset
            st.integers(0, 5_000),  # wall-clock step
            st.booleans(),  # caught up
        ),
        max_size=30,
    )
)
def test_watermark_is_monotonic_and_bounded(steps: list[tuple[int, int, bool]]) -> None:
    clock = PartitionClock(LATE, idle_ms=IDLE)
    now, last, newest = T0, NEVER, NEVER
    for offset, dt, caught_up in steps:
        now += dt
        clock.observe(T0 + offset, now_ms=now)
        newest = max(newest, T0 + offset)
        wm = clock.watermark(now, caught_up)
        assert wm >= last
        assert wm >= newest - LATE
        assert wm <= max(newest, now) - LATE
        last = wm


def test_due_index_pops_in_due_order_up_to_the_watermark() -> None:
    due = DueIndex()
    due.schedule("b", 20)
    due.schedule("a", 10)
    due.schedule("c", 30)
    assert len(due) == 3
    assert due.next_due() == 10
    assert due.pop_due(5) == []
    assert due.pop_due(20) == ["a", "b"]
    assert due.next_due() == 30
    assert len(due) == 1


def test_rescheduling_skips_stale_entries() -> None:
    due = DueIndex()
    due.schedule("a", 10)
    due.schedule("a", 50)  # later: the entry at 10 is stale
    due.schedule("b", 20)
    due.schedule("b", 5)  # earlier
    assert len(due) == 2
    assert due.next_due() == 5
    assert due.pop_due(20) == ["b"]
    assert due.next_due() == 50
    assert due.pop_due(100) == ["a"]
    assert due.pop_due(100) == []
    assert due.next_due() is None
    assert len(due) == 0


def test_schedule_none_unschedules() -> None:
    due = DueIndex()
    due.schedule("a", 10)
    due.schedule("a", None)
    due.schedule("gone", None)
    assert due.next_due() is None
    assert due.pop_due(100) == []
    due.schedule("a", 10)  # again, after the stale entry
    assert due.pop_due(100) == ["a"]


def test_back_and_forth_rescheduling_pops_once() -> None:
    due = DueIndex()
    for at in (10, 20, 10, 20, 10):
        due.schedule("a", at)
    assert due.pop_due(100) == ["a"]
    assert due.next_due() is None


def test_pop_due_limit_leaves_the_rest() -> None:
    due = DueIndex()
    for i in range(5):
        due.schedule(f"k{i}", i)
    assert due.pop_due(10, limit=2) == ["k0", "k1"]
    assert due.pop_due(10) == ["k2", "k3", "k4"]


def test_clear() -> None:
    due = DueIndex()
    due.schedule("a", 1)
    due.clear()
    assert len(due) == 0 and due.next_due() is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.none() | st.integers(0, 50)),
        max_size=40,
    ),
    st.integers(0, 60),
)
def test_due_index_matches_a_plain_dict(ops: list[tuple[str, int | None]], watermark: int) -> None:
    due, model = DueIndex(), {}
    for key, at in ops:
        due.schedule(key, at)
        if at is None:
            model.pop(key, None)
        else:
            model[key] = at
    assert len(due) == len(model)
    assert due.next_due() == (min(model.values()) if model else None)
    popped = due.pop_due(watermark)
    expected = sorted((at, k) for k, at in model.items() if at <= watermark)
    assert popped == [k for _, k in expected]
    remaining = {k: at for k, at in model.items() if at > watermark}
    assert len(due) == len(remaining)
    assert due.next_due() == (min(remaining.values()) if remaining else None)


# -- merged clock: a journey partition's watermark from every source's marks --------


def test_merged_clock_waits_for_every_source() -> None:
    clock = MergedClock(LATE, sources=3)
    assert clock.update(0, T0, now_ms=1) == NEVER
    assert clock.update(1, T0 + 5_000, now_ms=2) == NEVER
    assert clock.update(2, T0 + 9_000, now_ms=3) == T0 - LATE
    assert clock.passed_at(T0 - LATE) == 3
    assert clock.passed_at(T0) is None


def test_merged_clock_follows_the_slowest_source_and_never_goes_back() -> None:
    clock = MergedClock(LATE, sources=2)
    clock.update(0, T0 + 10_000, now_ms=1)
    clock.update(1, T0, now_ms=2)
    assert clock.watermark() == T0 - LATE
    clock.update(1, T0 - 50_000, now_ms=3)  # an older mark (a re-sent one) is ignored
    assert clock.watermark() == T0 - LATE
    clock.update(1, T0 + 20_000, now_ms=4)
    assert clock.watermark() == T0 + 10_000 - LATE
    assert clock.passed_at(T0 + 1 - LATE) == 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6)), max_size=40))
def test_merged_clock_is_min_of_latest_marks_minus_lateness(
    updates: list[tuple[int, int]],
) -> None:
    clock = MergedClock(LATE, sources=4)
    best: dict[int, int] = {}
    previous = NEVER
    for i, (source, mark) in enumerate(updates):
        best[source] = max(best.get(source, NEVER), mark)
        wm = clock.update(source, mark, now_ms=i)
        want = min(best.values()) - LATE if len(best) == 4 else NEVER
        assert wm == max(previous, want)
        previous = wm


def test_a_source_mark_runs_at_most_max_ahead_of_the_wall_clock() -> None:
    clock = PartitionClock(0, idle_ms=IDLE, max_ahead_ms=300_000)
    clock.observe(4_102_444_799_000, now_ms=T0)  # 2099
    assert clock.watermark(T0, caught_up=False) == T0 + 300_000
    clock.observe(T0 + 10, now_ms=T0 + 1)
    assert clock.watermark(T0 + 1, caught_up=False) == T0 + 300_000


def test_a_merged_clock_counts_a_mark_at_most_max_ahead_of_the_wall_clock() -> None:
    clock = MergedClock(LATE, sources=2, max_ahead_ms=300_000)
    clock.update("a", 4_102_444_799_000, now_ms=T0)
    assert clock.update("b", 4_102_444_799_000, now_ms=T0) == T0 + 300_000 - LATE
