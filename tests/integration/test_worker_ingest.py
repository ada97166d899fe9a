"""The worker's ingest agent against the real embedded broker."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from stream import contract
from stream.settings import Settings
from stream.topics import ensure_topics
from tests import builders
from tests.helpers import read_topic, wait_for
from tests.procs import Worker

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

tp = partial(builders.event, timestamp=T0)


def packed_resolved(bootstrap: str, topic: str) -> list:
    """Packed touchpoint records of ``touchpoints.resolved`` (it also carries marks)."""
    return [r for r in read_topic(bootstrap, topic) if contract.loads_mark(r.value) is None]


def resolved_touchpoints(
    settings: Settings, at_least: int
) -> list[tuple[str, contract.Touchpoint]]:
    """(journey key, touchpoint) of every event forwarded, once at least ``at_least`` are."""
    records = wait_for(
        lambda: packed_resolved(settings.broker.bootstrap, settings.topics.resolved),
        lambda recs: (
            sum(len(tps) for r in recs for _, tps in contract.loads_groups(r.value)) >= at_least
        ),
    )
    return [(key, tp) for r in records for key, tps in contract.loads_groups(r.value) for tp in tps]


@pytest.fixture
def worker(settings: Settings, tmp_path: Path):
    ensure_topics(settings)
    w = Worker(settings, tmp_path / "worker.log")
    yield w
    w.stop()


def test_routes_valid_events_and_dead_letters_bad_ones(settings: Settings, worker: Worker) -> None:
    good = [
        tp("g1", customer_id="c-1"),
        tp("g2", anonymous_id="a-1", type="product_view", properties={"sku": "S1"}),
        tp("g3", customer_id="c-2", type="made_up_type"),  # unknown types are kept
    ]
    bad_json = b'{"event_id": "b1", "type": '
    bad_channel = orjson.dumps(tp("b2", customer_id="c-1", channel="fax"))
    batch = orjson.dumps([tp("g4", customer_id="c-3"), {"event_id": "b3", "type": "page_view"}])
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")
    topic = settings.topics.touchpoints
    for event in good:
        parsed = contract.parse(event)
        producer.send(topic, key=parsed.routing_key.encode(), value=contract.dumps(parsed))
    producer.send(topic, key=b"x", value=bad_json)
    producer.send(topic, key=b"c-1", value=bad_channel)
    producer.send(topic, key=b"c-3", value=batch)
    # An exact duplicate (same event_id) is dropped.
    producer.send(topic, key=b"c-1", value=contract.dumps(contract.parse(good[0])))
    producer.flush()
    producer.close()

    worker.start().wait_ready()
    bootstrap = settings.broker.bootstrap

    events = {t.event_id: (key, t.to_dict()) for key, t in resolved_touchpoints(settings, 4)}
    assert set(events) == {"g1", "g2", "g3", "g4"}
    assert events["g1"][0] == "c-1"
    assert events["g2"][0] == "anon:a-1"
    assert events["g3"][1]["type"] == "made_up_type"
    assert events["g4"][0] == "c-3"

    dlq = wait_for(lambda: read_topic(bootstrap, settings.topics.dlq), lambda recs: len(recs) >= 3)
    by_value = {r.value: dict(r.headers) for r in dlq}
    assert len(dlq) == 3
    assert bad_json in by_value
    assert b"not valid JSON" in by_value[bad_json]["reason"]
    assert bad_channel in by_value
    assert b"channel must be one of" in by_value[bad_channel]["reason"]
    (batch_item,) = [v for v, h in by_value.items() if h.get("index") == b"1"]
    assert orjson.loads(batch_item) == {"event_id": "b3", "type": "page_view"}
    assert by_value[batch_item]["reason"].startswith(b"channel must be one of")
    for headers in by_value.values():
        assert headers["source_topic"] == settings.topics.touchpoints.encode()

    assert worker.metric("journey_events_duplicate_total") == 1
    assert worker.metric("journey_events_ingested_total", type="other") == 1
    assert worker.metric("journey_events_dead_lettered_total") == 3


def test_packed_message_of_many_raw_ids(settings: Settings, worker: Worker) -> None:
    """A message packing several raw ids of one partition (as the collector and
    the POS producer send them): each event is validated on its own, a bad one is
    dead-lettered with its own bytes and index, and one whose raw id hashes to
    another partition is re-routed there and still arrives."""
    from stream.producers.publisher import packed_records, partition_of

    n = settings.topics.partitions
    topic = settings.topics.touchpoints
    home = partition_of(b"c-p0", n)
    same = [f"c-p{i}" for i in range(200) if partition_of(f"c-p{i}".encode(), n) == home][:3]
    other = next(f"c-x{i}" for i in range(200) if partition_of(f"c-x{i}".encode(), n) != home)
    good = [contract.parse(tp(f"p{i}", customer_id=c)) for i, c in enumerate(same)]
    ((_, key, value),) = packed_records(topic, good, n)
    assert key == same[0].encode()
    bad = {"event_id": "pb", "type": "page_view", "customer_id": same[1]}  # no channel
    stray = tp("px", customer_id=other)
    items = orjson.loads(value)
    packed = orjson.dumps([items[0], bad, items[1], stray, items[2]])
    producer = KafkaProducer(bootstrap_servers=settings.broker.bootstrap, acks="all")
    producer.send(topic, key=key, value=packed, partition=home)
    producer.flush()
    producer.close()

    worker.start().wait_ready()
    bootstrap = settings.broker.bootstrap
    events = {t.event_id: key for key, t in resolved_touchpoints(settings, 4)}
    assert events == {"p0": same[0], "p1": same[1], "p2": same[2], "px": other}
    (dead,) = wait_for(
        lambda: read_topic(bootstrap, settings.topics.dlq), lambda recs: len(recs) >= 1
    )
    assert orjson.loads(dead.value) == bad
    headers = dict(dead.headers)
    assert headers["index"] == b"1"
    assert headers["reason"].startswith(b"channel must be one of")
    assert worker.metric("journey_events_rerouted_total") == 1
