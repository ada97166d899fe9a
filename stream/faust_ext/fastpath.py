"""Sends and table writes outside Faust's per-record send path, for the hot path.

Upstream: Faust's ``Topic.send`` and ``Table.__setitem__`` (faust-streaming
0.15.3) build a pending message per record, queue it in the producer buffer and
run send and table sensors; on the hot path that cost more than RocksDB and
the encoding together. These helpers hand records straight to Faust's
producer (aiokafka) and use the store's private ``_get``. Faust's flush before
each offset commit still waits for the records (aiokafka's flush), so the
at-least-once order (records out, then offsets) holds; Faust's messages-sent
and table sensors do not count them.

Table values are stamped with their writer's ownership epoch and offsets are
recorded only for contiguous own writes (:mod:`stream.faust_ext.store`).

Tests: the whole pipeline (every integration test of the worker) and
tests/integration/test_faust_ext.py::test_write_raw_is_a_table_write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import faust

from stream.faust_ext.store import payload

log = logging.getLogger(__name__)


async def send_direct(
    app: Any,
    topic: faust.TopicT,
    value: bytes | None,
    *,
    key: bytes | None = None,
    partition: int | None = None,
) -> asyncio.Future[Any]:
    """Hand one record straight to the producer; returns its delivery future."""
    fut: asyncio.Future[Any] = await app.producer.send(
        topic.get_topic_name(), key, value, partition, None, None
    )
    return fut


def key_partitions(app: Any, topic: str, limit: int = 1_000_000) -> Callable[[str], int]:
    """The partition of ``topic`` a key hashes to (the producer's partitioner), cached.

    Holds at most ``limit`` keys (cleared when full). Why: aiokafka's murmur2
    is pure Python; sending with the partition from here skips it.
    """
    cache: dict[str, int] = {}

    def partition(key: str) -> int:
        p = cache.get(key)
        if p is None:
            if len(cache) >= limit:
                cache.clear()
            p = cache[key] = int(app.producer.key_partition(topic, key.encode()).partition)
        return p

    return partition


def read_raw(table: Any, key: bytes) -> bytes | None:
    """A raw (bytes) table value without its epoch, or None, read straight from the store.

    Same value as ``table.get(key)`` (the store reads the current event's
    partition either way), through the store's private ``_get`` where it has
    one: no per-read sensors, no separate "contains" lookup, no KeyError on a
    miss (most hot-path reads are misses).
    """
    get = getattr(table.data, "_get", None)  # stores that serialise (RocksDB)
    value = table.get(key) if get is None else get(key)
    if value is None:
        return None
    return payload(value if isinstance(value, bytes) else bytes(value))


def table_items(table: Any) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value without its epoch) of a raw table, for scans at recovery."""
    for key, value in table.items():
        yield key, payload(value if isinstance(value, bytes) else bytes(value))


async def write_raw(
    app: Any, table: Any, key: bytes, value: bytes | None, partition: int
) -> asyncio.Future[Any]:
    """``table[key] = value`` (``del`` for None) for a raw table, outside Faust's send path.

    The same two writes as a table write: the store (which writes to the
    current event's partition: ``partition`` must be it), then the changelog
    record on that partition, the value stamped with this worker's ownership
    epoch. Returns its delivery future, for :func:`changelog_persisted`.
    """
    store = table.data
    stamp = getattr(store, "stamp", None)
    if stamp is not None and value is not None:
        value = stamp(partition, value)
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value
    return await send_direct(app, table.changelog_topic, value, key=key, partition=partition)


def changelog_persisted(table: Any, fut: asyncio.Future[Any], count: int = 1) -> None:
    """When ``fut``, the last of ``count`` :func:`write_raw` records of one changelog
    partition, is delivered, record in the store how far the changelog is.

    What Faust's ``Table._on_changelog_sent`` does at least once (recovery
    starts after this offset), checked for contiguity where the store can.
    """

    def persisted(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            # As with Faust's own changelog sends: logged, the offset not recorded.
            log.error("changelog send failed for table %s: %r", table.name, exc)
            return
        res = done.result()
        store = table.data
        confirm = getattr(store, "confirm_written", None)
        if confirm is not None:
            confirm(res.topic_partition, res.offset, count)
        else:
            store.set_persisted_offset(res.topic_partition, res.offset)

    fut.add_done_callback(persisted)


class Handoff:
    """Decoded ``touchpoints.resolved`` values this process produced, by offset.

    The ingest agent packs and sends them; the journey agent, usually in the
    same worker, reads them back a moment later and takes the touchpoints from
    here instead of decoding the bytes again. An entry is used only if the
    bytes read are the bytes sent, so a wrong offset can cost a decode, never
    data. Bounded; stale entries (partitions another worker consumes) fall out.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[tuple[int, int], tuple[bytes, Any]] = {}
        self._bytes = 0

    def put(self, partition: int, offset: int, value: bytes, groups: Any) -> None:
        entries = self._entries
        entries[partition, offset] = (value, groups)
        self._bytes += len(value)
        while self._bytes > self.max_bytes and entries:
            old, _ = entries.pop(next(iter(entries)))
            self._bytes -= len(old)

    def take(self, partition: int, offset: int, value: bytes) -> Any:
        entry = self._entries.pop((partition, offset), None)
        if entry is None:
            return None
        self._bytes -= len(entry[0])
        return entry[1] if entry[0] == value else None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
