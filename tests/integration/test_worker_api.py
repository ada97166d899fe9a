"""The worker's HTTP API behind its tokens: aggregates for read tokens, customers for admin."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kafka import KafkaProducer

from stream import contract
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import wait_for
from tests.procs import Worker, http_get

READ_TOKEN = "reader-token-1"
ADMIN_TOKEN = "admin-token-1"


def test_tokens_guard_customer_data_and_leave_health_open(
    settings: Settings, tmp_path: Path
) -> None:
    s = replace(
        settings,
        worker=replace(settings.worker, api_tokens={READ_TOKEN: "read", ADMIN_TOKEN: "admin"}),
    )
    ensure_topics(s)
    event = contract.parse(
        {
            "event_id": "e-1",
            "type": "product_view",
            "channel": "web",
            "timestamp": 1_767_225_600_000,
            "customer_id": "c-1",
            "properties": {"email": "ann@example.com"},
        }
    )
    producer = KafkaProducer(bootstrap_servers=s.broker.bootstrap, acks="all")
    producer.send(s.topics.touchpoints, key=b"c-1", value=contract.dumps(event))
    producer.flush()
    producer.close()
    worker = Worker(s, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        base = worker.url
        journey = f"{base}/customers/c-1/journey"
        # The customer's journey exists (admin sees it) ...
        status, body = wait_for(
            lambda: http_get(journey, token=ADMIN_TOKEN),
            lambda r: r[0] == 200 and r[1]["stage"] == "consideration",
        )
        assert "ann@example.com" in str(body), body
        # ... and nobody else does.
        assert http_get(journey)[0] == 401
        assert http_get(journey, token="guess")[0] == 401
        assert http_get(journey, token=READ_TOKEN)[0] == 403
        assert http_get(f"{journey}?token={ADMIN_TOKEN}")[0] == 200
        # Aggregates for read tokens.
        assert http_get(f"{base}/funnel")[0] == 401
        status, funnel = http_get(f"{base}/funnel", token=READ_TOKEN)
        assert status == 200 and funnel["customers"] == 1
        # Faust's own table and router views are off, whoever asks.
        assert http_get(f"{base}/table/journeys/")[0] == 401
        assert http_get(f"{base}/table/journeys/", token=ADMIN_TOKEN)[0] == 404
        assert http_get(f"{base}/router/", token=ADMIN_TOKEN)[0] == 404
        # Health, readiness and metrics stay open for supervisors and Prometheus.
        assert http_get(f"{base}/ready")[0] == 200
        status, text = http_get(f"{base}/metrics")
        assert status == 200 and "journey_events_ingested_total" in text
    finally:
        worker.stop()
