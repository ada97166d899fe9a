"""The worker's ingest agent against the real embedded broker."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from stream import contract
from stream.app import all_topic_partitions
from stream.settings import Settings
from stream.topics import create_topics
from tests.helpers import read_topic, wait_for
from tests.procs import Worker

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def tp(event_id: str, **kw: object) -> dict:
    base = {"event_id": event_id, "type": "page_view", "channel": "web", "timestamp": T0}
    base.update(kw)
    return base


@pytest.fixture
def worker(settings: Settings, tmp_path: Path):
    create_topics(settings.broker.bootstrap, all_topic_partitions(settings))
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

    resolved = wait_for(
        lambda: read_topic(bootstrap, settings.topics.resolved),
        lambda recs: sum(len(tps) for r in recs for _, tps in contract.loads_groups(r.value)) >= 4,
    )
    events = {
        tp.event_id: (key, tp.to_dict())
        for r in resolved
        for key, tps in contract.loads_groups(r.value)
        for tp in tps
    }
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
