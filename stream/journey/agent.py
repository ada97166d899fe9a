"""Journey agent: per-customer state in a changelog-backed table; transitions and triggers out.

Consumes ``touchpoints.resolved`` (packed arrays keyed by journey key) and the
co-partitioned ``journey.timers`` (check messages the timer sends for journeys
whose pending events or deadlines the watermark has passed). Every table write
happens here, with a current event, so it goes through the changelog; the timer
only reads the in-memory due index and sends messages.

Throughput (see README "Throughput"): the agent takes messages in batches
(``take_events``). ``load`` and ``save`` go through a per-batch working set, so
a journey touched by several messages of one batch is decoded once and written
to the table (RocksDB + changelog) once, when the batch ends and before its
offsets are acked; and through a bounded cache of decoded states of the
partitions this worker owns (it is their only writer), cleared on every
rebalance and recovery, so a journey seen again soon is not decoded again.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import time
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import TP

from stream import contract, dlq
from stream.app import (
    Handoff,
    changelog_persisted,
    key_partitions,
    read_raw,
    send_direct,
    write_raw,
)
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.ingest.identity import MERGE
from stream.journey import rules
from stream.journey.clock import NEVER, DueIndex, MergedClock, PartitionClock
from stream.journey.model import journey_model
from stream.journey.rules import Effect
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState, Transition
from stream.observability import metrics as m
from stream.settings import Settings
from stream.triggers.trigger import ABANDONMENT, Trigger

log = logging.getLogger(__name__)

MERGE_IN = "merge_in"
TIMER_INTERVAL_S = 0.25
#: How often end offsets are fetched from the broker to tell whether input is read.
PROGRESS_INTERVAL_S = 0.5
#: A partition with a batch this recent settles its due journeys itself; the timer
#: sends check messages only for quiet ones (a check would queue behind a backlog).
BATCH_QUIET_S = 2.0
#: How long a journey waits for an identity link's answer before settling anyway.
LINK_ACK_TIMEOUT_MS = 30_000
#: How often source partitions send their event-time marks to the journey partitions.
MARK_INTERVAL_S = 0.25
#: Messages the journey agent takes per batch, and how long it waits to fill one.
BATCH_MESSAGES = 256
BATCH_WINDOW_S = 0.02


def now_ms() -> int:
    return int(time.time() * 1000)


def linked_aliases(tp: Touchpoint) -> list[str]:
    """Aliases ingest links to ``tp.customer_id`` (each answered by a ``merge_in``)."""
    key = tp.routing_key
    out = [key] if key != tp.customer_id else []
    out.extend(a for a in contract.alias_ids(tp) if a != key)
    return out


def identity_ready(effect: Effect, at: int) -> Effect:
    """Tag a trigger released by identity links answering at ``at`` (wall ms)."""
    if isinstance(effect, Trigger):
        return replace(effect, extra={**effect.extra, "identity_ready_at": at})
    return effect


def check_messages(watermark: int, keys: list[str]) -> Iterable[bytes]:
    """Timer check messages for ``keys`` (``{"watermark", "keys"}``), each of bounded size."""
    head = b'{"watermark":%d,"keys":' % watermark
    for array in contract.pack_arrays(orjson.dumps(key) for key in keys):
        yield head + array + b"}"


def counted_stage(state: JourneyState | None) -> str | None:
    """The stage a journey counts in for the stage gauge (merged journeys don't)."""
    if state is None or state.merged_into is not None:
        return None
    return state.stage


def observe_time_in_stage(state: JourneyState, effects: list[Effect]) -> None:
    """Observe how long (event time) ``state`` stayed in each stage it just left."""
    for tr in effects:
        if not isinstance(tr, Transition) or tr.from_stage is None:
            continue
        for visit in reversed(state.history):
            if visit.stage == tr.from_stage and visit.left_at == tr.at:
                seconds = (visit.left_at - visit.entered_at) / 1000
                m.TIME_IN_STAGE.labels(stage=tr.from_stage).observe(max(0.0, seconds))
                break


@dataclass
class _Step:
    """What one journey's step (:meth:`JourneyShell.isolated`) staged for the batch."""

    #: (partition, state, its encoding, counted stage before, event of the partition).
    saves: list[tuple[int, JourneyState, bytes, str | None, Any]] = field(default_factory=list)
    outbox: dict[str, list[Touchpoint]] = field(default_factory=dict)


class JourneyShell:
    """Plumbing around the pure rules: table I/O, watermarks, due index, emission."""

    def __init__(self, app: faust.App, settings: Settings, topics: Any, model: StageModel):
        self.app = app
        self.settings = settings
        self.topics = topics
        self.model = model
        self.lateness_ms = int(settings.journey.allowed_lateness_s * 1000)
        self.table = app.Table(
            "journeys",
            default=None,
            partitions=settings.topics.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        partitions = settings.topics.partitions
        #: Journey partition -> watermark merged from every source's marks and
        #: every links partition's relay of them.
        #: No clock runs further ahead of the wall clock than an event may.
        ahead = int(settings.journey.max_future_s * 1000)
        self.clocks: dict[int, MergedClock] = defaultdict(
            lambda: MergedClock(self.lateness_ms, sources=2 * partitions, max_ahead_ms=ahead)
        )
        #: ``journey.links`` partition -> the source marks read there, each after
        #: the links sent before it (relayed by :meth:`relay_marks`).
        self.relays: dict[int, MergedClock] = defaultdict(
            lambda: MergedClock(0, sources=partitions, max_ahead_ms=ahead)
        )
        self._relays_sent: dict[int, tuple[int, float]] = {}
        #: Source (touchpoints) partition -> its event-time progress, for marks.
        self.sources: dict[int, PartitionClock] = defaultdict(
            lambda: PartitionClock(
                0, idle_ms=int(settings.journey.idle_s * 1000), max_ahead_ms=ahead
            )
        )
        self._marks_sent: dict[int, tuple[int, float]] = {}
        #: Journeys waiting for identity links: (wall ms their wait runs out, partition, key).
        self._held: list[tuple[int, int, str]] = []
        #: When each journey partition last had a batch (monotonic seconds).
        self._last_batch: dict[int, float] = {}
        self.due: dict[int, DueIndex] = defaultdict(DueIndex)
        #: Offsets this worker processed, per topic-partition.
        self.processed: dict[TP, int] = {}
        #: Whether each assigned input partition is read to its end (refreshed by a timer).
        self.read_to_end: dict[TP, bool] = {}
        self.stage_counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._gauge_partitions: set[int] = set()
        self._first_applied = False
        #: Touchpoints taken into a journey (not the engine's own merge messages,
        #: nor events only passed on to the journey they merged into).
        self.applied = 0
        #: Decoded states of owned partitions, least recently saved first. An
        #: OrderedDict: evicting a plain dict's first key scans the deleted
        #: slots ahead of it (about 8x slower per write at 20,000 entries).
        self.cache: OrderedDict[str, JourneyState] = OrderedDict()
        self.cache_size = settings.worker.state_cache
        #: This batch's states to write: key -> (state, its encoding, an event of its partition).
        self.dirty: dict[str, tuple[JourneyState, bytes, faust.EventT]] = {}
        self._event: faust.EventT | None = None
        #: The journey step under way (see :meth:`isolated`), staging what it changes.
        self._step: _Step | None = None
        self.limits = settings.limits
        #: Partitions of keyed sends, cached (the producer's partitioner is slow).
        self.resolved_partition = key_partitions(app, settings.topics.resolved)
        self.triggers_partition = key_partitions(app, settings.topics.triggers)
        #: Decoded values the ingest agent of this process just sent us.
        self.handoff = Handoff()
        #: Touchpoints this batch passes on to other journeys, by journey key
        #: (sent packed when the batch ends, see :meth:`send_forwards`).
        self.outbox: dict[str, list[Touchpoint]] = {}

    # -- table ------------------------------------------------------------
    def load(self, key: str) -> JourneyState | None:
        """The journey's latest state: this batch's, else cached, else the table's."""
        entry = self.dirty.get(key)
        if entry is not None:
            return entry[0]
        state = self.cache.get(key)
        if state is not None:
            return state
        raw = read_raw(self.table, key.encode())
        return JourneyState.loads(raw) if raw is not None else None

    def save(self, partition: int, state: JourneyState, before: str | None) -> None:
        """Stage ``state`` for writing at the end of the batch (:meth:`flush`).

        ``before`` is :func:`counted_stage` of what was loaded. Only called
        while a batch is handled (``on_batch`` sets the event whose partition
        the write belongs to). The state is encoded here, so a state that
        cannot be written (over ``[limits] max_state_bytes``, raised as
        :class:`InvalidTouchpoint`) fails the step that made it, not the batch;
        and what it emits (transitions, triggers: parts of it) can be encoded too.
        """
        event = self._event
        if event is None:
            raise RuntimeError("journey states are saved only while a batch is handled")
        raw = state.dumps()
        limit = self.limits.max_state_bytes
        if len(raw) > limit:
            raise InvalidTouchpoint(
                f"journey {state.key!r} would be {len(raw)} bytes, over the {limit}-byte limit",
                None,
                "state_size",
            )
        staged = (partition, state, raw, before, event)
        if self._step is not None:
            self._step.saves.append(staged)
        else:
            self._commit(*staged)

    def _commit(
        self, partition: int, state: JourneyState, raw: bytes, before: str | None, event: Any
    ) -> None:
        self.dirty[state.key] = (state, raw, event)
        after = counted_stage(state)
        if before != after:
            counts = self.stage_counts[partition]
            if before is not None:
                counts[before] -= 1
            if after is not None:
                counts[after] += 1
        self.due[partition].schedule(state.key, rules.next_due(state, self.model))

    async def flush(self) -> None:
        """Write every journey this batch changed, once each (RocksDB + changelog).

        The same two writes as ``table[key] = value`` (the store, then the
        changelog record on the event's partition, whose delivery records the
        changelog offset the store holds), without Faust's per-record send path
        (send_soon, the producer buffer, per-message sensors), which cost more
        than RocksDB and the encoding together. The records go straight to the
        producer, so Faust's flush before each offset commit still waits for
        them. Faust's table-set sensor is not called for these writes.
        """
        dirty, self.dirty = self.dirty, {}
        if not dirty:
            return
        cache = self.cache
        cache_size = self.cache_size
        last: dict[int, Any] = {}
        current = None
        for state, raw, event in dirty.values():
            if event is not current:
                # The store writes to the partition of the current event.
                _current_event.set(weakref.ref(event))
                current = event
            key = state.key
            partition = event.message.partition
            last[partition] = await write_raw(self.app, self.table, key.encode(), raw, partition)
            cache[key] = state
            cache.move_to_end(key)
            if len(cache) > cache_size:
                cache.popitem(last=False)
        m.STATE_WRITES.inc(len(dirty))
        for fut in last.values():
            changelog_persisted(self.table, fut)

    def discard(self) -> None:
        """Forget unwritten and cached states (a failed batch: they may be half-applied)."""
        self.dirty.clear()
        self.cache.clear()
        self.outbox.clear()
        self._event = None
        self._step = None

    def isolated(self, key: str, step: Callable[[], list[Effect]]) -> list[Effect] | Exception:
        """Run one journey's step so that it takes effect whole or not at all.

        ``step`` changes only journey ``key`` (the rules change states in
        place), saving it and passing touchpoints on to other journeys; both
        are staged and reach the batch only if it returns, with its effects.
        If it raises, the journey is put back as it was before the step (from
        its encoding in this batch, else from the table) and the exception is
        returned for the caller to dead-letter what the step was given.
        """
        self._step = staged = _Step()
        applied = self.applied
        try:
            effects = step()
        except Exception as exc:
            self.applied = applied
            self.forget(key)
            return exc
        finally:
            self._step = None
        for save in staged.saves:
            self._commit(*save)
        for target, tps in staged.outbox.items():
            self.forward(target, tps)
        return effects

    def forget(self, key: str) -> None:
        """Drop what a failed step may have half-changed of journey ``key``."""
        self.cache.pop(key, None)
        entry = self.dirty.get(key)
        if entry is not None:
            _, raw, event = entry
            self.dirty[key] = (JourneyState.loads(raw), raw, event)

    async def dead_letter(
        self,
        exc: Exception,
        value: Callable[[], bytes] | None,
        message: Any,
        what: str,
        extra: dict[str, bytes] | None = None,
    ) -> None:
        """Dead-letter what a failed step held (``value``; None: the whole message), with why.

        A broken rule of the contract (a state over its size limit) is a
        rejection; anything else an error, counted and logged.
        """
        if isinstance(exc, InvalidTouchpoint):
            reason, label = exc.reason, contract.reason_label(exc.field, exc.limit)
            log.warning("journey: %s dead-lettered: %s", what, reason)
        else:
            dlq.log_failure("journey", message, exc, what)
            reason, label = dlq.error_reason(exc), dlq.ERROR_LABEL
        raw = message.value or b""
        if value is not None:
            with contextlib.suppress(Exception):
                raw = value()
        head = dlq.headers(reason, message, "journey", extra=extra)
        await dlq.send(self.topics.dlq, raw, head, self.limits, label)

    async def on_batch(self, events: list[faust.EventT]) -> None:
        """Handle a batch of messages of both input topics, then write what changed.

        Touchpoints first, per partition (see :meth:`on_touchpoints`), then the
        timer's checks in arrival order (stale ones are no-ops).
        """
        timers_name = self.settings.topics.timers
        try:
            by_partition: dict[int, list[faust.EventT]] = defaultdict(list)
            checks: list[faust.EventT] = []
            for event in events:
                if event.message.topic == timers_name:
                    checks.append(event)
                else:
                    by_partition[event.message.partition].append(event)
            for partition_events in by_partition.values():
                await self.on_touchpoints(partition_events)
            for event in checks:
                self._event = event
                _current_event.set(weakref.ref(event))
                await self.on_check(event)
            self._event = None
            await self.send_forwards()
            await self.flush()
        except BaseException:
            self.discard()
            raise

    # -- watermark ------------------------------------------------------------
    async def refresh_progress(self) -> None:
        """Ask the broker for end offsets and record which inputs are read to the end."""
        consumer = self.app.consumer
        names = {self.settings.topics.touchpoints, self.settings.topics.resolved}
        tps = [tp for tp in consumer.assignment() if tp.topic in names]
        if not tps:
            self.read_to_end = {}
            return
        ends = await consumer.highwaters(*tps)
        # Nothing processed yet this session: where the consumer was seeked to.
        read_offsets = getattr(consumer, "_read_offset", {})
        flushed = self.app.producer.buffer.pending.qsize() == 0
        status: dict[TP, bool] = {}
        for tp in tps:
            done = self.processed.get(tp)
            position = done + 1 if done is not None else (read_offsets.get(tp) or 0)
            # The larger of the fetcher's high watermark (exact, up to a fetch old)
            # and the broker's answer now (fresh, but some brokers, Tansu among
            # them, under-report it right after a batched write).
            known = [v for v in (ends.get(tp), consumer.highwater(tp)) if v is not None]
            status[tp] = flushed and bool(known) and position >= max(known)
            lag = max(known) - position if known else 0
            m.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, lag))
        for gone in set(self.read_to_end) - set(status):
            m.CONSUMER_LAG.remove(gone.topic, str(gone.partition))
        self.read_to_end = status

    def observe_source(self, partition: int, newest: int, now: int) -> None:
        """Ingest forwarded events of source ``partition`` up to event time ``newest``."""
        self.sources[partition].observe(newest, now)

    async def send_marks(self) -> None:
        """Send each owned source partition's mark to every journey and links partition.

        A mark goes out when it moved, and at least every second, so a worker
        that just took over a journey (or links) partition learns every
        source's progress. On ``journey.links`` it follows the identity links
        the source sent there; each links partition relays it once those are
        handled (:meth:`relay_marks`).
        """
        name = self.settings.topics.touchpoints
        t = now_ms()
        wall = time.monotonic()
        for tp, read in list(self.read_to_end.items()):
            if tp.topic != name:
                continue
            mark = self.sources[tp.partition].watermark(t, read)
            if mark == NEVER:
                continue
            last = self._marks_sent.get(tp.partition)
            if last is not None and last[0] == mark and wall - last[1] < 1.0:
                continue
            self._marks_sent[tp.partition] = (mark, wall)
            body = contract.dumps_mark(tp.partition, mark)
            for p in range(self.settings.topics.partitions):
                await send_direct(self.app, self.topics.resolved, body, partition=p)
                await send_direct(self.app, self.topics.links, body, partition=p)

    def observe_relay(self, links_partition: int, mark: contract.Mark, now: int) -> None:
        """A source mark read on ``journey.links``: the links before it are handled."""
        self.relays[links_partition].update(mark.partition, mark.at, now)

    async def relay_marks(self, links_partitions: Iterable[int]) -> None:
        """Send each links partition's relayed mark to every journey partition.

        The smallest source mark read there (once every source has sent one):
        the merges of every link sent before it were handed to the producer
        ahead of this. Like a source's mark, it goes out when it moved and at
        least every second (sources re-send theirs as often).
        """
        wall = time.monotonic()
        for lp in links_partitions:
            mark = self.relays[lp].watermark()
            if mark == NEVER:
                continue
            last = self._relays_sent.get(lp)
            if last is not None and last[0] == mark and wall - last[1] < 1.0:
                continue
            self._relays_sent[lp] = (mark, wall)
            body = contract.dumps_mark(lp, mark, contract.LINKS_MARK)
            for p in range(self.settings.topics.partitions):
                await send_direct(self.app, self.topics.resolved, body, partition=p)

    def watermark(self, partition: int) -> int:
        return self.clocks[partition].watermark()

    # -- handlers ------------------------------------------------------------
    async def on_touchpoints(self, events: list[faust.EventT]) -> None:
        """Packed messages of one partition: touchpoints of several journeys each.

        The source marks among the messages move the partition's clock first;
        then each journey takes in all of its touchpoints of these messages (in
        arrival order) and settles to the resulting watermark: one state change,
        hence one table write, per journey however many messages it is in, and a
        session the watermark already passed settles in that same write instead
        of waiting for a timer check.
        """
        partition = events[-1].message.partition
        self._last_batch[partition] = time.monotonic()
        clock = self.clocks[partition]
        t = now_ms()
        applied_before = self.applied
        by_key: dict[str, list[list[Touchpoint]]] = {}
        #: The messages each journey's touchpoints came in (for dead letters).
        came_in: dict[str, list[Any]] = {}
        for event in events:
            msg = event.message
            value = msg.value or b"[]"
            self.processed[msg.tp] = msg.offset
            mark = contract.loads_mark(value)
            if mark is not None:
                clock.update((mark.kind, mark.partition), mark.at, t)
                continue
            try:
                groups = self.handoff.take(msg.partition, msg.offset, value)
                if groups is None:
                    groups = contract.loads_groups(value)
                    if not all(isinstance(key, str) for key, _ in groups):
                        raise TypeError("a journey key is not text")
            except Exception as exc:
                await self.dead_letter(exc, None, msg, "message")
                continue
            for key, tps in groups:
                segments = by_key.get(key)
                if segments is None:
                    by_key[key] = [tps]
                    came_in[key] = [msg]
                else:
                    segments.append(tps)
                    came_in[key].append(msg)
        wm = clock.watermark()
        self._event = events[-1]
        _current_event.set(weakref.ref(events[-1]))
        effects: list[Effect] = []
        for key, segments in by_key.items():
            out = self.isolated(
                key, functools.partial(self.take_segments, partition, key, segments, wm)
            )
            if isinstance(out, Exception):
                await self.dead_letter(
                    out,
                    functools.partial(_encoded_groups, key, segments),
                    came_in[key][0],
                    f"journey {key!r} of",
                    _provenance(key, came_in[key]),
                )
                continue
            effects.extend(out)
        # Journeys the watermark just made due (pending events, deadlines) are
        # settled here, in the partition's own batch, rather than by a timer
        # check that would queue behind this partition's backlog.
        for key in self.due[partition].pop_due(wm):
            out = self.isolated(key, functools.partial(self.check, partition, key, wm))
            if isinstance(out, Exception):
                await self.dead_letter(
                    out,
                    functools.partial(_encoded_check, wm, key),
                    events[-1].message,
                    f"due check of journey {key!r} after",
                    {"journey_key": key.encode()},
                )
                continue
            effects.extend(out)
        await self.emit(partition, effects)
        count = self.applied - applied_before
        if not count:
            return
        m.EVENTS_APPLIED.inc(count)
        if not self._first_applied:
            self._first_applied = True
            m.FIRST_APPLIED.set(t / 1000)
        m.LAST_APPLIED.set(now_ms() / 1000)

    def take_segments(
        self, partition: int, key: str, segments: list[list[Touchpoint]], wm: int
    ) -> list[Effect]:
        """One journey's touchpoints of a batch, message by message (``segments``)."""
        if len(segments) > 1 and any(tp.type == MERGE for seg in segments[:-1] for tp in seg):
            # A merge before later messages: take those in as separately as they came.
            effects: list[Effect] = []
            for seg in segments:
                effects.extend(self.take_in(partition, key, seg, wm))
            return effects
        tps = segments[0] if len(segments) == 1 else [tp for seg in segments for tp in seg]
        return self.take_in(partition, key, tps, wm)

    def take_in(self, partition: int, key: str, tps: list[Touchpoint], wm: int) -> list[Effect]:
        """Apply one journey's touchpoints, settle up to ``wm`` and save it once."""
        state = self.load(key)
        before = counted_stage(state)
        if state is not None and state.merged_into is not None:
            for tp in tps:
                if tp.type == MERGE:
                    self.merge_again(state, tp)
            self.forward(state.merged_into, [tp for tp in tps if tp.type != MERGE])
            return []
        fresh = state is None
        if state is None:
            state = JourneyState(key=key)
        t = now_ms()
        was_held = self.held(state, t)
        transitions: list[Effect] = []
        for tp in tps:
            if tp.type == MERGE:
                into, alias = str(tp.properties["into"]), str(tp.properties["alias"])
                if state.events or state.pending:
                    self.merge_out(state, into, alias, tp.timestamp)
                    # Pending events stay: they went with the journey, and go
                    # again if the merge is asked for again (see merge_again).
                    state.merged_into = into
                    m.IDENTITY_MERGES.inc()
                else:
                    self.merge_out(None, into, alias, tp.timestamp)  # just the ack
                continue
            if tp.type == MERGE_IN:
                alias = str(tp.properties["alias"])
                state.awaiting.pop(alias, None)
                if alias not in state.linked:
                    state.linked.append(alias)
                if tp.properties.get("state") is None:
                    continue
                other = JourneyState.from_dict(tp.properties["state"])
                state, out = rules.merge(state, other, alias, self.model)
                transitions.extend(out)
                continue
            if tp.timestamp < state.settled_until:
                m.LATE_EVENTS.inc()
            self.applied += 1
            state, out = rules.apply(state, tp, self.model)
            transitions.extend(out)
            if tp.customer_id is not None:
                for alias in linked_aliases(tp):
                    if alias not in state.linked and alias not in state.awaiting:
                        state.awaiting[alias] = t
        if state.merged_into is None and not self.held(state, t):
            self.drop_expired_links(state, t)
            state, out = rules.advance(state, wm, self.model)
            if was_held:
                # The last identity link just answered: the journey's own
                # watermark moves only now (fire delay is measured from both).
                out = [identity_ready(e, t) for e in out]
            transitions.extend(out)
        if fresh and not (state.events or state.pending or state.merged_into or state.linked):
            return transitions  # an ack for an alias with no journey: nothing to keep
        self.save(partition, state, before)
        observe_time_in_stage(state, transitions)
        return transitions

    def held(self, state: JourneyState, now: int) -> bool:
        """Whether settling waits for identity links still on their way.

        A login or identify links aliases (device, loyalty card, email) whose
        orphan journeys live in other partitions; each answers with a
        ``merge_in`` (its events, or just an acknowledgement). Until then a
        purchase made under such an alias (say, in a store with the loyalty
        card, read from the backlog before the link) may be missing here, so
        nothing settles and no deadline fires. Links unanswered after
        ``LINK_ACK_TIMEOUT_MS`` are given up (logged), never blocking a journey.
        """
        awaiting = state.awaiting
        if not awaiting:
            return False
        return any(now - since <= LINK_ACK_TIMEOUT_MS for since in awaiting.values())

    @staticmethod
    def drop_expired_links(state: JourneyState, now: int) -> None:
        """Forget links that never answered (the caller saves the state)."""
        for alias, since in list(state.awaiting.items()):
            if now - since > LINK_ACK_TIMEOUT_MS:
                log.warning("identity link %s -> %s unanswered; settled anyway", alias, state.key)
                m.IDENTITY_LINKS_UNANSWERED.inc()
                del state.awaiting[alias]

    async def on_check(self, event: faust.EventT) -> None:
        """A timer's check message: settle the listed journeys to the watermark.

        Each journey on its own (:meth:`isolated`); a message that is not a
        check, or a journey that fails, is dead-lettered.
        """
        msg = event.message
        try:
            body = orjson.loads(msg.value or b"{}")
            wm = max(int(body["watermark"]), self.watermark(msg.partition))
            keys = [str(key) for key in body["keys"]]
        except Exception as exc:
            await self.dead_letter(exc, None, msg, "check message")
            return
        effects: list[Effect] = []
        for key in keys:
            out = self.isolated(key, functools.partial(self.check, msg.partition, key, wm))
            if isinstance(out, Exception):
                await self.dead_letter(
                    out,
                    functools.partial(_encoded_check, wm, key),
                    msg,
                    f"check of journey {key!r} in",
                    {"journey_key": key.encode()},
                )
                continue
            effects.extend(out)
        await self.emit(msg.partition, effects)

    def check(self, partition: int, key: str, wm: int) -> list[Effect]:
        """Settle one journey to ``wm`` (stale or duplicate checks are no-ops)."""
        state = self.load(key)
        if state is None or state.merged_into is not None:
            return []
        before = counted_stage(state)
        t = now_ms()
        if self.held(state, t):
            # The links' answers (merge_in) settle it; if they never come, the
            # timer makes it due again once the wait runs out (not every batch).
            expires = max(state.awaiting.values()) + LINK_ACK_TIMEOUT_MS + 1
            heapq.heappush(self._held, (expires, partition, key))
            return []
        if wm <= state.settled_until:
            # Nothing to do, but keep the key indexed.
            self.due[partition].schedule(key, rules.next_due(state, self.model))
            return []
        self.drop_expired_links(state, t)
        state, out = rules.advance(state, wm, self.model)
        self.save(partition, state, before)
        observe_time_in_stage(state, out)
        return out

    def merge_again(self, state: JourneyState, tp: Touchpoint) -> None:
        """Answer a merge this journey already made (the link was read again).

        A worker can die after saving an orphan journey as merged but before
        its ``merge_in`` left; the link, not yet committed, is then read again
        by the next owner, and the customer's journey still waits for the
        answer. So the journey goes again as it went (the customer's journey
        takes each alias in once), and a link to another customer is answered
        with an acknowledgement.
        """
        into, alias = str(tp.properties["into"]), str(tp.properties["alias"])
        if into == state.merged_into:
            self.merge_out(replace(state, merged_into=None), into, alias, tp.timestamp)
        else:
            self.merge_out(None, into, alias, tp.timestamp)

    def merge_out(self, state: JourneyState | None, into: str, alias: str, at: int) -> None:
        """Pass on an orphan journey (or, with None, only the link's acknowledgement)."""
        body = contract.internal_touchpoint(
            MERGE_IN,
            f"merge_in:{alias}:{into}",
            at,
            anonymous_id=alias,
            properties={"alias": alias, "state": None if state is None else state.to_dict()},
        )
        self.forward(into, [body])

    def forward(self, key: str, tps: list[Touchpoint]) -> None:
        """Pass touchpoints on to another journey, when this batch ends (:meth:`send_forwards`)."""
        if tps:
            outbox = self.outbox if self._step is None else self._step.outbox
            queued = outbox.get(key)
            if queued is None:
                outbox[key] = list(tps)
            else:
                queued.extend(tps)

    async def send_forwards(self) -> None:
        """Send what this batch passed on to other journeys, packed per partition.

        Identity answers (``merge_in``) and events of merged journeys, in the
        order they were passed on, as ingest sends its touchpoints: one message
        per partition (up to ``contract.MAX_PACKED_BYTES``) instead of one per
        journey, which in a backlog of identified visitors was most of the
        messages the journey agent read. The agent of this process takes them
        back decoded (``handoff``).
        """
        outbox, self.outbox = self.outbox, {}
        by_partition: dict[int, list[tuple[str, list[Touchpoint]]]] = defaultdict(list)
        for key, tps in outbox.items():
            by_partition[self.resolved_partition(key)].append((key, tps))
        for partition, groups in by_partition.items():
            for value, held in contract.pack_groups_with(groups, contract.MAX_PACKED_BYTES):
                fut = await send_direct(self.app, self.topics.resolved, value, partition=partition)
                fut.add_done_callback(functools.partial(self._handed, partition, value, held))

    def _handed(self, partition: int, value: bytes, held: Any, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.handoff.put(partition, fut.result().offset, value, held)

    async def emit(self, partition: int, effects: list[Effect]) -> None:
        """Publish one step's effects.

        ``journey.transitions`` gets the step's transitions as JSON arrays (one,
        unless it is larger than ``contract.MAX_PACKED_BYTES``) on the same
        partition number (a journey's transitions always come from one
        partition, in order); ``journey.triggers`` one message per trigger,
        keyed by journey key, stamped with the wall-clock time it fired.
        """
        if not effects:
            return
        transitions, triggers, recoveries = rules.split(effects)
        if transitions:
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for tr in transitions:
                counts[tr.from_stage or "none", tr.to_stage] += 1
            for (from_stage, to_stage), n in counts.items():
                m.TRANSITIONS.labels(from_stage=from_stage, to_stage=to_stage).inc(n)
            for value in contract.pack_arrays(orjson.dumps(tr.to_dict()) for tr in transitions):
                await send_direct(self.app, self.topics.transitions, value, partition=partition)
        if triggers:
            t = now_ms()
            clock = self.clocks[partition]
            for trigger in triggers:
                extra = dict(trigger.extra)
                if trigger.kind == ABANDONMENT:
                    passed = clock.passed_at(trigger.deadline)
                    if passed is not None:
                        extra["watermark_passed_at"] = passed
                        # A journey waiting for identity links could not fire before.
                        ready = max(passed, int(extra.get("identity_ready_at", passed)))
                        m.DEADLINE_FIRE_DELAY.observe(max(0, t - ready) / 1000)
                    m.ABANDONMENTS.labels(kind=trigger.rule).inc()
                m.TRIGGERS.labels(rule=trigger.rule).inc()
                m.EVENT_TO_TRIGGER.observe(max(0, t - trigger.event_at) / 1000)
                stamped = replace(trigger, fired_at=t, extra=extra)
                await send_direct(
                    self.app,
                    self.topics.triggers,
                    stamped.dumps(),
                    key=trigger.journey_key.encode(),
                    partition=self.triggers_partition(trigger.journey_key),
                )
        for recovery in recoveries:
            m.RECOVERIES.labels(kind=recovery.kind).inc()

    # -- timer and recovery ------------------------------------------------------------
    def active_partitions(self) -> list[int]:
        name = self.settings.topics.resolved
        return sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name
        )

    async def tick(self) -> None:
        """Send check messages for journeys due in quiet partitions this worker owns."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        t = now_ms()
        held = self._held
        while held and held[0][0] <= t:
            _, p, key = heapq.heappop(held)
            self.due[p].schedule(key, NEVER + 1)  # due at once: settled without its links
        actives = self.active_partitions()
        self.publish_stage_gauge(actives)
        for p in actives:
            wm = self.clocks[p].watermark()
            if wm != NEVER:
                m.WATERMARK_LAG.labels(partition=str(p)).set(max(0, t - wm) / 1000)
            if time.monotonic() - self._last_batch.get(p, 0.0) < BATCH_QUIET_S:
                continue  # its own batches settle what is due (see on_touchpoints)
            keys = self.due[p].pop_due(wm)
            for value in check_messages(wm, keys):
                await send_direct(self.app, self.topics.timers, value, partition=p)

    def publish_stage_gauge(self, actives: list[int]) -> None:
        """Report customers per stage for owned partitions only (sums across workers)."""
        owned = set(actives)
        for p in list(self._gauge_partitions - owned):
            for stage in self.model.all_stages:
                m.STAGE_CUSTOMERS.remove(stage, str(p))
            with contextlib.suppress(KeyError):
                m.WATERMARK_LAG.remove(str(p))
        for p in owned:
            counts = self.stage_counts[p]
            for stage in self.model.all_stages:
                m.STAGE_CUSTOMERS.labels(stage=stage, partition=str(p)).set(counts.get(stage, 0))
        self._gauge_partitions = owned

    def rebuild(self) -> None:
        """Rebuild due indexes and stage counts from the table for owned partitions."""
        actives = set(self.active_partitions())
        self.due.clear()
        self._held.clear()
        self.stage_counts.clear()
        self.cache.clear()
        producer = self.app.producer
        topic = self.settings.topics.resolved
        for raw_key, raw in self.table.items():
            p = producer.key_partition(topic, raw_key).partition
            if p not in actives:
                continue
            state = JourneyState.loads(raw)
            if state.merged_into is None and state.stage is not None:
                self.stage_counts[p][state.stage] += 1
            self.due[p].schedule(state.key, rules.next_due(state, self.model))
        log.info(
            "journey index rebuilt: partitions=%s keys=%d",
            sorted(actives),
            sum(len(d) for d in self.due.values()),
        )

    def local_states(self) -> Iterable[JourneyState]:
        """Settled states of the partitions this worker actively owns."""
        actives = set(self.active_partitions())
        producer = self.app.producer
        topic = self.settings.topics.resolved
        for raw_key, raw in self.table.items():
            if producer.key_partition(topic, raw_key).partition in actives:
                state = JourneyState.loads(raw)
                if state.merged_into is None:
                    yield state


def _encoded_groups(key: str, segments: list[list[Touchpoint]]) -> bytes:
    """A failed journey's touchpoints as a ``touchpoints.resolved`` value, for its dead letter."""
    tps = [tp for seg in segments for tp in seg]
    try:
        return contract.dumps_groups([(key, tps)])
    except Exception:
        return contract.encode_rejected([[key, [tp.to_dict() for tp in tps]]])


def _encoded_check(wm: int, key: str) -> bytes:
    """A failed journey's check as a ``journey.timers`` value, for its dead letter."""
    return orjson.dumps({"watermark": wm, "keys": [key]})


def _provenance(key: str, messages: list[Any]) -> dict[str, bytes]:
    """Headers naming the journey and every message its touchpoints came in."""
    out = {"journey_key": key.encode()}
    if len(messages) > 1:
        out["source_offsets"] = ",".join(str(m.offset) for m in messages[:100]).encode()
    return out


def register_journey(app: faust.App, settings: Settings, topics: Any) -> JourneyShell:
    """Register the journey agent, its table, timer and HTTP views on ``app``."""
    model = journey_model(settings)
    if app.conf.processing_guarantee != faust.types.enums.ProcessingGuarantee.AT_LEAST_ONCE:
        # JourneyShell.flush records changelog offsets as Faust does at least once.
        raise ValueError("the journey agent supports processing_guarantee='at_least_once' only")
    shell = JourneyShell(app, settings, topics, model)
    # Every possible stage change exists as a series from the start, at 0:
    # a series first scraped with its final value has no increase() in
    # Prometheus, and the funnel panels divide such increases (a worker that
    # took in a burst before its first scrape showed no conversion at all).
    for from_stage in ("none", *model.all_stages):
        for to_stage in model.all_stages:
            if from_stage != to_stage:
                m.TRANSITIONS.labels(from_stage=from_stage, to_stage=to_stage)
    source = app.topic(
        settings.topics.resolved,
        settings.topics.timers,
        schema=faust.Schema(key_serializer="raw", value_serializer="raw"),
    )

    @app.agent(source, name="journey")
    async def journey(stream: faust.StreamT) -> None:
        # Acks come after the batch body, so after flush() handed the writes to the producer.
        batches = stream.take_events(BATCH_MESSAGES, within=BATCH_WINDOW_S)  # type: ignore[attr-defined]
        async for events in batches:
            await shell.on_batch(events)

    def forget_cached(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may have written these journeys while we did not own them.
        shell.cache.clear()

    app.on_partitions_revoked.connect(forget_cached)
    app.on_partitions_assigned.connect(forget_cached)

    @app.timer(interval=TIMER_INTERVAL_S)
    async def due_checks() -> None:
        await shell.tick()

    @app.timer(interval=PROGRESS_INTERVAL_S)
    async def input_progress() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await shell.refresh_progress()

    @app.timer(interval=MARK_INTERVAL_S)
    async def source_marks() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await shell.send_marks()

    @shell.table.on_recover
    async def after_recovery() -> None:
        shell.rebuild()

    from stream.journey.api import register_views

    register_views(app, shell)
    return shell
