"""Journey states in the worker: the changelogged table, a batch's working set, a cache.

``load`` and ``save`` go through a per-batch working set, so a journey touched
by several messages of one batch is decoded once and written to the table
(RocksDB + changelog) once, when the batch ends and before its offsets are
acked; and through a bounded cache of decoded states of the partitions this
worker owns (it is their only writer), cleared on every rebalance and
recovery, so a journey seen again soon is not decoded again.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event

from stream.contract import InvalidTouchpoint
from stream.faust_ext.fastpath import changelog_persisted, read_raw, table_items, write_raw
from stream.journey.state import JourneyState
from stream.observability import metrics as m
from stream.settings import Settings

#: What an erased journey's record holds: nothing about the customer, and, being
#: a value stamped with its writer's epoch (``stream.faust_ext.store``), it wins
#: over any older state a paused worker may write after it, where a Kafka
#: tombstone (no value, no epoch) would not.
ERASED = b"\x00erased"


@dataclass(frozen=True, slots=True)
class Staged:
    """A write for when the batch ends: the state (None: erased), its encoding,
    and an event of its partition."""

    partition: int
    key: str
    state: JourneyState | None
    raw: bytes
    event: Any


def decode(raw: bytes | None) -> JourneyState | None:
    """The state a table value holds (None: no journey, or an erased one)."""
    if raw is None or raw == ERASED:
        return None
    return JourneyState.loads(raw)


class JourneyStore:
    """The ``journeys`` table, its batch working set and its cache of decoded states."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.table = app.Table(
            "journeys",
            default=None,
            partitions=settings.topics.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.max_state_bytes = settings.limits.max_state_bytes
        #: Decoded states of owned partitions, least recently saved first. An
        #: OrderedDict: evicting a plain dict's first key scans the deleted
        #: slots ahead of it (about 8x slower per write at 20,000 entries).
        self.cache: OrderedDict[str, JourneyState] = OrderedDict()
        self.cache_size = settings.worker.state_cache
        #: This batch's states to write, by journey key.
        self.dirty: dict[str, Staged] = {}

    def load(self, key: str) -> JourneyState | None:
        """The journey's latest state: this batch's, else cached, else the table's."""
        staged = self.dirty.get(key)
        if staged is not None:
            return staged.state
        state = self.cache.get(key)
        if state is not None:
            return state
        return decode(read_raw(self.table, key.encode()))

    def encode(self, partition: int, state: JourneyState, event: Any) -> Staged:
        """``state`` encoded for writing; :class:`InvalidTouchpoint` past ``max_state_bytes``.

        Encoded when saved, so a state that cannot be written fails the step
        that made it, not the batch.
        """
        raw = state.dumps()
        if len(raw) > self.max_state_bytes:
            raise InvalidTouchpoint(
                f"journey {state.key!r} would be {len(raw)} bytes, over the "
                f"{self.max_state_bytes}-byte limit",
                None,
                "state_size",
            )
        return Staged(partition, state.key, state, raw, event)

    def erased(self, partition: int, key: str, event: Any) -> Staged:
        """The erasure of journey ``key``, for writing."""
        return Staged(partition, key, None, ERASED, event)

    def stage(self, staged: Staged) -> None:
        """Keep ``staged`` for :meth:`flush` (it replaces what the batch had of it)."""
        self.dirty[staged.key] = staged

    def restore(self, key: str) -> None:
        """Drop what a failed step may have half-changed of journey ``key``.

        Its state in this batch is decoded again from the encoding staged
        before the step; the cache forgets it (the table still holds the last
        written one).
        """
        self.cache.pop(key, None)
        staged = self.dirty.get(key)
        if staged is not None:
            self.dirty[key] = Staged(
                staged.partition, key, decode(staged.raw), staged.raw, staged.event
            )

    async def flush(self) -> None:
        """Write every journey this batch changed, once each (RocksDB + changelog).

        The records go straight to the producer (``stream.faust_ext.fastpath``),
        so Faust's flush before each offset commit still waits for them.
        """
        dirty, self.dirty = self.dirty, {}
        if not dirty:
            return
        cache = self.cache
        cache_size = self.cache_size
        last: dict[int, Any] = {}
        written: dict[int, int] = {}
        current = None
        for staged in dirty.values():
            if staged.event is not current:
                # The store writes to the partition of the current event.
                _current_event.set(weakref.ref(staged.event))
                current = staged.event
            key = staged.key
            partition = staged.partition
            last[partition] = await write_raw(
                self.app, self.table, key.encode(), staged.raw, partition
            )
            written[partition] = written.get(partition, 0) + 1
            if staged.state is None:
                cache.pop(key, None)
                continue
            cache[key] = staged.state
            cache.move_to_end(key)
            if len(cache) > cache_size:
                cache.popitem(last=False)
        m.STATE_WRITES.inc(sum(written.values()))
        for partition, fut in last.items():
            changelog_persisted(self.table, fut, written[partition])

    def discard(self) -> None:
        """Forget unwritten and cached states (a failed batch: they may be half-applied)."""
        self.dirty.clear()
        self.cache.clear()

    def scan(self, owned: set[int], partition_of: Any) -> Iterator[tuple[int, JourneyState]]:
        """(partition, state) of every stored journey of the ``owned`` partitions."""
        for raw_key, raw in table_items(self.table):
            p = partition_of(raw_key)
            if p in owned and raw != ERASED:
                yield p, JourneyState.loads(raw)
