"""The analytics agent: ``journey.visits`` folded into per-partition aggregates.

Consumes the visit records the journey agent publishes
(:mod:`stream.journey.visit_records`), co-partitioned with the journeys, and
folds them into one :class:`~stream.analytics.aggregate.Aggregate` per
partition, kept in the ``journey_map`` table (RocksDB, changelog) one value
per (partition, event-time bucket), so a batch writes only the buckets it
changed. The map merges them across partitions and workers at query time
(:mod:`.views`).

Counting is idempotent:

- a journey's visit effects are numbered (the journey state counts them), and
  the ``visit_seqs`` table keeps, per journey, how many were counted, so a
  step the journey agent publishes again after a crash is not counted twice;
- each bucket value records the last ``journey.visits`` offset folded into it,
  so a record read again after this agent's own crash (its offset not yet
  committed) skips the buckets that already hold it.

A record that cannot be decoded is dead-lettered with the reason; the agent
goes on.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from stream import dlq
from stream.analytics.aggregate import Aggregate
from stream.analytics.config import check
from stream.app import batch_agent
from stream.faust_ext.fastpath import changelog_persisted, read_raw, table_items, write_raw
from stream.journey import visit_records as records
from stream.journey.visits import ADVANCED, DROPPED, MERGED, VisitClosed, VisitOpened
from stream.observability import metrics as m
from stream.settings import Settings

log = logging.getLogger(__name__)

#: The outcomes ``journey_map_visits_total`` counts (visits begun, and how they ended).
OUTCOMES = ("opened", ADVANCED, DROPPED, MERGED)
BATCH_MESSAGES = 512
BATCH_WINDOW_S = 0.05


@dataclass
class PartitionMap:
    """One partition's aggregate, and per bucket the last offset folded into it."""

    aggregate: Aggregate
    upto: dict[int, int] = field(default_factory=dict)


def bucket_key(partition: int, bucket: int) -> bytes:
    return f"{partition}:{bucket}".encode()


def parse_bucket_key(raw: bytes) -> tuple[int, int] | None:
    p, sep, b = raw.decode(errors="replace").partition(":")
    if not sep or not p.lstrip("-").isdigit() or not b.lstrip("-").isdigit():
        return None
    return int(p), int(b)


class MapShell:
    """The analytics agent's plumbing: tables, per-partition aggregates, dead letters."""

    def __init__(self, app: faust.App, settings: Settings, topics: Any) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.analytics = check(settings.analytics)
        self.limits = settings.limits
        n = settings.topics.partitions
        self.table = app.Table(
            "journey_map", default=None, partitions=n, key_type=bytes, value_type=bytes
        )
        self.seqs = app.Table(
            "visit_seqs", default=None, partitions=n, key_type=bytes, value_type=bytes
        )
        #: Aggregates of owned partitions, loaded from the table when first needed.
        self.maps: dict[int, PartitionMap] = {}

    # -- the partitions' aggregates ------------------------------------------
    def forget(self) -> None:
        """Drop loaded aggregates (rebalance, recovery, a failed batch): reload from the table."""
        self.maps.clear()

    def active_partitions(self) -> list[int]:
        name = self.settings.topics.visits
        return sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name
        )

    def partition_map(self, partition: int) -> PartitionMap:
        """The partition's aggregate; loaded from the table (cached unless recovering)."""
        pm = self.maps.get(partition)
        if pm is not None:
            return pm
        pm = self._load(partition)
        if not (self.app.rebalancing or self.app.in_recovery):
            self.maps[partition] = pm
        return pm

    def _load(self, partition: int) -> PartitionMap:
        pm = PartitionMap(Aggregate.for_settings(self.analytics))
        for raw_key, raw in table_items(self.table):
            where = parse_bucket_key(raw_key)
            if where is None or where[0] != partition:
                continue
            body = orjson.loads(raw)
            pm.aggregate.merge(Aggregate.from_dict(body["aggregate"]))
            pm.upto[where[1]] = int(body["upto"])
        return pm

    def local_aggregate(self) -> Aggregate:
        """The partitions this worker owns, merged."""
        out = Aggregate.for_settings(self.analytics)
        for p in self.active_partitions():
            out.merge(self.partition_map(p).aggregate)
        return out

    # -- batches ------------------------------------------------------------
    async def on_batch(self, events: list[faust.EventT]) -> None:
        by_partition: dict[int, list[faust.EventT]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append(event)
        try:
            for partition, partition_events in by_partition.items():
                await self._fold(partition, partition_events)
        except BaseException:
            self.forget()
            raise

    async def _fold(self, partition: int, events: list[faust.EventT]) -> None:
        pm = self.partition_map(partition)
        changed: set[int] = set()
        #: journey key -> its visit_seqs value after this batch (None: erased).
        seqs: dict[bytes, bytes | None] = {}
        for event in events:
            msg = event.message
            _current_event.set(weakref.ref(event))
            try:
                record = records.decode(msg.value)
            except records.BadRecord as exc:
                await self._dead_letter(msg, str(exc))
                continue
            key = record.journey.encode()
            if record.erase:
                seqs[key] = None
                continue
            counted = self._counted(seqs, key, msg.offset)
            fresh = records.fresh(record, counted)
            if not fresh:
                m.MAP_RECORDS.labels(outcome="duplicate").inc()
                continue
            held = {b for b, upto in pm.upto.items() if upto >= msg.offset}
            for effect in fresh:
                b = pm.aggregate.bucket_for(effect)
                if b is None or b in held:
                    continue  # not kept, or this bucket already holds this record
                if pm.aggregate.add(effect) is None:
                    continue
                pm.upto[b] = msg.offset
                changed.add(b)
                if isinstance(effect, VisitOpened):
                    m.MAP_VISITS.labels(stage=effect.stage, outcome="opened").inc()
                elif isinstance(effect, VisitClosed):
                    m.MAP_VISITS.labels(stage=effect.stage, outcome=effect.outcome).inc()
            total = max(counted, record.seq + len(record.visits))
            seqs[key] = orjson.dumps([counted, total, msg.offset])
            m.MAP_RECORDS.labels(outcome="counted").inc()
        await self._write(partition, pm, changed, seqs, events[-1])

    def _counted(self, seqs: dict[bytes, bytes | None], key: bytes, offset: int) -> int:
        """How many of the journey's effects were counted before the record at ``offset``."""
        raw = seqs[key] if key in seqs else read_raw(self.seqs, key)
        if raw is None:
            return 0
        before, after, at = orjson.loads(raw)
        # The same record read again: judge it by what was counted before it.
        return int(before) if int(at) == offset else int(after)

    async def _write(
        self,
        partition: int,
        pm: PartitionMap,
        changed: set[int],
        seqs: dict[bytes, bytes | None],
        event: faust.EventT,
    ) -> None:
        """Write the changed buckets and journeys' counts (RocksDB + changelog)."""
        _current_event.set(weakref.ref(event))
        kept = set(pm.aggregate.buckets)
        gone = [b for b in pm.upto if b not in kept]
        last: dict[str, Any] = {}
        written: dict[str, int] = defaultdict(int)
        for b in sorted(changed & kept):
            body = {"upto": pm.upto[b], "aggregate": pm.aggregate.to_dict(buckets=[b])}
            raw = orjson.dumps(body)
            last["map"] = await write_raw(
                self.app, self.table, bucket_key(partition, b), raw, partition
            )
            written["map"] += 1
        for b in gone:  # past retention
            del pm.upto[b]
            last["map"] = await write_raw(
                self.app, self.table, bucket_key(partition, b), None, partition
            )
            written["map"] += 1
        for key, value in seqs.items():
            last["seqs"] = await write_raw(self.app, self.seqs, key, value, partition)
            written["seqs"] += 1
        for name, fut in last.items():
            changelog_persisted(self.table if name == "map" else self.seqs, fut, written[name])

    async def _dead_letter(self, msg: Any, reason: str) -> None:
        log.warning("analytics: journey.visits record dead-lettered: %s", reason)
        head = dlq.headers(reason, msg, "analytics")
        await dlq.send(self.topics.dlq, msg.value or b"", head, self.limits, "visit_record")
        m.MAP_RECORDS.labels(outcome="dead_letter").inc()


def register_map(
    app: faust.App, settings: Settings, topics: Any, stages: Iterable[str]
) -> MapShell:
    """Register the analytics agent and its tables on ``app``."""
    shell = MapShell(app, settings, topics)
    # Every series exists from the start, at 0: a series first scraped with its
    # final value has no increase() in Prometheus.
    for stage in stages:
        for outcome in OUTCOMES:
            m.MAP_VISITS.labels(stage=stage, outcome=outcome)
    for outcome in ("counted", "duplicate", "dead_letter"):
        m.MAP_RECORDS.labels(outcome=outcome)
    batch_agent(
        app,
        "journey_map",
        (settings.topics.visits,),
        shell.on_batch,
        size=BATCH_MESSAGES,
        within_s=BATCH_WINDOW_S,
    )

    def rebalanced(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        shell.forget()

    app.on_partitions_revoked.connect(rebalanced)
    app.on_partitions_assigned.connect(rebalanced)

    @shell.table.on_recover
    async def after_recovery() -> None:
        shell.forget()

    return shell
