"""Simulated touchpoints published to the ``touchpoints`` topic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stream import contract


def produce(
    settings: Any,
    events: Sequence[dict[str, Any]],
    rate: float | None = None,
    pack_sessions: bool = True,
    chunk: int = 5000,
    sdk_batch: int = 0,
) -> int:
    """Publish ``events`` (in order) to the touchpoints topic; returns messages sent.

    With ``pack_sessions``, consecutive events of one routing key become one JSON
    array message, as a Segment ``/v1/batch`` call would carry them.

    With ``sdk_batch`` > 0, events go out in batches of that many consecutive
    events (many customers each, as a server-side SDK flushes them: Segment's
    ``flush_at`` is 100), and each batch is packed into one message per
    destination partition (:func:`stream.producers.publisher.packed_records`),
    as the collector and the POS producer publish them.
    """
    import time

    from stream.producers.publisher import Publisher, packed_records

    publisher = Publisher(settings.broker, ack_timeout_s=60)
    topic = settings.topics.touchpoints
    records: list[tuple[str, bytes | None, bytes]] = []
    sent = 0
    started = time.monotonic()
    done_events = 0
    tps = [contract.parse(e) for e in events]
    try:
        partitions = publisher.partition_count(topic) if sdk_batch > 0 else 0
        i = 0
        while i < len(tps):
            j = i + 1
            if sdk_batch > 0:
                j = min(len(tps), i + sdk_batch)
                records.extend(packed_records(topic, tps[i:j], partitions))
            else:
                if pack_sessions:
                    while j < len(tps) and tps[j].routing_key == tps[i].routing_key and j - i < 50:
                        j += 1
                group = tps[i:j]
                value = contract.dumps(group[0]) if len(group) == 1 else contract.dumps_many(group)
                records.append((topic, group[0].routing_key.encode(), value))
            done_events += j - i
            i = j
            if len(records) >= chunk:
                sent += publisher.send_and_wait(records)
                records = []
                if rate:
                    ahead = done_events / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        if records:
            sent += publisher.send_and_wait(records)
    finally:
        publisher.close()
    return sent
