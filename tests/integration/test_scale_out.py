"""Scale-out on one machine: two workers in one consumer group, then one leaves.

10,000 simulated customers' events flow through two worker processes sharing
the partitions of the embedded broker. Their results must equal the oracle
(``journey replay``): the same transitions, the same follow-up triggers, the same
final journeys, and the
stage-population gauge summed over the workers equal to the oracle's count per
stage. Either worker answers ``GET /customers/{id}/journey`` for any customer
(Faust routes the request to the owner). Then one worker is stopped: the other
takes over its partitions, restores their journeys from the changelog (its own
store never held them) and still reports every journey and population right.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stream.journey.model import journey_model
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import wait_for
from tests.integration.test_journey_oracle import (
    LATENESS_S,
    comparable,
    oracle_for,
    oracle_transitions,
    oracle_triggers,
    produce,
    simulated_log,
    streamed_transitions,
    streamed_triggers,
)
from tests.procs import Worker, http_get

CUSTOMERS = 10_000

pytestmark = pytest.mark.slow


@pytest.fixture
def group_settings(settings: Settings) -> Settings:
    s = replace(settings, journey=replace(settings.journey, allowed_lateness_s=LATENESS_S))
    ensure_topics(s)
    return s


def with_data_dir(settings: Settings, path: Path) -> Settings:
    return replace(settings, worker=replace(settings.worker, data_dir=str(path)))


def owned(worker: Worker, topic: str) -> set[int]:
    status, body = http_get(f"{worker.url}/ready")
    if status != 200:
        return set()
    return {int(p) for t, p in (s.rsplit(":", 1) for s in body["active_partitions"]) if t == topic}


def populations(workers: list[Worker], stages: list[str]) -> dict[str, float]:
    return {s: sum(w.metric("journey_stage_customers", stage=s) for w in workers) for s in stages}


def journey_mismatches(worker: Worker, wanted: dict[str, dict[str, Any]]) -> list[tuple]:
    """Customers whose journey, as ``worker`` answers it, differs from the oracle's."""

    def check(key: str) -> tuple | None:
        status, body = worker.api(f"/customers/{key}/journey", timeout=30)
        if status != 200:
            return (key, status, body)
        got = comparable(body)
        return None if got == wanted[key] else (key, got, wanted[key])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(check, sorted(wanted)) if r is not None]


def test_two_workers_share_partitions_and_one_takes_over(
    group_settings: Settings, tmp_path: Path
) -> None:
    s = group_settings
    resolved = s.topics.resolved
    model = journey_model(s)
    events = simulated_log(customers=CUSTOMERS, seed=23)
    oracle = oracle_for(events, s)
    expected = oracle_transitions(oracle)
    want_triggers = oracle_triggers(oracle)
    want_states = {st.key: comparable(st.summary()) for st in oracle.final_states()}
    want_population = dict.fromkeys(model.all_stages, 0.0)
    for n, count in Counter(st.stage for st in oracle.final_states()).items():
        want_population[n] += count

    # The log is on the broker before the workers start, as in the oracle test:
    # events ten days old are late for a stream that has already idled up to
    # the wall clock.
    produce(s, events)
    first = Worker(with_data_dir(s, tmp_path / "w1-data"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2-data"), tmp_path / "worker-2.log")
    try:
        started = time.monotonic()
        first.start()
        second.start()
        first.wait_ready()
        second.wait_ready()
        # One group, partitions split between the two (each owns some, together all).
        split = wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: (
                bool(o[0])
                and bool(o[1])
                and not (o[0] & o[1])
                and o[0] | o[1] == set(range(s.topics.partitions))
            ),
            timeout_s=60,
        )
        # Everything settles once every source partition's mark has passed: a
        # worker done with its own input waits for the input of the other.
        wait_for(
            lambda: sum(w.metric("journey_stage_transitions_total") for w in (first, second)),
            lambda n: n >= len(expected),
            timeout_s=240,
            every_s=1.0,
        )
        elapsed = time.monotonic() - started
        assert streamed_transitions(s) == expected
        # Follow-up triggers: exactly once each, exactly the oracle's.
        triggers = wait_for(
            lambda: streamed_triggers(s),
            lambda got: len(got) >= len(want_triggers),
            timeout_s=30,
        )
        assert sorted(triggers) == sorted(want_triggers)
        # Each worker applied events: the work really was shared.
        applied = [w.metric("journey_events_applied_total") for w in (first, second)]
        assert all(n > 0 for n in applied), applied
        assert sum(applied) >= len(events)
        wait_for(
            lambda: populations([first, second], model.all_stages),
            lambda got: got == want_population,
            timeout_s=15,
        )
        # Per-partition series only for the partitions each worker owns now (the
        # first worker may have owned all of them before the second joined).
        for worker, mine in zip((first, second), split, strict=True):
            for name, labels in (
                ("journey_stage_customers", {}),
                ("journey_watermark_lag_seconds", {}),
                ("journey_consumer_lag_messages", {"topic": resolved}),
            ):
                assert series_partitions(worker, name, **labels) == mine, (name, mine)
        # Routing: either worker answers for customers the other owns.
        sample = dict(random.Random(1).sample(sorted(want_states.items()), 300))
        for worker in (first, second):
            assert journey_mismatches(worker, sample) == []

        # The second worker leaves; the first takes its partitions over and restores
        # their journeys from the changelog into a store that never held them.
        assert second.stop() == 0
        wait_for(
            lambda: owned(first, resolved),
            lambda o: o == set(range(s.topics.partitions)),
            timeout_s=90,
            every_s=0.5,
        )
        try:
            wait_for(
                lambda: populations([first], model.all_stages),
                lambda got: got == want_population,
                timeout_s=30,
            )
        except AssertionError as exc:
            wrong = journey_mismatches(first, want_states)
            raise AssertionError(
                f"{exc}\nwanted: {want_population}\n{len(wrong)} journeys differ: {wrong[:5]}"[
                    :6000
                ]
            ) from None
        assert journey_mismatches(first, want_states) == []
        # Taking over re-emits nothing new: the same transitions and triggers.
        assert streamed_transitions(s) == expected
        assert set(streamed_triggers(s)) == set(want_triggers)
        print(
            f"{len(events)} events of {CUSTOMERS} customers settled in {elapsed:.1f}s "
            f"over two workers (applied {applied}); partitions {split}"
        )
    finally:
        second.stop()
        first.stop()


def test_idle_worker_waits_for_input_another_worker_has_not_read(
    group_settings: Settings, tmp_path: Path
) -> None:
    """A worker done with its own input must not let its watermark follow the clock
    while another worker of the group still has touchpoints to forward to it.

    The log is on the broker before the workers start. As soon as the two
    share the partitions, the first worker is frozen (SIGSTOP, well within the
    session timeout, so the group keeps it): the second reads its own share to
    the end and sits idle. Its watermark must stay with the events (or stay
    unset); once the first worker resumes, everything settles as the oracle says.
    """
    s = replace(
        group_settings,
        broker=replace(group_settings.broker, session_timeout_s=20.0),
        journey=replace(group_settings.journey, idle_s=1.0),
    )
    events = simulated_log(customers=3000, seed=41)
    oracle = oracle_for(events, s)
    expected = oracle_transitions(oracle)
    produce(s, events)
    first = Worker(with_data_dir(s, tmp_path / "w1-data"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2-data"), tmp_path / "worker-2.log")
    frozen = False
    try:
        first.start()
        second.start()
        wait_for(
            lambda: (owned(first, s.topics.resolved), owned(second, s.topics.resolved)),
            lambda o: bool(o[0]) and bool(o[1]) and not (o[0] & o[1]),
            timeout_s=90,
            every_s=0.1,
        )
        assert first.proc is not None
        applied_before_freeze = first.metric("journey_events_applied_total")
        first.proc.send_signal(signal.SIGSTOP)
        frozen = True

        def second_worker_state() -> tuple[float, float]:
            return (
                second.metric("journey_events_applied_total"),
                second.metric("journey_consumer_lag_messages", topic=s.topics.touchpoints),
            )

        # The second worker has read its own input to the end...
        wait_for(second_worker_state, lambda st: st[0] > 0 and st[1] == 0, timeout_s=60)
        # ...and stays put for several idle periods: its watermark is still set by
        # the events (about 13 days behind) or not set at all, not by the wall
        # clock (the allowed lateness, 5 days, behind).
        window_end = time.monotonic() + 4 * s.journey.idle_s + 2
        while time.monotonic() < window_end:
            lag = min_watermark_lag(second)
            assert lag > LATENESS_S + 86_400, f"watermark followed the wall clock: lag {lag}s"
            time.sleep(0.25)
        first.proc.send_signal(signal.SIGCONT)
        frozen = False

        wait_for(
            lambda: sum(w.metric("journey_stage_transitions_total") for w in (first, second)),
            lambda n: n >= len(expected),
            timeout_s=180,
            every_s=1.0,
        )
        assert streamed_transitions(s) == expected
        assert sorted(streamed_triggers(s)) == sorted(oracle_triggers(oracle))
        want_states = {st.key: comparable(st.summary()) for st in oracle.final_states()}
        assert journey_mismatches(second, want_states) == []
        # The freeze really held input back: the first worker had work left.
        assert first.metric("journey_events_applied_total") > applied_before_freeze
    finally:
        if frozen and first.proc is not None:
            first.proc.send_signal(signal.SIGCONT)
        second.stop()
        first.stop()


def series_partitions(worker: Worker, name: str, **labels: str) -> set[int]:
    """The ``partition`` labels of ``name``'s samples on the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{worker.url}/metrics")
    return {
        int(sample.labels["partition"])
        for family in text_string_to_metric_families(text if status == 200 else "")
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    }


def min_watermark_lag(worker: Worker) -> float:
    """The smallest watermark lag over the worker's partitions (inf when it reports none)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{worker.url}/metrics")
    lags = [
        sample.value
        for family in text_string_to_metric_families(text if status == 200 else "")
        for sample in family.samples
        if sample.name == "journey_watermark_lag_seconds"
    ]
    return min(lags, default=float("inf"))
