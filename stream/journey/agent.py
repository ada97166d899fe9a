"""Journey agent: per-customer state in a changelog-backed table; transitions and triggers out.

Consumes ``touchpoints.resolved`` (packed arrays keyed by journey key, and the
sources' event-time marks) and the co-partitioned ``journey.timers`` (check
messages the timer sends for journeys whose pending events or deadlines the
watermark has passed). Every table write happens here, with a current event,
so it goes through the changelog; the timer only reads the in-memory due
index and sends messages.

The rules are pure (``stream.journey.rules``, ``stream.journey.linking``);
this module wires them to the state store (:mod:`.store`), the event-time
marks (:mod:`.marks`) and what is published (:mod:`.emit`). One journey's step
takes effect whole or not at all: a journey that fails (a broken record, a
state over its size limit) is dead-lettered alone and its neighbours go on.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from stream import contract
from stream.app import batch_agent
from stream.contract import Touchpoint
from stream.faust_ext.fastpath import send_direct
from stream.journey import dead_letters, linking, rules
from stream.journey.clock import NEVER, DueIndex, check_messages
from stream.journey.emit import Emitter, counted_stage, observe_time_in_stage
from stream.journey.linking import Step
from stream.journey.marks import Marks
from stream.journey.model import journey_model
from stream.journey.rules import Effect
from stream.journey.stages import StageModel
from stream.journey.state import JourneyState
from stream.journey.store import JourneyStore
from stream.observability import metrics as m
from stream.settings import Settings

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.25
#: How often end offsets are fetched from the broker to tell whether input is read.
PROGRESS_INTERVAL_S = 0.5
#: A partition with a batch this recent settles its due journeys itself; the timer
#: sends check messages only for quiet ones (a check would queue behind a backlog).
BATCH_QUIET_S = 2.0
#: How often source partitions send their event-time marks to the journey partitions.
MARK_INTERVAL_S = 0.25
#: Messages the journey agent takes per batch, and how long it waits to fill one.
BATCH_MESSAGES = 256
BATCH_WINDOW_S = 0.02


def now_ms() -> int:
    return int(time.time() * 1000)


class JourneyShell:
    """The journey agent's plumbing: store, marks and emitter around the pure rules."""

    def __init__(self, app: faust.App, settings: Settings, topics: Any, model: StageModel):
        self.app = app
        self.settings = settings
        self.topics = topics
        self.model = model
        self.store = JourneyStore(app, settings)
        self.table = self.store.table
        self.marks = Marks(app, settings, topics)
        self.emitter = Emitter(app, settings, topics, self.marks.passed_at)
        self.handoff = self.emitter.handoff
        self.resolved_partition = self.emitter.resolved_partition
        self.limits = settings.limits
        #: Journeys waiting for identity links: (wall ms their wait runs out, partition, key).
        self._held: list[tuple[int, int, str]] = []
        #: When each journey partition last had a batch (monotonic seconds).
        self._last_batch: dict[int, float] = {}
        self.due: dict[int, DueIndex] = defaultdict(DueIndex)
        self.stage_counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._gauge_partitions: set[int] = set()
        self._first_applied = False
        #: Touchpoints taken into a journey (not the engine's own merge messages,
        #: nor events only passed on to the journey they merged into).
        self.applied = 0
        #: The event whose partition this batch's writes belong to.
        self.event: faust.EventT | None = None

    # -- one journey's step ------------------------------------------------
    def run_step(
        self, partition: int, key: str, make: Callable[[JourneyState | None], Step]
    ) -> list[Effect] | Exception:
        """Run one journey's step so that it takes effect whole or not at all.

        ``make`` gets the journey's state (the rules change it in place) and
        returns the pure step. Its state is encoded (it may be too large) before
        anything reaches the batch: on any exception the journey is put back
        as it was and the exception is returned for the caller to dead-letter.
        """
        try:
            state = self.store.load(key)
            before = counted_stage(state)
            step = make(state)
            visits = rules.visit_effects(step.effects)
            seq = 0 if step.state is None else step.state.visit_seq
            if visits and step.state is not None:
                step.state.visit_seq = seq + len(visits)  # numbered for de-duplication
            staged = None
            if step.erase:
                staged = self.store.erased(partition, key, self.event)
            elif (step.save or visits) and step.state is not None:
                staged = self.store.encode(partition, step.state, self.event)
        except Exception as exc:
            self.store.restore(key)
            return exc
        if staged is not None:
            self.store.stage(staged)
            self._count(partition, before, counted_stage(step.state))
        self.emitter.visits(partition, key, seq, visits)
        if step.erase:
            self.emitter.visits_erased(partition, key)
            self.due[partition].schedule(key, None)
            self.emitter.unlink(key, step.unlinks)
            m.ERASURES.inc()
            log.info("journey %r erased (%d aliases unlinked)", key, len(step.unlinks))
        if step.state is not None and step.state.merged_into is None:
            self.due[partition].schedule(key, rules.next_due(step.state, self.model))
        if step.held_until is not None:
            heapq.heappush(self._held, (step.held_until, partition, key))
        for target, tps in step.forwards:
            self.emitter.forward(target, tps)
        self.applied += step.applied
        if step.late:
            m.LATE_EVENTS.inc(step.late)
        if step.merged:
            m.IDENTITY_MERGES.inc()
        for alias in step.unanswered:
            log.warning("identity link %s -> %s unanswered; settled anyway", alias, key)
            m.IDENTITY_LINKS_UNANSWERED.inc()
        if step.state is not None:
            observe_time_in_stage(step.state, step.effects)
        return step.effects

    def _count(self, partition: int, before: str | None, after: str | None) -> None:
        if before != after:
            counts = self.stage_counts[partition]
            if before is not None:
                counts[before] -= 1
            if after is not None:
                counts[after] += 1

    # -- batches ------------------------------------------------------------
    async def on_batch(self, events: list[faust.EventT]) -> None:
        """A batch of both input topics: touchpoints per partition, then the timer's checks."""
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
                self._current(event)
                await self.on_check(event)
            self.event = None
            await self.emitter.send_forwards()
            await self.emitter.send_visits()
            await self.store.flush()
        except BaseException:
            self.store.discard()
            self.emitter.outbox.clear()
            self.emitter.unlinks.clear()
            self.emitter.visit_records.clear()
            self.event = None
            raise

    def _current(self, event: faust.EventT) -> None:
        self.event = event
        _current_event.set(weakref.ref(event))

    async def on_touchpoints(self, events: list[faust.EventT]) -> None:
        """Packed messages of one partition: touchpoints of several journeys each.

        The marks among the messages move the partition's clock first; then
        each journey takes in all of its touchpoints of these messages (in
        arrival order) and settles to the resulting watermark: one state
        change, hence one table write, per journey however many messages it is
        in; then journeys the watermark made due are settled in this batch.
        """
        partition = events[-1].message.partition
        self._last_batch[partition] = time.monotonic()
        t = now_ms()
        applied_before = self.applied
        by_key: dict[str, list[list[Touchpoint]]] = {}
        #: The messages each journey's touchpoints came in (for dead letters).
        came_in: dict[str, list[Any]] = {}
        for event in events:
            msg = event.message
            value = msg.value or b"[]"
            self.marks.seen(msg.tp, msg.offset)
            mark = contract.loads_mark(value)
            if mark is not None:
                self.marks.update(partition, mark, t)
                continue
            try:
                groups = self.handoff.take(msg.partition, msg.offset, value)
                if groups is None:
                    groups = contract.loads_groups(value)
                    if not all(isinstance(key, str) for key, _ in groups):
                        raise TypeError("a journey key is not text")
            except Exception as exc:
                await dead_letters.send(self, exc, None, msg, "message")
                continue
            for key, tps in groups:
                by_key.setdefault(key, []).append(tps)
                came_in.setdefault(key, []).append(msg)
        wm = self.marks.watermark(partition)
        self._current(events[-1])
        effects: list[Effect] = []
        for key, segments in by_key.items():
            take = functools.partial(self._take, key, segments, wm, t)
            out = self.run_step(partition, key, take)
            if isinstance(out, Exception):
                await dead_letters.send(
                    self,
                    out,
                    functools.partial(dead_letters.encoded_groups, key, segments),
                    came_in[key][0],
                    f"journey {key!r} of",
                    dead_letters.provenance(key, came_in[key]),
                )
                continue
            effects.extend(out)
        # Journeys the watermark just made due (pending events, deadlines) are
        # settled here, in the partition's own batch, rather than by a timer
        # check that would queue behind this partition's backlog.
        effects.extend(await self._settle(partition, self.due[partition].pop_due(wm), wm, None))
        await self.emitter.emit(partition, effects)
        count = self.applied - applied_before
        if count:
            m.EVENTS_APPLIED.inc(count)
            if not self._first_applied:
                self._first_applied = True
                m.FIRST_APPLIED.set(t / 1000)
            m.LAST_APPLIED.set(now_ms() / 1000)

    def _take(
        self, key: str, segments: list[list[Touchpoint]], wm: int, now: int, state: Any
    ) -> Step:
        return linking.take_segments(state, key, segments, wm, now, self.model)

    def _check(self, wm: int, now: int, state: JourneyState | None) -> Step:
        return linking.check(state, wm, now, self.model)

    async def _settle(self, partition: int, keys: list[str], wm: int, message: Any) -> list[Effect]:
        """Settle ``keys`` to ``wm``, each on its own; a failing one is dead-lettered."""
        effects: list[Effect] = []
        now = now_ms()
        for key in keys:
            out = self.run_step(partition, key, functools.partial(self._check, wm, now))
            if isinstance(out, Exception):
                msg = message if message is not None else self.event.message  # type: ignore[union-attr]
                await dead_letters.send(
                    self,
                    out,
                    functools.partial(dead_letters.encoded_check, wm, key),
                    msg,
                    f"check of journey {key!r} in",
                    {"journey_key": key.encode()},
                )
                continue
            effects.extend(out)
        return effects

    async def on_check(self, event: faust.EventT) -> None:
        """A timer's check message: settle the listed journeys to the watermark."""
        msg = event.message
        try:
            body = orjson.loads(msg.value or b"{}")
            wm = max(int(body["watermark"]), self.marks.watermark(msg.partition))
            keys = [str(key) for key in body["keys"]]
        except Exception as exc:
            await dead_letters.send(self, exc, None, msg, "check message")
            return
        await self.emitter.emit(msg.partition, await self._settle(msg.partition, keys, wm, msg))

    # -- timer and ownership ---------------------------------------------------
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
            wm = self.marks.watermark(p)
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

    def partition_of(self, raw_key: bytes) -> int:
        topic = self.settings.topics.resolved
        return int(self.app.producer.key_partition(topic, raw_key).partition)

    def rebuild(self) -> None:
        """Rebuild due indexes and stage counts from the table for owned partitions."""
        actives = set(self.active_partitions())
        self.due.clear()
        self._held.clear()
        self.stage_counts.clear()
        self.store.cache.clear()
        for p, state in self.store.scan(actives, self.partition_of):
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
        for _, state in self.store.scan(actives, self.partition_of):
            if state.merged_into is None:
                yield state

    def load(self, key: str) -> JourneyState | None:
        """A journey's latest state (the views read it)."""
        return self.store.load(key)

    # -- what ingest needs of the journey side (see ``stream.ingest.agent``) ----
    @property
    def processed(self) -> dict[Any, int]:
        return self.marks.processed

    def observe_source(self, partition: int, newest: int, now: int) -> None:
        self.marks.observe_source(partition, newest, now)

    def observe_relay(self, links_partition: int, mark: contract.Mark, now: int) -> None:
        self.marks.observe_relay(links_partition, mark, now)

    async def relay_marks(self, links_partitions: Iterable[int]) -> None:
        await self.marks.relay_marks(links_partitions)


def register_journey(app: faust.App, settings: Settings, topics: Any) -> JourneyShell:
    """Register the journey agent, its table, timers and HTTP views on ``app``."""
    model = journey_model(settings)
    if app.conf.processing_guarantee != faust.types.enums.ProcessingGuarantee.AT_LEAST_ONCE:
        # JourneyStore.flush records changelog offsets as Faust does at least once.
        raise ValueError("the journey agent supports processing_guarantee='at_least_once' only")
    shell = JourneyShell(app, settings, topics, model)
    # Every possible stage change exists as a series from the start, at 0:
    # a series first scraped with its final value has no increase() in
    # Prometheus, and the funnel panels divide such increases.
    for from_stage in ("none", *model.all_stages):
        for to_stage in model.all_stages:
            if from_stage != to_stage:
                m.TRANSITIONS.labels(from_stage=from_stage, to_stage=to_stage)
    batch_agent(
        app,
        "journey",
        (settings.topics.resolved, settings.topics.timers),
        shell.on_batch,
        size=BATCH_MESSAGES,
        within_s=BATCH_WINDOW_S,
    )

    def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Another worker may write these journeys while we do not own them.
        shell.store.cache.clear()

    def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Faust sends the set of assigned partitions.
        shell.store.cache.clear()
        shell.marks.on_assigned(args[0] if args else ())

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)

    @app.timer(interval=TIMER_INTERVAL_S)
    async def due_checks() -> None:
        await shell.tick()

    @app.timer(interval=PROGRESS_INTERVAL_S)
    async def input_progress() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await shell.marks.refresh_progress()

    @app.timer(interval=MARK_INTERVAL_S)
    async def source_marks() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await shell.marks.send_marks()

    @shell.table.on_recover
    async def after_recovery() -> None:
        shell.rebuild()

    from stream.journey.api import register_views
    from stream.journey.privacy import register_privacy_views

    register_views(app, shell)
    register_privacy_views(app, shell, settings)
    return shell
