"""What the journey agent publishes: transitions, triggers, and touchpoints passed on.

Transitions go to ``journey.transitions`` as JSON arrays (one, unless larger
than ``contract.MAX_PACKED_BYTES``) on the journey's partition number, so a
journey's transitions always come from one partition, in order. Triggers go to
``journey.triggers``, one message each, keyed by journey key, stamped with the
wall-clock time they fired. Touchpoints passed on to other journeys (identity
answers, events of merged journeys) go out packed per partition when the batch
ends, as ingest sends its own; the journey agent of this process takes them
back decoded (:class:`~stream.faust_ext.fastpath.Handoff`). An erased journey's
identity records are erased by ``unlink`` messages on ``journey.links``.
Stage visits go to ``journey.visits``, one record per journey step, keyed by
journey key on the journey's partition (:mod:`stream.journey.visit_records`), when
the batch ends.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import faust
import orjson

from stream import contract
from stream.contract import Touchpoint
from stream.faust_ext.fastpath import Handoff, key_partitions, send_direct
from stream.ingest import identity
from stream.journey import rules
from stream.journey import visit_records as records
from stream.journey.rules import Effect
from stream.journey.state import JourneyState, Transition
from stream.journey.visits import VisitEffect
from stream.observability import metrics as m
from stream.settings import Settings
from stream.triggers.trigger import ABANDONMENT


def now_ms() -> int:
    return int(time.time() * 1000)


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


class Emitter:
    """Publishes one worker's journey effects and forwards."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        topics: Any,
        passed_at: Callable[[int, int], int | None],
    ) -> None:
        self.app = app
        self.topics = topics
        #: (partition, deadline) -> wall ms its watermark passed it, for fire delays.
        self.passed_at = passed_at
        #: Partitions of keyed sends, cached (the producer's partitioner is slow).
        self.resolved_partition = key_partitions(app, settings.topics.resolved)
        self.triggers_partition = key_partitions(app, settings.topics.triggers)
        #: Decoded values the ingest agent of this process just sent us.
        self.handoff = Handoff()
        #: Touchpoints this batch passes on to other journeys, by journey key.
        self.outbox: dict[str, list[Touchpoint]] = {}
        #: Identity records this batch erases (``unlink`` touchpoints).
        self.unlinks: list[Touchpoint] = []
        #: ``journey.links`` is co-partitioned with ``touchpoints``: an alias's
        #: identity record lives on the partition its raw id hashes to.
        self.links_partition = key_partitions(app, settings.topics.touchpoints)
        #: This batch's ``journey.visits`` records: (partition, journey key, value).
        self.visit_records: list[tuple[int, str, bytes]] = []

    def visits(self, partition: int, key: str, seq: int, effects: list[VisitEffect]) -> None:
        """Publish a step's visit effects, numbered from ``seq``, when this batch ends."""
        if effects:
            self.visit_records.append((partition, key, records.encode(key, seq, effects)))

    def visits_erased(self, partition: int, key: str) -> None:
        """End an erased journey's visit numbering (when this batch ends)."""
        self.visit_records.append((partition, key, records.encode_erase(key)))

    async def send_visits(self) -> None:
        """Send this batch's ``journey.visits`` records, in the order the steps ran."""
        out, self.visit_records = self.visit_records, []
        for partition, key, value in out:
            await send_direct(
                self.app, self.topics.visits, value, key=key.encode(), partition=partition
            )

    def forward(self, key: str, tps: list[Touchpoint]) -> None:
        """Pass touchpoints on to another journey when this batch ends."""
        if tps:
            queued = self.outbox.get(key)
            if queued is None:
                self.outbox[key] = list(tps)
            else:
                queued.extend(tps)

    def unlink(self, customer: str, aliases: list[str]) -> None:
        """Erase the identity records linking ``aliases`` to ``customer`` (sent with forwards)."""
        at = now_ms()
        for alias in aliases:
            self.unlinks.append(identity.unlink(alias, customer, at))

    async def send_forwards(self) -> None:
        """Send what this batch passed on, packed per partition, in the order passed on.

        Unlinks go to the ``journey.links`` partition owning each alias, where
        the identity table keeps it.
        """
        unlinks, self.unlinks = self.unlinks, []
        for tp in unlinks:
            await send_direct(
                self.app,
                self.topics.links,
                contract.dumps(tp),
                key=tp.routing_key.encode(),
                partition=self.links_partition(tp.routing_key),
            )
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
        """Publish one step's effects (see module doc) and count them."""
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
            for trigger in triggers:
                extra = dict(trigger.extra)
                if trigger.kind == ABANDONMENT:
                    passed = self.passed_at(partition, trigger.deadline)
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
