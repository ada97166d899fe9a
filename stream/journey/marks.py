"""Event-time progress between the agents: source marks, their relays, input positions.

Ingest forwards the events of every ``touchpoints`` partition (a *source*) to
every journey partition, each source at its own pace. After forwarding a
batch, a source's *mark* (the newest event time it forwarded, or the wall
clock once it is read to its end and idle) goes to every journey partition
behind the events it covers, and to every ``journey.links`` partition behind
the identity links it sent there, whose ``links`` agent relays the smallest
mark it read once those links are handled. A journey partition's watermark is
the smallest of all of them, minus the allowed lateness (``MergedClock``).

This module keeps that bookkeeping for one worker: the positions it processed
per input partition (reset whenever partitions are assigned, so a partition
handed back is judged by where the consumer stands now), whether each input is
read to its end, the clocks, and the liveness rules a supervisor acts on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP

from stream import contract
from stream.defaults import ConfigError
from stream.faust_ext.fastpath import send_direct
from stream.journey.clock import NEVER, MergedClock, PartitionClock
from stream.journey.liveness import Liveness
from stream.observability import metrics as m
from stream.settings import Settings


def now_ms() -> int:
    return int(time.time() * 1000)


class Marks:
    """Source marks, their relays and input positions of one worker."""

    def __init__(self, app: faust.App, settings: Settings, topics: Any) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.partitions = partitions = settings.topics.partitions
        lateness = int(settings.journey.allowed_lateness_s * 1000)
        #: No clock runs further ahead of the wall clock than an event may.
        ahead = int(settings.journey.max_future_s * 1000)
        idle = int(settings.journey.idle_s * 1000)
        #: Journey partition -> watermark merged from every source's marks and
        #: every links partition's relay of them.
        self.clocks: dict[int, MergedClock] = defaultdict(
            lambda: MergedClock(lateness, sources=2 * partitions, max_ahead_ms=ahead)
        )
        #: ``journey.links`` partition -> the source marks read there, each after
        #: the links sent before it (relayed by :meth:`relay_marks`).
        self.relays: dict[int, MergedClock] = defaultdict(
            lambda: MergedClock(0, sources=partitions, max_ahead_ms=ahead)
        )
        #: Source (touchpoints) partition -> its event-time progress, for marks.
        self.sources: dict[int, PartitionClock] = defaultdict(
            lambda: PartitionClock(0, idle_ms=idle, max_ahead_ms=ahead)
        )
        self._marks_sent: dict[int, tuple[int, float]] = {}
        self._relays_sent: dict[int, tuple[int, float]] = {}
        #: Offsets this worker processed in this assignment, per topic-partition.
        self.processed: dict[TP, int] = {}
        #: Whether each assigned input partition is read to its end (refreshed by a timer).
        self.read_to_end: dict[TP, bool] = {}
        #: Input partitions with a consumer-lag series; kept apart from ``read_to_end``
        #: (cleared on assignment), so a partition that went elsewhere loses its series.
        self._lag_series: set[TP] = set()
        w = settings.worker
        # An idle partition's watermark trails the clock by the allowed lateness.
        lateness_s = settings.journey.allowed_lateness_s
        max_lag_s = w.max_watermark_lag_s or lateness_s + 300
        if max_lag_s <= lateness_s:
            raise ConfigError(
                f"worker.max_watermark_lag_s ({max_lag_s:g}) must be above "
                f"journey.allowed_lateness_s ({lateness_s:g})"
            )
        self.liveness = Liveness(
            stall_ms=int(w.stall_s * 1000), max_watermark_lag_ms=int(max_lag_s * 1000)
        )

    # -- ownership ------------------------------------------------------------
    def on_assigned(self, assigned: Iterable[TP]) -> None:
        """Partitions were (re)assigned: forget positions and sends of this worker's past.

        A partition handed back holds records another worker processed: its
        position is where the consumer now stands, not where this worker left it.
        """
        assigned = set(assigned)
        self.processed.clear()
        self.read_to_end = {}
        self._marks_sent.clear()
        self._relays_sent.clear()
        self.liveness.forget_inputs_except({f"{tp.topic}:{tp.partition}" for tp in assigned})

    def seen(self, tp: TP, offset: int) -> None:
        """An input record was processed (ingest, links and journey agents)."""
        self.processed[tp] = offset

    # -- progress ---------------------------------------------------------------
    async def refresh_progress(self) -> None:
        """Ask the broker for end offsets: which inputs are read to the end, their lag."""
        consumer = self.app.consumer
        names = {self.settings.topics.touchpoints, self.settings.topics.resolved}
        tps = [tp for tp in consumer.assignment() if tp.topic in names]
        if not tps:
            self.read_to_end = {}
            self._drop_lag_series_except(set())
            return
        ends = await consumer.highwaters(*tps)
        # Nothing processed yet in this assignment: where the consumer was seeked to.
        read_offsets = getattr(consumer, "_read_offset", {})
        flushed = self.app.producer.buffer.pending.qsize() == 0
        t = now_ms()
        status: dict[TP, bool] = {}
        for tp in tps:
            done = self.processed.get(tp)
            position = done + 1 if done is not None else (read_offsets.get(tp) or 0)
            # The larger of the fetcher's high watermark (exact, up to a fetch old)
            # and the broker's answer now (fresh, but some brokers, the embedded
            # one among them, under-report it right after a batched write).
            known = [v for v in (ends.get(tp), consumer.highwater(tp)) if v is not None]
            status[tp] = flushed and bool(known) and position >= max(known)
            lag = max(0, max(known) - position) if known else 0
            m.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            self.liveness.observe_input(f"{tp.topic}:{tp.partition}", position, lag, t)
        self._drop_lag_series_except(set(status))
        self.read_to_end = status

    def _drop_lag_series_except(self, kept: set[TP]) -> None:
        for gone in self._lag_series - kept:
            m.CONSUMER_LAG.remove(gone.topic, str(gone.partition))
        self._lag_series = kept

    # -- marks ------------------------------------------------------------------
    def observe_source(self, partition: int, newest: int, now: int) -> None:
        """Ingest forwarded events of source ``partition`` up to event time ``newest``."""
        self.sources[partition].observe(newest, now)

    async def send_marks(self) -> None:
        """Send each owned source partition's mark to every journey and links partition.

        A mark goes out when it moved, and at least every second, so a worker
        that just took over a journey (or links) partition learns every
        source's progress.
        """
        name = self.settings.topics.touchpoints
        t = now_ms()
        wall = time.monotonic()
        for tp, read in list(self.read_to_end.items()):
            if tp.topic != name:
                continue
            mark = self.sources[tp.partition].watermark(t, read)
            if mark == NEVER or not self._due(self._marks_sent, tp.partition, mark, wall):
                continue
            body = contract.dumps_mark(tp.partition, mark)
            for p in range(self.partitions):
                await send_direct(self.app, self.topics.resolved, body, partition=p)
                await send_direct(self.app, self.topics.links, body, partition=p)

    def observe_relay(self, links_partition: int, mark: contract.Mark, now: int) -> None:
        """A source mark read on ``journey.links``: the links before it are handled."""
        self.relays[links_partition].update(mark.partition, mark.at, now)

    async def relay_marks(self, links_partitions: Iterable[int]) -> None:
        """Send each links partition's relayed mark to every journey partition.

        The smallest source mark read there (once every source has sent one):
        the merges of every link sent before it were handed to the producer
        ahead of this. It goes out when it moved and at least every second.
        """
        wall = time.monotonic()
        for lp in links_partitions:
            mark = self.relays[lp].watermark()
            if mark == NEVER or not self._due(self._relays_sent, lp, mark, wall):
                continue
            body = contract.dumps_mark(lp, mark, contract.LINKS_MARK)
            for p in range(self.partitions):
                await send_direct(self.app, self.topics.resolved, body, partition=p)

    @staticmethod
    def _due(sent: dict[int, tuple[int, float]], key: int, mark: int, wall: float) -> bool:
        last = sent.get(key)
        if last is not None and last[0] == mark and wall - last[1] < 1.0:
            return False
        sent[key] = (mark, wall)
        return True

    def update(self, partition: int, mark: contract.Mark, now: int) -> None:
        """A mark read on journey partition ``partition`` moves its clock."""
        self.clocks[partition].update((mark.kind, mark.partition), mark.at, now)

    def watermark(self, partition: int) -> int:
        return self.clocks[partition].watermark()

    def passed_at(self, partition: int, deadline: int) -> int | None:
        """Wall ms at which ``partition``'s watermark passed ``deadline`` (if known)."""
        return self.clocks[partition].passed_at(deadline)

    def stalls(self, owned: Iterable[int], clock: Callable[[], int] = now_ms) -> list[Any]:
        """Why this worker is stuck (see :mod:`stream.journey.liveness`)."""
        watermarks = {p: wm for p in owned if (wm := self.clocks[p].watermark()) != NEVER}
        return self.liveness.stalls(clock(), watermarks)
