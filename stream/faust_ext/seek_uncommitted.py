"""Faust's "seek to committed offsets" also rewinds partitions that have no commit.

Upstream: ``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.
seek_to_committed`` (faust-streaming 0.15.3) calls aiokafka's
``AIOKafkaConsumer.seek_to_committed`` (aiokafka 0.14), which seeks only
partitions committed above 0. Faust drops records it fetched but had not
handed to an agent when a rebalance stops its flow, and relies on this seek
to read them again; a partition the group never committed (or committed at 0)
stayed past the dropped records, so a worker taking over from one killed
before its first commit skipped them. Patched, such input partitions go to
their beginning, where the group's ``auto_offset_reset = "earliest"`` starts
them; changelog partitions are left to recovery.

Test: tests/integration/test_consumer_rewind.py.
Remove when aiokafka seeks uncommitted partitions to their reset position.
"""

from __future__ import annotations

import logging
from typing import Any

from stream.faust_ext._patch import Patch

log = logging.getLogger(__name__)


async def rewind_to_committed(consumer: Any, changelogs: Any) -> dict[Any, int | None]:
    """Seek an aiokafka consumer's partitions to their committed offsets, the
    uncommitted ones (but those of ``changelogs``) to their beginning; returns
    the committed offsets, as aiokafka's ``seek_to_committed`` does."""
    committed: dict[Any, int | None] = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
        log.info("no committed offset; reading from the beginning: %s", sorted(fresh))
    return committed


def _make(original: Any) -> Any:
    async def seek_to_committed(self: Any) -> Any:
        changelogs = self.consumer.app.tables.changelog_topics
        return await self.call_thread(rewind_to_committed, self._ensure_consumer(), changelogs)

    return seek_to_committed


def patches() -> list[Patch]:
    from faust.transport.drivers import aiokafka as driver

    return [Patch(driver.AIOKafkaConsumerThread, "seek_to_committed", _make)]
