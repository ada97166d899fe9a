"""Ingest agent: validate, drop exact duplicates, resolve identity, forward or dead-letter.

Consumes ``touchpoints`` (keyed by raw id, one event or a JSON array per
message). Invalid input goes to ``journey.dlq`` with the original bytes and
the reason in headers; valid events go to ``touchpoints.resolved`` keyed by
journey key, packed as one message per destination partition per batch (see
``contract.dumps_groups``) so the journey agent pays Faust's per-message cost
once for many events.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from typing import Any

import faust
from faust.streams import _current_event

from stream import contract
from stream.contract import Rejected, Touchpoint
from stream.ingest.dedupe import RecentIds
from stream.ingest.identity import resolve
from stream.observability import metrics as m
from stream.settings import Settings

log = logging.getLogger(__name__)

#: How long ingest waits to fill a batch before forwarding what it has.
BATCH_WINDOW_S = 0.05


def dlq_headers(reason: str, event: Any, index: int | None, stage: str) -> dict[str, bytes]:
    msg = event.message
    headers = {
        "reason": reason.encode(),
        "stage": stage.encode(),
        "source_topic": str(msg.topic).encode(),
        "source_partition": str(msg.partition).encode(),
        "source_offset": str(msg.offset).encode(),
    }
    if index is not None:
        headers["index"] = str(index).encode()
    return headers


def register_ingest(
    app: faust.App, settings: Settings, topics: Any, processed: dict[Any, int]
) -> None:
    """Register the ingest agent and the identity table on ``app``.

    ``processed`` (topic-partition -> last offset handled) is shared with the
    journey shell, which uses it to tell whether the worker is caught up.
    """
    recent = RecentIds(settings.worker.dedupe_capacity)
    links_sent = RecentIds(settings.worker.dedupe_capacity)
    identities = app.Table(
        "identity",
        default=None,
        partitions=settings.topics.partitions,
        key_type=bytes,
        value_type=bytes,
    )

    def lookup(raw_key: str) -> str | None:
        value = identities.get(raw_key.encode())
        return value.decode() if value is not None else None

    resolved_name = settings.topics.resolved
    batch_size = settings.worker.forward_batch

    @app.agent(topics.touchpoints, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        # Batches of events: Faust's per-message send cost is paid once per
        # destination partition per batch instead of once per event. Events are
        # acked only after the batch's sends were handed to the producer, and
        # Faust flushes the producer before committing offsets.
        batches = stream.take_events(batch_size, within=BATCH_WINDOW_S)  # type: ignore[attr-defined]
        async for events in batches:
            by_key: dict[str, list[Touchpoint]] = defaultdict(list)
            now_ms = int(time.time() * 1000)
            for event in events:
                processed[event.message.tp] = event.message.offset
                raw = event.value
                if raw is None:
                    continue
                # Table reads and writes belong to this event's partition.
                _current_event.set(weakref.ref(event))
                for item in contract.decode_message(raw):
                    if isinstance(item, Rejected):
                        m.DLQ.labels(reason=item.kind).inc()
                        await topics.dlq.send(
                            key=event.key,
                            value=item.raw,
                            headers=dlq_headers(item.reason, event, item.index, "ingest"),
                        )
                        continue
                    if recent.seen(item.event_id):
                        m.DUPLICATES.inc()
                        continue
                    res = resolve(item, lookup)
                    if res.record is not None:
                        alias, customer = res.record
                        identities[alias.encode()] = customer.encode()
                        m.IDENTITY_LINKS.inc()
                    for orphan, merge in res.merges:
                        by_key[orphan].append(merge)
                    for alias, link in res.links:
                        if not links_sent.seen(link.event_id):
                            await topics.touchpoints.send(
                                key=alias.encode(), value=contract.dumps(link)
                            )
                    if item.source == contract.INTERNAL_SOURCE:
                        continue
                    m.INGESTED.labels(channel=item.channel, type=m.type_label(item)).inc()
                    m.EVENT_TIME_LAG.observe(max(0.0, (now_ms - item.timestamp) / 1000))
                    by_key[res.journey_key].append(item)
            by_partition: dict[int, list[tuple[str, list[Touchpoint]]]] = defaultdict(list)
            for key, tps in by_key.items():
                by_partition[partition_of(key)].append((key, tps))
            for partition, groups in by_partition.items():
                await topics.resolved.send(value=contract.dumps_groups(groups), partition=partition)

    def partition_of(journey_key: str) -> int:
        """The ``touchpoints.resolved`` partition a journey key hashes to."""
        return int(app.producer.key_partition(resolved_name, journey_key.encode()).partition)
