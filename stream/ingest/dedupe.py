"""Bounded memory of recently seen event ids, for dropping exact duplicates."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """An LRU set of at most ``capacity`` ids.

    ``seen(id)`` answers whether the id was already present and records it.
    This catches producer retries and re-sent POS batches cheaply; the journey
    state keeps its own per-customer record, so duplicates that outlive this
    window (a replay, a restart) are still applied once.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        ids = self._ids
        if event_id in ids:
            ids.move_to_end(event_id)
            return True
        ids[event_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
