"""A circuit breaker per webhook endpoint (pure; the caller passes the time).

``closed``: requests flow; ``failures`` consecutive failed requests open it.
``open``: nothing is sent until ``cooldown_s`` has passed, then it is
``half_open``: exactly one probe request goes; its success closes the breaker,
its failure opens it for another cool-down. Deliveries held back while it is
open stay queued (they are not charged an attempt).
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED = "closed"
HALF_OPEN = "half_open"
OPEN = "open"
#: The value of the ``journey_webhook_breaker_state`` gauge per state.
GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass
class Breaker:
    failures: int
    cooldown_s: float
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def current(self, now: float) -> str:
        """The state at ``now`` (an open breaker whose cool-down passed is half-open)."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self.probing = False
        return self.state

    def capacity(self, now: float, limit: int) -> int:
        """How many requests may start now, given ``limit`` free slots."""
        state = self.current(now)
        if state == CLOSED:
            return limit
        if state == HALF_OPEN and not self.probing:
            return min(1, limit)
        return 0

    def started(self, now: float) -> None:
        """A request starts (in half-open state: the probe)."""
        if self.current(now) == HALF_OPEN:
            self.probing = True

    def succeeded(self) -> None:
        self.state = CLOSED
        self.consecutive = 0
        self.probing = False

    def failed(self, now: float) -> None:
        self.consecutive += 1
        if self.state == HALF_OPEN or self.consecutive >= self.failures:
            self.state = OPEN
            self.opened_at = now
            self.probing = False

    def reopens_in(self, now: float) -> float:
        """Seconds until an open breaker lets a probe through (0 otherwise)."""
        if self.current(now) != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - now)
