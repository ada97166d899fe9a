"""Quiet hours: a daily window in the customer's local time during which nothing is sent.

Pure: callers pass the current time; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def parse_clock(text: str) -> time:
    """``"HH:MM"`` or ``"HH:MM:SS"`` -> :class:`datetime.time` (raises ``ValueError``)."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"quiet-hours time {text!r} is not HH:MM or HH:MM:SS")
    hour, minute, second = (int(p) for p in [*parts, "0"][:3])
    return time(hour, minute, second)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """``[start, end)`` in local time; ``start > end`` spans midnight; ``start == end`` is none."""

    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        return cls(parse_clock(start), parse_clock(end))

    @property
    def empty(self) -> bool:
        return self.start == self.end

    def contains(self, local: time) -> bool:
        """Whether a local wall-clock time falls inside the window."""
        t = local.replace(tzinfo=None, microsecond=0)
        if self.empty:
            return False
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def release_at(self, now_ms: int, zone: ZoneInfo) -> int | None:
        """When a send decided at ``now_ms`` may go: None if now is outside the window,
        else the epoch ms at which the window next ends in ``zone``.

        On a DST change the end may fall in a skipped hour; it then maps to the
        first instant after the gap, never earlier than ``now_ms``.
        """
        local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
        if not self.contains(local.time()):
            return None
        day = local.date()
        if self.start > self.end and local.time().replace(tzinfo=None) >= self.start:
            day += timedelta(days=1)
        opening = datetime.combine(day, self.end, tzinfo=zone)
        release = int(opening.timestamp() * 1000)
        # A wall time in a DST gap can land before now; the window is over by then.
        return max(release, now_ms + 1)


def zone_of(name: str | None, default: str) -> ZoneInfo:
    """The customer's zone, falling back to ``default`` for a missing or unknown name."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")
