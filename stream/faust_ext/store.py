"""The tables' RocksDB store: no write-ahead log, and writes fenced by ownership epochs.

A Faust store class (registered as ``journeydb://``; ``faust_app`` maps the
``rocksdb://`` setting to it), not a patch. Upstream: ``faust.stores.rocksdb.Store``
(faust-streaming 0.15.3, rocksdict 0.3).

**No write-ahead log.** Each partition's database is opened with RocksDB's WAL
off, as Kafka Streams runs its stores: the changelog topic is the durable copy
and the store keeps its changelog offset beside the values, so a killed worker
loses both together and recovery replays from the earlier offset; the log only
made every put slower. Test: tests/integration/test_faust_ext.py::test_store_runs_without_wal.

**Fencing.** A worker paused past its session timeout still writes a few
records after another worker took its partitions over. Two things keep those
from rolling journeys back:

- Every value carries the *epoch* of the ownership that wrote it: the
  changelog's end offset when its writer took the partition over, then the
  consumer group generation. A later owner's epoch is higher. Restoring
  (recovery, standby replicas) never lets a value overwrite one of a higher
  epoch, so a stale record landing in the changelog after the new owner's is
  ignored wherever it is read back.
- A store records its changelog offset only over records it applied itself,
  contiguously: own writes are checked to land right after the last offset it
  applied. Past records another worker wrote (a worker woken from a pause
  writes past the new owner's; the new owner past the woken one's stale
  ones) the offset is not recorded, so recovery, when the partition is
  assigned again, reads those records, and the epochs decide which values win.
  A warning names the partition and the offsets.

Tests: tests/integration/test_faust_ext.py (store), tests/integration/test_paused_worker.py.
Kafka transactions would fence too, but the embedded broker cannot start a
transactional producer (docs/architecture.md, "Fencing a paused worker").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from faust.stores import STORES
from faust.stores import rocksdb as upstream
from faust.types import TP

log = logging.getLogger(__name__)

SCHEME = "journeydb"
#: Prefix of a versioned value: magic, then the epoch (takeover end, generation).
MAGIC = b"\x00\x4a"
HEADER_BYTES = len(MAGIC) + 16
Epoch = tuple[int, int]
NO_EPOCH: Epoch = (-1, -1)


def encode(epoch: Epoch, payload: bytes) -> bytes:
    """``payload`` stamped with ``epoch``."""
    end, generation = epoch
    head = end.to_bytes(8, "big", signed=True) + generation.to_bytes(8, "big", signed=True)
    return MAGIC + head + payload


def decode(raw: bytes) -> tuple[Epoch, bytes]:
    """(epoch, payload) of a stored value; values from before epochs have :data:`NO_EPOCH`."""
    if raw[:2] != MAGIC or len(raw) < HEADER_BYTES:
        return NO_EPOCH, raw
    end = int.from_bytes(raw[2:10], "big", signed=True)
    generation = int.from_bytes(raw[10:18], "big", signed=True)
    return (end, generation), raw[HEADER_BYTES:]


def payload(raw: bytes) -> bytes:
    """The value without its epoch."""
    return decode(raw)[1]


class Store(upstream.Store):
    """RocksDB tables without the WAL, whose writes carry their owner's epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = 0
        #: Changelog partition -> epoch of this worker's ownership of it.
        self.epochs: dict[int, Epoch] = {}
        #: Changelog partition -> the offset the next own write must land at
        #: (None: not known, or other writers seen since the last recovery).
        self.expected: dict[int, int | None] = {}
        #: Partitions whose changelog holds records this store did not apply.
        self.holes: set[int] = set()

    # -- open -----------------------------------------------------------------
    def _open_for_partition(self, partition: int) -> Any:
        db = super()._open_for_partition(partition)
        if self.use_rocksdict and not self.read_only:
            import rocksdict

            options = rocksdict.WriteOptions()
            # A property (rocksdict's stub calls it a method; calling it fails).
            options.disable_wal = True  # type: ignore[method-assign,assignment]
            db.set_write_options(options)
        return db

    # -- ownership ------------------------------------------------------------
    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        self.generation = generation_id
        for tp in revoked:
            self.epochs.pop(tp.partition, None)
            self.expected.pop(tp.partition, None)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        for tp in active_tps:
            applied = self.persisted_offset(tp)
            start = -1 if applied is None else applied
            self.epochs[tp.partition] = (start + 1, self.generation)
            self.expected[tp.partition] = None if applied is None else applied + 1
            self.holes.discard(tp.partition)

    def stamp(self, partition: int, value: bytes) -> bytes:
        """``value`` stamped with this worker's epoch for ``partition``."""
        return encode(self.epochs.get(partition, (0, self.generation)), value)

    def confirm_written(self, tp: TP, last_offset: int, count: int) -> None:
        """``count`` own records were delivered, the last at ``last_offset``.

        Records the offset only while every record before it was applied by
        this store (see module doc); after a hole, not until the partition is
        recovered again.
        """
        partition = tp.partition
        if partition in self.holes:
            return
        expected = self.expected.get(partition)
        first = last_offset - count + 1
        if expected is not None and first != expected:
            self.holes.add(partition)
            log.warning(
                "%s: offsets %d to %d of the changelog were written by another worker "
                "(one of the two was paused past its session timeout): not recording "
                "this store's offset past them; recovery reads them and the newer "
                "owner's values win",
                tp,
                expected,
                first - 1,
            )
            return
        self.expected[partition] = last_offset + 1
        upstream.Store.set_persisted_offset(self, tp, last_offset)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Faust's own changelog sends (one record each) go through the same check."""
        self.confirm_written(tp, offset, 1)

    # -- restore --------------------------------------------------------------
    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Apply changelog records, never over a value of a higher epoch."""
        last: dict[TP, int] = {}
        for event in batch:
            msg = event.message
            tp, offset = msg.tp, msg.offset
            last[tp] = max(offset, last.get(tp, offset))
            db = self._db_for_partition(msg.partition)
            if msg.value is None:
                db.delete(msg.key)
                continue
            current = db.get(msg.key)
            if current is not None and decode(current)[0] > decode(msg.value)[0]:
                continue  # written by an owner that had already lost the partition
            db.put(msg.key, msg.value)
        for tp, offset in last.items():
            upstream.Store.set_persisted_offset(self, tp, offset)


def register() -> None:
    """Make ``journeydb://`` name this store (Faust's store registry; idempotent)."""
    STORES.aliases[SCHEME] = f"{__name__}:Store"
