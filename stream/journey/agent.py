"""Journey agent: per-customer state in a changelog-backed table, stage transitions out.

Consumes ``touchpoints.resolved`` (packed arrays keyed by journey key) and the
co-partitioned ``journey.timers`` (check messages the timer sends for journeys
whose pending events or deadlines the watermark has passed). Every table write
happens here, with a current event, so it goes through the changelog; the timer
only reads the in-memory due index and sends messages.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import faust
import orjson
from faust.types import TP

from stream import contract
from stream.contract import Touchpoint
from stream.ingest.identity import MERGE
from stream.journey import rules
from stream.journey.clock import DueIndex, PartitionClock
from stream.journey.stages import StageModel, load_model
from stream.journey.state import JourneyState, Transition
from stream.observability import metrics as m
from stream.settings import CONFIG_DIR, Settings

log = logging.getLogger(__name__)

MERGE_IN = "merge_in"
TIMER_INTERVAL_S = 0.25
#: How often end offsets are fetched from the broker to tell whether input is read.
PROGRESS_INTERVAL_S = 0.5


def now_ms() -> int:
    return int(time.time() * 1000)


def counted_stage(state: JourneyState | None) -> str | None:
    """The stage a journey counts in for the stage gauge (merged journeys don't)."""
    if state is None or state.merged_into is not None:
        return None
    return state.stage


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
        self.clocks: dict[int, PartitionClock] = defaultdict(
            lambda: PartitionClock(self.lateness_ms, idle_ms=int(settings.journey.idle_s * 1000))
        )
        self.due: dict[int, DueIndex] = defaultdict(DueIndex)
        #: Offsets this worker processed, per topic-partition, for "caught up".
        self.processed: dict[TP, int] = {}
        self.stage_counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._gauge_partitions: set[int] = set()
        self._first_applied = False
        self._caught_up_since: float | None = None
        self._input_read = False

    # -- table ------------------------------------------------------------
    def load(self, key: str) -> JourneyState | None:
        raw = self.table.get(key.encode())
        return JourneyState.loads(raw) if raw is not None else None

    def save(self, partition: int, state: JourneyState, before: str | None) -> None:
        """Write ``state``; ``before`` is :func:`counted_stage` of what was loaded."""
        self.table[state.key.encode()] = state.dumps()
        after = counted_stage(state)
        if before != after:
            counts = self.stage_counts[partition]
            if before is not None:
                counts[before] -= 1
            if after is not None:
                counts[after] += 1
        self.due[partition].schedule(state.key, rules.next_due(state, self.model))

    # -- watermark ------------------------------------------------------------
    def caught_up(self) -> bool:
        """True once the worker has stayed read to the end of its input for ``idle_s``.

        The end offsets come from the broker on every timer tick (the fetcher's
        cached high watermarks can be over a second old), and the worker must
        *stay* caught up for ``idle_s``, which covers messages it is itself
        about to add (identity links and merges) that no end offset shows yet.
        """
        if not self._input_read:
            self._caught_up_since = None
            return False
        t = time.monotonic()
        if self._caught_up_since is None:
            self._caught_up_since = t
        return t - self._caught_up_since >= self.settings.journey.idle_s

    async def refresh_progress(self) -> None:
        """Ask the broker for end offsets and record whether all input is read."""
        consumer = self.app.consumer
        names = {self.settings.topics.touchpoints, self.settings.topics.resolved}
        tps = [tp for tp in consumer.assignment() if tp.topic in names]
        if not tps:
            self._input_read = False
            return
        ends = await consumer.highwaters(*tps)
        # Nothing processed yet this session: where the consumer was seeked to.
        read_offsets = getattr(consumer, "_read_offset", {})
        read = self.app.producer.buffer.pending.qsize() == 0
        for tp in tps:
            done = self.processed.get(tp)
            position = done + 1 if done is not None else (read_offsets.get(tp) or 0)
            # The larger of the fetcher's high watermark (exact, up to a fetch old)
            # and the broker's answer now (fresh, but some brokers, Tansu among
            # them, under-report it right after a batched write).
            known = [v for v in (ends.get(tp), consumer.highwater(tp)) if v is not None]
            if not known or position < max(known):
                read = False
                break
        self._input_read = read

    def watermark(self, partition: int) -> int:
        return self.clocks[partition].watermark(now_ms(), self.caught_up())

    # -- handlers ------------------------------------------------------------
    async def on_touchpoints(self, event: faust.EventT) -> None:
        """One packed message: touchpoints of several journeys of this partition."""
        msg = event.message
        groups = contract.loads_groups(msg.value or b"[]")
        clock = self.clocks[msg.partition]
        t = now_ms()
        count = 0
        for _key, tps in groups:
            count += len(tps)
            for tp in tps:
                clock.observe(tp.timestamp, t)
        self.processed[msg.tp] = msg.offset
        wm = clock.watermark(t, self.caught_up())
        transitions: list[Transition] = []
        for key, tps in groups:
            transitions.extend(await self.take_in(msg.partition, key, tps, wm))
        await self.emit(msg.partition, transitions)
        m.EVENTS_APPLIED.inc(count)
        if not self._first_applied:
            self._first_applied = True
            m.FIRST_APPLIED.set(t / 1000)
        m.LAST_APPLIED.set(now_ms() / 1000)

    async def take_in(
        self, partition: int, key: str, tps: list[Touchpoint], wm: int
    ) -> list[Transition]:
        """Apply one journey's touchpoints, settle up to ``wm`` and save it once."""
        state = self.load(key)
        before = counted_stage(state)
        if state is not None and state.merged_into is not None:
            await self.forward(state.merged_into, [tp for tp in tps if tp.type != MERGE])
            return []
        if state is None:
            state = JourneyState(key=key)
        transitions: list[Transition] = []
        for tp in tps:
            if tp.type == MERGE:
                into = str(tp.properties["into"])
                if state.events or state.pending:
                    await self.merge_out(state, into, str(tp.properties["alias"]), tp.timestamp)
                    state.merged_into = into
                    state.pending = []
                    m.IDENTITY_MERGES.inc()
                continue
            if tp.type == MERGE_IN:
                other = JourneyState.from_dict(tp.properties["state"])
                state, out = rules.merge(state, other, str(tp.properties["alias"]), self.model)
                transitions.extend(out)
                continue
            if tp.timestamp < state.settled_until:
                m.LATE_EVENTS.inc()
            state, out = rules.apply(state, tp, self.model)
            transitions.extend(out)
        if state.merged_into is None:
            state, out = rules.advance(state, wm, self.model)
            transitions.extend(out)
        self.save(partition, state, before)
        return transitions

    async def on_check(self, event: faust.EventT) -> None:
        msg = event.message
        body = orjson.loads(msg.value or b"{}")
        wm = max(int(body["watermark"]), self.watermark(msg.partition))
        transitions: list[Transition] = []
        for key in body["keys"]:
            state = self.load(key)
            if state is None or state.merged_into is not None:
                continue
            before = counted_stage(state)
            if wm <= state.settled_until:
                # A stale or duplicate check: nothing to do, but keep the key indexed.
                self.due[msg.partition].schedule(key, rules.next_due(state, self.model))
                continue
            state, out = rules.advance(state, wm, self.model)
            transitions.extend(out)
            self.save(msg.partition, state, before)
        await self.emit(msg.partition, transitions)

    async def merge_out(self, state: JourneyState, into: str, alias: str, at: int) -> None:
        body = contract.internal_touchpoint(
            MERGE_IN,
            f"merge_in:{alias}:{into}",
            at,
            anonymous_id=alias,
            properties={"alias": alias, "state": state.to_dict()},
        )
        await self.forward(into, [body])

    async def forward(self, key: str, tps: list[Touchpoint]) -> None:
        """Send touchpoints to another journey (partitioned by its key)."""
        if tps:
            await self.topics.resolved.send(
                key=key.encode(), value=contract.dumps_groups([(key, tps)])
            )

    async def emit(self, partition: int, transitions: list[Transition]) -> None:
        """Publish one step's transitions as one message on the same partition number.

        ``journey.transitions`` carries JSON arrays of transitions; a journey's
        transitions always come from one partition, in order.
        """
        if not transitions:
            return
        for tr in transitions:
            m.TRANSITIONS.labels(from_stage=tr.from_stage or "none", to_stage=tr.to_stage).inc()
        await self.topics.transitions.send(
            value=[tr.to_dict() for tr in transitions], partition=partition
        )

    # -- timer and recovery ------------------------------------------------------------
    def active_partitions(self) -> list[int]:
        name = self.settings.topics.resolved
        return sorted(
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name
        )

    async def tick(self) -> None:
        """Send check messages for journeys due in partitions this worker owns."""
        if self.app.rebalancing or self.app.in_recovery:
            self._input_read = False
            return
        caught_up = self.caught_up()
        t = now_ms()
        actives = self.active_partitions()
        self.publish_stage_gauge(actives)
        for p in actives:
            wm = self.clocks[p].watermark(t, caught_up)
            keys = self.due[p].pop_due(wm)
            if keys:
                await self.topics.timers.send(value={"watermark": wm, "keys": keys}, partition=p)

    def publish_stage_gauge(self, actives: list[int]) -> None:
        """Report customers per stage for owned partitions only (sums across workers)."""
        owned = set(actives)
        for p in list(self._gauge_partitions - owned):
            for stage in self.model.all_stages:
                m.STAGE_CUSTOMERS.remove(stage, str(p))
        for p in owned:
            counts = self.stage_counts[p]
            for stage in self.model.all_stages:
                m.STAGE_CUSTOMERS.labels(stage=stage, partition=str(p)).set(counts.get(stage, 0))
        self._gauge_partitions = owned

    def rebuild(self) -> None:
        """Rebuild due indexes and stage counts from the table for owned partitions."""
        actives = set(self.active_partitions())
        self.due.clear()
        self.stage_counts.clear()
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


def register_journey(app: faust.App, settings: Settings, topics: Any) -> JourneyShell:
    """Register the journey agent, its table, timer and HTTP views on ``app``."""
    model = load_model(settings.journey.stage_model, CONFIG_DIR / "stages")
    shell = JourneyShell(app, settings, topics, model)
    source = app.topic(
        settings.topics.resolved,
        settings.topics.timers,
        schema=faust.Schema(key_serializer="raw", value_serializer="raw"),
    )
    timers_name = settings.topics.timers

    @app.agent(source, name="journey")
    async def journey(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if event.message.topic == timers_name:
                await shell.on_check(event)
            else:
                await shell.on_touchpoints(event)

    @app.timer(interval=TIMER_INTERVAL_S)
    async def due_checks() -> None:
        await shell.tick()

    @app.timer(interval=PROGRESS_INTERVAL_S)
    async def input_progress() -> None:
        if app.rebalancing or app.in_recovery:
            return
        await shell.refresh_progress()

    @shell.table.on_recover
    async def after_recovery() -> None:
        shell.rebuild()

    from stream.journey.api import register_views

    register_views(app, shell)
    return shell
