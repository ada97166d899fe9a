"""The attribution agent: decided follow-ups and purchases in, conversion records out.

Consumes, co-partitioned with the journeys:

- ``touchpoints.resolved``: each journey's purchases (any channel; an orphan's
  events come again under the customer's key when the journey agent merges
  it) and erase requests, and the event-time marks. The agent runs its own
  clock over those marks, so its watermark is the journey partition's one,
  and never ahead of the purchases it has read;
- ``journey.triggers``: each trigger's deadline, where its window starts;
- ``journey.dispatch``: the dispatcher's decisions (``sent``, ``held_out``).

The rules are pure (:mod:`stream.analytics.attribution`). One
:class:`Attribution` per journey key lives in the ``attribution`` table
(RocksDB + changelog, restored on restart); a window closes when the
watermark passes its end plus the grace, its record goes to
``journey.conversions`` on the journey's partition, and it is counted into the
partition's :class:`FollowupCounts`, kept in the same table under
``COUNTS_KEY`` and written after the states of its batch, on the same
changelog partition. At least once, as the journey agent: a batch's records
and table writes reach the producer before its offsets are committed; input
read again after a crash meets the restored states, so a window closes once,
and a record sent again carries the same ``conversion_id``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from stream import contract, dlq
from stream.analytics.attribution import (
    ARMS,
    CONTROL,
    TREATED,
    Attribution,
    Conversion,
    policy_of,
    purchases_in,
)
from stream.analytics.decisions import read_outcome, read_trigger, scan_resolved
from stream.analytics.followups import FollowupCounts
from stream.app import batch_agent
from stream.dispatch.facts import ERASE_TYPE
from stream.faust_ext.fastpath import (
    changelog_persisted,
    read_raw,
    send_direct,
    table_items,
    write_raw,
)
from stream.journey.clock import NEVER, DueIndex, MergedClock
from stream.observability import metrics as m
from stream.settings import Settings

log = logging.getLogger(__name__)

#: The table key of partition ``p``'s follow-up counts: ``COUNTS_KEY + b"<p>"``.
COUNTS_KEY = b"\x00followups:"
BATCH_MESSAGES = 256
BATCH_WINDOW_S = 0.05
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def _purchases_or_erasures(value: bytes) -> bool:
    """Whether a packed message may hold a purchase or an erase request (cheap pre-check)."""
    return b"purchase" in value or ERASE_TYPE.encode() in value


class AttributionShell:
    """The attribution agent's plumbing: table, clocks, due windows, records out."""

    def __init__(
        self, app: faust.App, settings: Settings, topics: Any, partition_of: Callable[[bytes], int]
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.partition_of = partition_of
        self.policy = policy_of(settings)
        n = settings.topics.partitions
        self.table = app.Table(
            "attribution", default=None, partitions=n, key_type=bytes, value_type=bytes
        )
        lateness = int(settings.journey.allowed_lateness_s * 1000)
        ahead = int(settings.journey.max_future_s * 1000)
        self.clocks: dict[int, MergedClock] = defaultdict(
            lambda: MergedClock(lateness, sources=2 * n, max_ahead_ms=ahead)
        )
        self.due: dict[int, DueIndex] = defaultdict(DueIndex)
        #: Partition -> journey key -> its open windows (for the gauge).
        self.open: dict[int, dict[str, int]] = defaultdict(dict)
        self.counts: dict[int, FollowupCounts] = {}
        self.bucket_ms = settings.attribution.bucket_s * 1000
        self.retention_ms = settings.attribution.retention_days * DAY_MS
        self.names = (settings.topics.resolved, settings.topics.triggers, settings.topics.dispatch)

    # -- batches ------------------------------------------------------------------
    async def on_batch(self, events: list[faust.EventT]) -> None:
        by_partition: dict[int, list[faust.EventT]] = defaultdict(list)
        for event in events:
            by_partition[event.message.partition].append(event)
        for partition, part in by_partition.items():
            await self.on_partition(partition, part)

    async def on_partition(self, partition: int, events: list[faust.EventT]) -> None:
        """Take one partition's messages in, close what the watermark passed, write, emit."""
        states: dict[str, Attribution] = {}

        def state(key: str) -> Attribution:
            found = states.get(key)
            if found is None:
                raw = read_raw(self.table, key.encode())
                found = states[key] = (
                    Attribution.from_dict(orjson.loads(raw)) if raw else Attribution(key)
                )
            return found

        clock = self.clocks[partition]
        t = now_ms()
        for event in events:
            _current_event.set(weakref.ref(event))
            msg = event.message
            try:
                self._take(msg, clock, state, t)
            except Exception as exc:
                await self._dead_letter(msg, exc)
        wm = clock.watermark()
        keys = set(states)
        if wm != NEVER:
            keys.update(self.due[partition].pop_due(wm))
        records: list[Conversion] = []
        for key in sorted(keys):
            st = state(key)
            if wm != NEVER:
                records.extend(st.advance(wm, self.policy))
            self.due[partition].schedule(key, st.next_due(self.policy))
            self._count_open(partition, st)
        await self._write(partition, events[-1], states, records, wm)

    def _take(
        self, msg: Any, clock: MergedClock, state: Callable[[str], Attribution], now: int
    ) -> None:
        resolved, triggers, _ = self.names
        value = msg.value or b""
        if msg.topic == resolved:
            mark = contract.loads_mark(value)
            if mark is not None:
                clock.update((mark.kind, mark.partition), mark.at, now)
                return
            if not _purchases_or_erasures(value):
                return
            for key, tp in scan_resolved(value):
                for bought in purchases_in(tp):
                    state(key).on_purchase(bought, self.policy)
                if tp.type == ERASE_TYPE and tp.source == contract.INTERNAL_SOURCE:
                    state(key).erase()
        elif msg.topic == triggers:
            trig = read_trigger(value)
            self._check_partition(trig.journey_key, msg.partition)
            st = state(trig.journey_key)
            self._opened(
                st,
                trig.trigger_id,
                lambda: st.on_trigger(trig.trigger_id, trig.rule, trig.deadline, self.policy),
            )
        else:
            out = read_outcome(value)
            self._check_partition(out.journey_key, msg.partition)
            st = state(out.journey_key)
            self._opened(
                st,
                out.trigger_id,
                lambda: st.on_outcome(out.trigger_id, out.rule, out.outcome, out.at, self.policy),
            )

    def _check_partition(self, key: str, partition: int) -> None:
        """A record must come on its journey's partition, where that journey's state is."""
        home = self.partition_of(key.encode())
        if home != partition:
            raise ValueError(f"journey {key[:64]!r} belongs to partition {home}, not {partition}")

    def _count_open(self, partition: int, st: Attribution) -> None:
        if st.windows:
            self.open[partition][st.key] = len(st.windows)
        else:
            self.open[partition].pop(st.key, None)

    @staticmethod
    def _opened(st: Attribution, trigger_id: str, take: Callable[[], None]) -> None:
        before = trigger_id in st.windows
        take()
        window = st.windows.get(trigger_id)
        if window is not None and not before:
            m.FOLLOWUP_DECIDED.labels(rule=window.rule, arm=ARMS[window.outcome]).inc()

    async def _dead_letter(self, msg: Any, exc: Exception) -> None:
        if isinstance(exc, ValueError | orjson.JSONDecodeError | KeyError | TypeError):
            log.warning(
                "attribution: %s[%s]@%s rejected: %s", msg.topic, msg.partition, msg.offset, exc
            )
            reason, label = f"attribution: {exc}", "invalid_record"
        else:
            dlq.log_failure("attribution", msg, exc)
            reason, label = dlq.error_reason(exc), dlq.ERROR_LABEL
        head = dlq.headers(reason, msg, "attribution")
        await dlq.send(self.topics.dlq, msg.value or b"", head, self.settings.limits, label)

    # -- writes and records --------------------------------------------------------
    async def _write(
        self,
        partition: int,
        event: faust.EventT,
        states: dict[str, Attribution],
        records: list[Conversion],
        wm: int,
    ) -> None:
        """States, then the partition's counts, then the records (see module doc)."""
        _current_event.set(weakref.ref(event))
        last = None
        written = 0
        for key, st in states.items():
            raw = None if st.empty else orjson.dumps(st.to_dict())
            last = await write_raw(self.app, self.table, key.encode(), raw, partition)
            written += 1
        if records:
            counts = self.counts_of(partition)
            counts.add_all(records)
            counts.forget_before(wm - self.retention_ms)
            raw = orjson.dumps(counts.to_dict())
            counts_key = COUNTS_KEY + str(partition).encode()
            last = await write_raw(self.app, self.table, counts_key, raw, partition)
            written += 1
        if last is not None:
            changelog_persisted(self.table, last, written)
        for c in records:
            m.FOLLOWUP_CLOSED.labels(
                rule=c.rule, arm=c.arm, converted=str(c.converted).lower()
            ).inc()
            if c.revenue_cents:
                m.FOLLOWUP_REVENUE.labels(rule=c.rule, arm=c.arm, currency=c.currency).inc(
                    c.revenue_cents / 100
                )
            await send_direct(
                self.app,
                self.topics.conversions,
                orjson.dumps(c.to_dict()),
                key=c.journey_key.encode() if c.journey_key else None,
                partition=partition,
            )
        m.FOLLOWUP_OPEN.labels(partition=str(partition)).set(sum(self.open[partition].values()))

    def counts_of(self, partition: int) -> FollowupCounts:
        found = self.counts.get(partition)
        if found is None:
            found = self.counts[partition] = FollowupCounts(self.bucket_ms)
        return found

    # -- ownership and views ------------------------------------------------------
    def active_partitions(self) -> set[int]:
        name = self.settings.topics.resolved
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    def rebuild(self) -> None:
        """Due windows and counts of the owned partitions, from the table (after recovery)."""
        actives = self.active_partitions()
        self.due.clear()
        self.open.clear()
        self.counts.clear()
        for key, raw in self._items():
            if key.startswith(COUNTS_KEY):
                p = int(key[len(COUNTS_KEY) :])
                if p in actives:
                    self.counts[p] = FollowupCounts.from_dict(orjson.loads(raw))
                continue
            p = self.partition_of(key)
            if p in actives:
                st = Attribution.from_dict(orjson.loads(raw))
                self.due[p].schedule(st.key, st.next_due(self.policy))
                self._count_open(p, st)
        log.info(
            "attribution rebuilt: partitions=%s keys=%d",
            sorted(actives),
            sum(len(d) for d in self.due.values()),
        )

    def _items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, raw in table_items(self.table):
            if raw:
                yield key, raw

    def local_counts(self) -> FollowupCounts:
        """The follow-up counts of the partitions this worker actively owns, merged."""
        out = FollowupCounts(self.bucket_ms)
        for p in sorted(self.active_partitions()):
            counts = self.counts.get(p)
            if counts is not None:
                out.merge(counts)
        return out


def register_attribution(
    app: faust.App, settings: Settings, topics: Any, partition_of: Callable[[bytes], int]
) -> AttributionShell:
    """Register the attribution agent, its table and the ``/followups`` views on ``app``."""
    shell = AttributionShell(app, settings, topics, partition_of)
    # Every configured rule's series exist from the start, at 0: the dashboards
    # compare arms, and an arm never decided yet must read 0, not "no data".
    for raw in (*settings.journey.abandonment, *settings.journey.followups):
        rule = str(raw.get("name"))
        for arm in (TREATED, CONTROL):
            m.FOLLOWUP_DECIDED.labels(rule=rule, arm=arm)
            for converted in ("true", "false"):
                m.FOLLOWUP_CLOSED.labels(rule=rule, arm=arm, converted=converted)
    t = settings.topics
    batch_agent(
        app,
        "attribution",
        (t.resolved, t.triggers, t.dispatch),
        shell.on_batch,
        size=BATCH_MESSAGES,
        within_s=BATCH_WINDOW_S,
    )

    @shell.table.on_recover
    async def after_recovery() -> None:
        shell.rebuild()

    def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for p in list(shell.open):
            with contextlib.suppress(KeyError):
                m.FOLLOWUP_OPEN.remove(str(p))

    app.on_partitions_revoked.connect(revoked)

    from stream.attribution.api import register_followup_views

    register_followup_views(app, shell, settings)
    return shell
