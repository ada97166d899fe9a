"""The event-time window: how far from its receive time an event's time may be.

Held where events enter (collector, POS producer, ingest), so a clock that is
wrong by hours cannot move a partition's watermark past open deadlines.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.contract.invalid import InvalidTouchpoint


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """Event times accepted around the time an event was received (epoch ms).

    An event more than ``max_future_ms`` ahead of its receive time would move
    its partition's watermark past every open deadline; one more than
    ``max_past_ms`` behind (when set; 0 means no limit) is a unit mistake.
    """

    max_future_ms: int
    max_past_ms: int = 0

    @classmethod
    def of_seconds(cls, max_future_s: float, max_past_s: float = 0.0) -> EventTimeWindow:
        return cls(int(max_future_s * 1000), int(max_past_s * 1000))

    def check(self, timestamp: int, received_ms: int) -> None:
        """Raise :class:`InvalidTouchpoint` if ``timestamp`` is outside the window."""
        ahead = timestamp - received_ms
        if ahead > self.max_future_ms:
            raise InvalidTouchpoint(
                f"timestamp is {ahead / 1000:.0f} s ahead of the time it was received "
                f"(at most {self.max_future_ms / 1000:g} s)",
                "timestamp",
                "event_time",
            )
        if self.max_past_ms and -ahead > self.max_past_ms:
            raise InvalidTouchpoint(
                f"timestamp is {-ahead / 1000:.0f} s before the time it was received "
                f"(at most {self.max_past_ms / 1000:g} s)",
                "timestamp",
                "event_time",
            )
