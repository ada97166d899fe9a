"""The chaos test's fault schedule (tests/chaos.py): reproducible and complete."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from tests.chaos import KILL_DISPATCHER, KILL_WORKER, PAUSE_WORKER, describe, fault_schedule

SESSION_S = 6.0


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert fault_schedule(7, 75, SESSION_S) == fault_schedule(7, 75, SESSION_S)
    assert fault_schedule(7, 75, SESSION_S) != fault_schedule(8, 75, SESSION_S)


@given(st.integers(min_value=0, max_value=2**32), st.floats(min_value=0, max_value=900))
def test_every_schedule_kills_with_a_wipe_pauses_twice_and_kills_the_dispatcher(
    seed: int, length_s: float
) -> None:
    faults = fault_schedule(seed, length_s, SESSION_S)
    kinds = Counter(f.kind for f in faults)
    assert any(f.kind == KILL_WORKER and f.wipe for f in faults)
    assert kinds[PAUSE_WORKER] >= 2 and kinds[KILL_DISPATCHER] >= 1
    # One at a time, each after the previous one ended.
    for before, after in itertools.pairwise(faults):
        assert after.at_s >= before.at_s + before.hold_s + 4.0 - 0.2
    for f in faults:
        if f.kind == PAUSE_WORKER:
            assert f.hold_s > SESSION_S and f.target in ("worker-1", "worker-2")
        elif f.kind == KILL_DISPATCHER:
            assert f.target == "dispatcher" and not f.wipe


def test_a_long_phase_is_filled_with_faults_up_to_its_end() -> None:
    faults = fault_schedule(3, 600, SESSION_S)
    assert len(faults) > 20
    assert faults[-1].at_s + faults[-1].hold_s <= 600
    assert faults[-1].at_s > 600 - 40


def test_the_printed_schedule_says_how_to_run_it_again() -> None:
    faults = fault_schedule(42, 75, SESSION_S)
    text = describe(42, 75, faults)
    assert "make chaos SEED=42 CHAOS_S=75" in text
    assert len(text.splitlines()) == len(faults) + 1
