"""Topic administration with kafka-python (works against any Kafka-compatible broker)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def create_topics(
    bootstrap: str, topics: Mapping[str, int], replication: int = 1, timeout_s: float = 20.0
) -> None:
    """Create ``topics`` (name -> partitions) if missing and wait until all are visible."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="journey-admin")
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, p, replication) for n, p in topics.items() if n not in existing]
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
