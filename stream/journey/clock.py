"""Event-time watermarks and the per-partition index of due journeys.

Both are plain objects fed with times by the shell; neither reads a clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

NEVER = -(2**62)


@dataclass
class PartitionClock:
    """Watermark of one partition.

    ``watermark = max event time seen - allowed lateness``; while the worker is
    caught up and the partition has been idle for ``idle_ms``, it also follows
    the wall clock (``now - allowed lateness``). It never goes backwards.
    """

    lateness_ms: int
    idle_ms: int = 2000
    max_event_time: int = NEVER
    last_activity_ms: int = 0
    _watermark: int = NEVER

    def observe(self, event_time: int, now_ms: int) -> None:
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
