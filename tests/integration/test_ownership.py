"""Partitions changing hands: a paused worker cannot roll journeys back, progress
follows ownership, and a frozen watermark is reported to the supervisor.

Each test runs two real worker processes in one consumer group on the embedded
broker and pauses or stops one of them (SIGSTOP stands for a long GC pause, a
stalled VM or a saturated host).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaProducer

from stream import contract
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import wait_for
from tests.integration.test_journey_oracle import (
    LATENESS_S,
    comparable,
    oracle_for,
    produce,
    simulated_log,
)
from tests.integration.test_scale_out import (
    journey_mismatches,
    owned,
    populations,
    with_data_dir,
)
from tests.procs import Worker, http_get

pytestmark = pytest.mark.slow


def group(settings: Settings, **journey: float) -> Settings:
    s = replace(settings, journey=replace(settings.journey, **journey))
    ensure_topics(s)
    return s


def test_a_worker_paused_past_its_session_timeout_cannot_roll_journeys_back(
    settings: Settings, tmp_path: Path
) -> None:
    s = group(settings, allowed_lateness_s=LATENESS_S)
    events = simulated_log(customers=6000, seed=71)
    oracle = oracle_for(events, s)
    want = {st.key: comparable(st.summary()) for st in oracle.final_states()}
    produce(s, events)
    first = Worker(with_data_dir(s, tmp_path / "w1"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2"), tmp_path / "worker-2.log")
    third = Worker(with_data_dir(s, tmp_path / "w3"), tmp_path / "worker-3.log")
    paused = False
    try:
        first.start()
        second.start()
        resolved = s.topics.resolved
        wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: bool(o[0]) and bool(o[1]),
            timeout_s=90,
            every_s=0.1,
        )
        # The first worker is busy with the backlog when it stops answering.
        wait_for(lambda: first.metric("journey_events_applied_total"), lambda n: n > 500, 60)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGSTOP)
        paused = True
        # Past its session timeout the second worker owns everything...
        wait_for(
            lambda: owned(second, resolved),
            lambda o: o == set(range(s.topics.partitions)),
            timeout_s=60,
            every_s=0.5,
        )
        # ...and takes every journey to its end, the first worker's partitions included.
        population = Counter(st.stage for st in oracle.final_states())
        wanted_population = {stage: float(n) for stage, n in population.items()}
        wait_for(
            lambda: populations([second], sorted(population)),
            lambda got: got == wanted_population,
            timeout_s=240,
            every_s=1.0,
        )
        # The first worker wakes up: it still writes what it had in hand, after
        # the second worker's final states.
        first.proc.send_signal(signal.SIGCONT)
        paused = False
        # Woken, it rejoins the group and gets a share again (until then its
        # /ready still shows what it owned before the pause).
        wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: bool(o[0]) and bool(o[1]) and not (o[0] & o[1]),
            timeout_s=120,
            every_s=0.5,
        )
        # Everything goes back to the first worker, which recovers its partitions
        # from where its store's recorded offsets say it stands.
        assert second.stop() == 0
        wait_for(
            lambda: owned(first, resolved),
            lambda o: o == set(range(s.topics.partitions)),
            timeout_s=90,
            every_s=0.5,
        )
        wait_for(
            lambda: populations([first], sorted(population)),
            lambda got: got == wanted_population,
            timeout_s=120,
            every_s=1.0,
        )
        assert journey_mismatches(first, want) == []
        # A worker with an empty store restores everything from the changelogs,
        # where the woken worker's writes came after the second worker's last ones.
        assert first.stop() == 0
        third.start()
        wait_for(
            lambda: owned(third, resolved),
            lambda o: o == set(range(s.topics.partitions)),
            timeout_s=120,
            every_s=0.5,
        )
        wait_for(
            lambda: populations([third], sorted(population)),
            lambda got: got == wanted_population,
            timeout_s=120,
            every_s=1.0,
        )
        assert journey_mismatches(third, want) == []
        log = first.log_path.read_text()
        # The premise: the woken worker wrote after the other had taken over, and saw it.
        assert "were written by another worker" in log, "the pause did not overlap a write"
    finally:
        if paused and first.proc is not None:
            first.proc.send_signal(signal.SIGCONT)
        third.stop()
        second.stop()
        first.stop()


def cart_event(event_id: str, customer: str, at: int) -> contract.Touchpoint:
    return contract.parse(
        {
            "event_id": event_id,
            "type": "add_to_cart",
            "channel": "web",
            "timestamp": at,
            "customer_id": customer,
            "properties": {"sku": "S1", "price": 5.0, "quantity": 1, "email": f"{customer}@x.io"},
        }
    )


def send_to_every_partition(s: Settings, prefix: str) -> None:
    """One touchpoint in every ``touchpoints`` partition, at the wall clock."""
    from stream.producers.publisher import partition_of

    producer = KafkaProducer(bootstrap_servers=s.broker.bootstrap, acks="all")
    now = int(time.time() * 1000)
    wanted = set(range(s.topics.partitions))
    i = 0
    while wanted:
        customer = f"{prefix}-{i}"
        p = partition_of(customer.encode(), s.topics.partitions)
        if p in wanted:
            wanted.discard(p)
            tp = cart_event(f"{prefix}-e{i}", customer, now)
            producer.send(s.topics.touchpoints, key=customer.encode(), value=contract.dumps(tp))
        i += 1
    producer.flush()
    producer.close()


def watermark_lags(worker: Worker) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{worker.url}/metrics")
    return [
        sample.value
        for family in text_string_to_metric_families(text if status == 200 else "")
        for sample in family.samples
        if sample.name == "journey_watermark_lag_seconds"
    ]


def test_partitions_handed_back_without_new_traffic_let_the_watermark_move_on(
    settings: Settings, tmp_path: Path
) -> None:
    s = group(settings, allowed_lateness_s=5.0, idle_s=1.0)
    first = Worker(with_data_dir(s, tmp_path / "w1"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2"), tmp_path / "worker-2.log")
    resolved = s.topics.resolved
    try:
        first.start().wait_ready()
        send_to_every_partition(s, "before")
        wait_for(lambda: first.metric("journey_events_applied_total"), lambda n: n >= 4, 60)
        # Some partitions move to a second worker, which reads new traffic there.
        second.start()
        wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: bool(o[0]) and bool(o[1]),
            timeout_s=90,
            every_s=0.2,
        )
        send_to_every_partition(s, "during")
        wait_for(lambda: second.metric("journey_events_applied_total"), lambda n: n >= 1, 60)
        # They come back, and no more traffic arrives.
        assert second.stop() == 0
        wait_for(
            lambda: owned(first, resolved),
            lambda o: o == set(range(s.topics.partitions)),
            timeout_s=90,
            every_s=0.2,
        )
        # Read to its end and idle, every partition follows the clock (its
        # watermark trails it by the allowed lateness), not frozen where the
        # first worker left off before the hand-over.
        lags = wait_for(
            lambda: watermark_lags(first),
            lambda got: len(got) == s.topics.partitions and max(got) < 5.0 + 4.0,
            timeout_s=60,
            every_s=0.5,
        )
        assert max(lags) < 9.0
        status, body = http_get(f"{first.url}/ready")
        assert status == 200 and body["stalls"] == []
    finally:
        second.stop()
        first.stop()


def lag_series(worker: Worker) -> set[str]:
    """``topic:partition`` of every consumer-lag series on the worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = http_get(f"{worker.url}/metrics")
    return {
        f"{sample.labels['topic']}:{sample.labels['partition']}"
        for family in text_string_to_metric_families(text if status == 200 else "")
        for sample in family.samples
        if sample.name == "journey_consumer_lag_messages"
    }


def test_consumer_lag_is_reported_only_for_partitions_the_worker_owns(
    settings: Settings, tmp_path: Path
) -> None:
    s = group(settings, allowed_lateness_s=5.0, idle_s=1.0)
    first = Worker(with_data_dir(s, tmp_path / "w1"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2"), tmp_path / "worker-2.log")
    inputs = (s.topics.touchpoints, s.topics.resolved)
    every = {f"{t}:{p}" for t in inputs for p in range(s.topics.partitions)}
    try:
        first.start().wait_ready()
        send_to_every_partition(s, "before")
        wait_for(lambda: lag_series(first), lambda got: got == every, timeout_s=60)
        # Half of the partitions go to a second worker: their series go with them.
        second.start()
        split = wait_for(
            lambda: (owned(first, s.topics.resolved), owned(second, s.topics.resolved)),
            lambda o: bool(o[0]) and bool(o[1]) and not (o[0] & o[1]),
            timeout_s=90,
            every_s=0.2,
        )
        mine = {f"{t}:{p}" for t in inputs for p in split[0]}
        got = wait_for(lambda: lag_series(first), lambda got: got == mine, timeout_s=30)
        assert got == mine and got != every
    finally:
        second.stop()
        first.stop()


def test_a_watermark_frozen_by_a_stalled_worker_fails_live_and_ready(
    settings: Settings, tmp_path: Path
) -> None:
    s = group(settings, allowed_lateness_s=5.0, idle_s=1.0)
    s = replace(
        s,
        broker=replace(s.broker, session_timeout_s=45.0, rebalance_timeout_s=45.0),
        worker=replace(s.worker, max_watermark_lag_s=10.0),
    )
    first = Worker(with_data_dir(s, tmp_path / "w1"), tmp_path / "worker-1.log")
    second = Worker(with_data_dir(s, tmp_path / "w2"), tmp_path / "worker-2.log")
    resolved = s.topics.resolved
    paused = False
    try:
        first.start()
        second.start()
        wait_for(
            lambda: (owned(first, resolved), owned(second, resolved)),
            lambda o: bool(o[0]) and bool(o[1]),
            timeout_s=120,
            every_s=0.2,
        )
        send_to_every_partition(s, "warm")
        # Both workers' partitions follow the clock before the stall.
        wait_for(
            lambda: (watermark_lags(first), watermark_lags(second)),
            lambda lags: bool(lags[0]) and bool(lags[1]) and max(lags[0] + lags[1]) < 9.0,
            timeout_s=60,
        )
        assert http_get(f"{first.url}/live")[0] == 200
        # The second worker stalls (within its session timeout: it keeps its
        # partitions), so its sources' marks stop and every watermark freezes.
        assert second.proc is not None
        second.proc.send_signal(signal.SIGSTOP)
        paused = True
        _, body = wait_for(
            lambda: http_get(f"{first.url}/live"), lambda r: r[0] == 503, timeout_s=40
        )
        assert any("watermark" in stall for stall in body["stalls"]), body
        assert http_get(f"{first.url}/ready")[0] == 503
        assert "worker stuck: journey partition" in first.log_path.read_text()
        second.proc.send_signal(signal.SIGCONT)
        paused = False
        wait_for(lambda: http_get(f"{first.url}/live")[0], lambda code: code == 200, 60)
        assert http_get(f"{first.url}/ready")[0] == 200
    finally:
        if paused and second.proc is not None:
            second.proc.send_signal(signal.SIGCONT)
        second.stop()
        first.stop()
