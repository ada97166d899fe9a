"""Topic administration with kafka-python (works against any Kafka-compatible broker)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.settings import BrokerSettings, Settings


def client_options(broker: BrokerSettings) -> dict[str, Any]:
    """kafka-python connection options, including SASL/TLS pass-through."""
    opts: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap.split(","),
        "security_protocol": broker.security_protocol,
    }
    if broker.sasl_mechanism:
        opts["sasl_mechanism"] = broker.sasl_mechanism
        opts["sasl_plain_username"] = broker.sasl_username
        opts["sasl_plain_password"] = broker.sasl_password
    if broker.ssl_cafile:
        opts["ssl_cafile"] = broker.ssl_cafile
    return opts


def all_topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic the engine uses, with its partition count (for creation)."""
    t = settings.topics
    names = [
        t.touchpoints,
        t.resolved,
        t.dlq,
        t.transitions,
        t.triggers,
        t.timers,
        t.dispatch,
        t.dispatch_dlq,
        t.links,
        t.conversions,
        t.visits,
        t.alerts,
    ]
    return {name: t.partitions for name in names}


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create every topic the engine uses (idempotent), with the configured security and
    ``topics.replication_factor``; returns them with their partition counts."""
    topics = all_topic_partitions(settings)
    create_topics(
        settings.broker.bootstrap,
        topics,
        settings.topics.replication_factor,
        client=client_options(settings.broker),
        config={"retention.ms": str(int(settings.topics.retention_hours * 3600 * 1000))},
    )
    return topics


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout_s: float = 20.0,
    client: Mapping[str, Any] | None = None,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create ``topics`` (name -> partitions) if missing and wait until all are visible.

    ``client`` holds kafka-python connection options (:func:`client_options`),
    ``config`` topic configs for the new topics (existing ones keep theirs).
    """
    options = {"bootstrap_servers": bootstrap.split(","), **(client or {})}
    admin = KafkaAdminClient(client_id="journey-admin", **options)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(n, p, replication, topic_configs=dict(config or {}))
            for n, p in topics.items()
            if n not in existing
        ]
        for topic in missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently
                admin.create_topics([topic])
        deadline = time.monotonic() + timeout_s
        while not set(topics) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not visible after {timeout_s}s: {sorted(topics)}")
            time.sleep(0.1)
    finally:
        admin.close()


def read_topic(
    bootstrap: str,
    topic: str,
    timeout_s: float = 10.0,
    client: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Every record on ``topic`` when called (all partitions, from the beginning).

    Reads each partition up to the larger of the end offset listed at call time
    and the high watermark of its first fetch response: the embedded Tansu
    broker under-reports listed end offsets right after a batched write, while
    its fetch responses carry the true high watermark. Records written after
    that are not chased, so a topic that is being written to all the time (the
    worker's event-time marks) still reads in bounded time. ``client`` holds
    kafka-python connection options (:func:`client_options`).
    """
    options = {"bootstrap_servers": bootstrap, **(client or {})}
    consumer = KafkaConsumer(
        **options,
        enable_auto_commit=False,
        group_id=None,
        # Tansu answers a fetch with whole batches, beyond kafka-python's 1 MB frame default.
        receive_message_max_bytes=64 << 20,
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        target: dict[TopicPartition, int] = dict(consumer.end_offsets(tps))
        fetched: set[TopicPartition] = set()
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < target[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=200).items():
                out.extend(records)
                if tp not in fetched:
                    fetched.add(tp)
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        target[tp] = max(target[tp], highwater)
        return out
    finally:
        consumer.close()
