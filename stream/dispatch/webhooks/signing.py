"""The webhook signature: ``Journey-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is HMAC-SHA256 with the endpoint's secret over ``"<t>." + body`` (the raw
request bytes), the scheme Stripe uses: the timestamp inside the MAC lets a
receiver refuse replays older than its tolerance. Receivers verify it as
:func:`verify` does (docs/operations.md has a standalone snippet).
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "Journey-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SCHEME = "v1"


def mac(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    signed = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Journey-Signature`` header value for ``body`` sent at ``timestamp``."""
    return f"t={int(timestamp)},{SCHEME}={mac(secret, timestamp, body)}"


def parse(header: str) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures) of a header; ``ValueError`` when malformed."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed signature element {part!r}")
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                raise ValueError("malformed timestamp")
            timestamp = int(value)
        elif key == SCHEME:
            macs.append(value)
    if timestamp is None or not macs:
        raise ValueError("the signature needs t= and v1=")
    return timestamp, macs


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` within ``tolerance_s`` of ``now``."""
    try:
        timestamp, macs = parse(header)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, m) for m in macs)
