"""What a webhook response means and when to try again (pure).

Retried: timeouts, connection errors (refused, reset, closed), 5xx and 429.
Given up at once: every other answer outside 2xx (the request itself is
wrong; sending it again gets the same answer). The wait before attempt ``n+1``
is exponential backoff with full jitter (AWS's "Exponential Backoff and
Jitter"): uniform in ``[0, min(cap, base * 2**(n-1))]``, so receivers that
failed together are not hit again together; a ``Retry-After`` answer (seconds
or an HTTP date) replaces it, capped by ``retry_after_max_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime

DELIVERED = "delivered"
RETRY = "retry"
REJECTED = "rejected"

#: Request results, the ``result`` label of ``journey_webhook_requests_total``.
OK = "ok"
CLIENT_ERROR = "client_error"
SERVER_ERROR = "server_error"
RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
RESULTS = (OK, CLIENT_ERROR, SERVER_ERROR, RATE_LIMITED, TIMEOUT, CONNECTION_ERROR)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request's result: an HTTP status, or an error (``timeout``, ``connection_error``)."""

    status: int | None = None
    error: str | None = None
    retry_after: str | None = None
    detail: str = ""

    @property
    def result(self) -> str:
        if self.status is None:
            return self.error if self.error in (TIMEOUT, CONNECTION_ERROR) else CONNECTION_ERROR
        if 200 <= self.status < 300:
            return OK
        if self.status == 429:
            return RATE_LIMITED
        if self.status >= 500:
            return SERVER_ERROR
        return CLIENT_ERROR

    @property
    def verdict(self) -> str:
        result = self.result
        if result == OK:
            return DELIVERED
        return REJECTED if result == CLIENT_ERROR else RETRY

    @property
    def endpoint_failed(self) -> bool:
        """Whether this counts against the endpoint's health (the circuit breaker)."""
        return self.verdict == RETRY

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else self.result
        return f"{what}: {self.detail}" if self.detail else what


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    retry_after_max_s: float = 3600.0


def backoff_s(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Full-jitter wait after failed attempt ``attempt`` (1-based); ``rand`` in [0, 1)."""
    exponent = min(max(0, attempt - 1), 62)
    ceiling = min(policy.cap_s, policy.base_s * 2.0**exponent)
    return max(0.0, min(1.0, rand)) * ceiling


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def delay_s(attempt: Attempt, number: int, policy: RetryPolicy, rand: float, now: float) -> float:
    """Seconds to wait after ``attempt`` (the ``number``-th) before the next one."""
    asked = retry_after_s(attempt.retry_after, now)
    if asked is not None:
        return min(asked, policy.retry_after_max_s)
    return backoff_s(number, policy, rand)
