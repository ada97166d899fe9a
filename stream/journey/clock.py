"""Event-time watermarks and the per-partition index of due journeys.

Both are plain objects fed with times by the shell; neither reads a clock.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import orjson

from stream.contract.marks import NEVER
from stream.contract.packing import pack_arrays

__all__ = ["NEVER", "DueIndex", "MergedClock", "PartitionClock"]


@dataclass
class PartitionClock:
    """Event-time progress of one source partition, as ingest sees it.

    ``watermark = max event time seen - allowed lateness``; while the partition
    is read to its end and has been idle for ``idle_ms``, it also follows the
    wall clock (``now - allowed lateness``). It never goes backwards, and never
    runs more than ``max_ahead_ms`` (when set) ahead of the wall clock: the
    contract turns such events away, and this bounds what one that got through
    could do. Ingest runs it with no lateness and sends the result to the
    journey partitions as the source's mark (see :class:`MergedClock`).
    """

    lateness_ms: int
    idle_ms: int = 2000
    max_ahead_ms: int | None = None
    max_event_time: int = NEVER
    last_activity_ms: int = 0
    _watermark: int = NEVER

    def observe(self, event_time: int, now_ms: int) -> None:
        if self.max_ahead_ms is not None:
            event_time = min(event_time, now_ms + self.max_ahead_ms)
        if event_time > self.max_event_time:
            self.max_event_time = event_time
        self.last_activity_ms = now_ms

    def watermark(self, now_ms: int, caught_up: bool) -> int:
        wm = self.max_event_time - self.lateness_ms if self.max_event_time != NEVER else NEVER
        if caught_up and now_ms - self.last_activity_ms >= self.idle_ms:
            wm = max(wm, now_ms - self.lateness_ms)
        if wm > self._watermark:
            self._watermark = wm
        return self._watermark


@dataclass
class MergedClock:
    """The smallest of several inputs' event-time marks, as a watermark.

    A journey partition's clock: ingest forwards events from every
    ``touchpoints`` partition (the sources) to every journey partition, each
    source at its own pace, and each source sends a *mark* (its event-time
    progress: the newest event time it forwarded, or the wall clock once it is
    read to the end and idle) after the events it covers, on the same journey
    partition. Identity links a source sends to other partitions (through
    ``journey.links``) are covered by the same marks relayed by each links
    partition once it handled the links before them (the relay itself runs a
    ``MergedClock`` with no lateness over the source marks it reads). The
    watermark is the smallest mark minus the allowed lateness, and nothing
    until every input (``sources`` of them) has reported: an event, or an
    orphan journey's merge, still on its way can never be overtaken. A mark
    counts at most ``max_ahead_ms`` (when set) ahead of the wall clock.
    """

    lateness_ms: int
    sources: int
    max_ahead_ms: int | None = None
    marks: dict[Hashable, int] = field(default_factory=dict)
    _watermark: int = NEVER
    #: (watermark, wall time it was reached), for fire-delay measurement.
    _reached: list[tuple[int, int]] = field(default_factory=list)

    def update(self, source: Hashable, mark: int, now_ms: int) -> int:
        """Record an input's mark; returns the (never decreasing) watermark."""
        if self.max_ahead_ms is not None:
            mark = min(mark, now_ms + self.max_ahead_ms)
        if mark > self.marks.get(source, NEVER):
            self.marks[source] = mark
            if len(self.marks) >= self.sources:
                wm = min(self.marks.values()) - self.lateness_ms
                if wm > self._watermark:
                    self._watermark = wm
                    self._reach(wm, now_ms)
        return self._watermark

    def watermark(self) -> int:
        return self._watermark

    def _reach(self, wm: int, now_ms: int) -> None:
        reached = self._reached
        reached.append((wm, now_ms))
        if len(reached) > 8192:
            del reached[:4096]

    def passed_at(self, t: int) -> int | None:
        """Wall time at which the watermark first reached ``t`` (None if not yet)."""
        reached = self._reached
        i = bisect.bisect_left(reached, t, key=lambda r: r[0])
        return reached[i][1] if i < len(reached) else None


@dataclass
class DueIndex:
    """Journey keys by the watermark at which they next need attention.

    A heap plus a map of the live due time per key: rescheduling a key leaves a
    stale heap entry behind that :meth:`pop_due` skips, so updates are O(log n)
    and finding due keys never scans every customer.
    """

    _heap: list[tuple[int, str]] = field(default_factory=list)
    _due: dict[str, int] = field(default_factory=dict)

    def schedule(self, key: str, due: int | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))

    def pop_due(self, watermark: int, limit: int = 10_000) -> list[str]:
        """Keys due at or before ``watermark`` (removed from the index)."""
        out: list[str] = []
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= watermark and len(out) < limit:
            at, key = heapq.heappop(heap)
            if due.get(key) == at:
                del due[key]
                out.append(key)
        return out

    def next_due(self) -> int | None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def __len__(self) -> int:
        return len(self._due)


def check_messages(watermark: int, keys: list[str]) -> Iterable[bytes]:
    """Timer check messages for ``keys`` (``{"watermark", "keys"}``), each of bounded size."""
    head = b'{"watermark":%d,"keys":' % watermark
    for array in pack_arrays(orjson.dumps(key) for key in keys):
        yield head + array + b"}"
