"""Signed tracking tokens: which follow-up an open, click or unsubscribe belongs to.

A token is ``base64url(json payload) "." base64url(HMAC-SHA256(secret, payload)[:16])``.
It is not encrypted (it holds ids, no personal data beyond the customer id) but
it cannot be forged or altered without the secret. Pure: no clock, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

MAX_TOKEN_CHARS = 1024
_MAC_BYTES = 16


class InvalidToken(ValueError):
    """A token that is malformed, altered or signed with another secret."""


@dataclass(frozen=True, slots=True)
class TrackingToken:
    trigger_id: str
    rule: str
    journey_key: str
    customer_id: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_MAC_BYTES]


def sign(token: TrackingToken, secret: str) -> str:
    """The URL-safe text of ``token`` signed with ``secret``."""
    payload = orjson.dumps(
        {"t": token.trigger_id, "r": token.rule, "k": token.journey_key, "c": token.customer_id}
    )
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(text: str, secret: str) -> TrackingToken:
    """The token in ``text`` if its signature matches ``secret``; else :class:`InvalidToken`."""
    if not text or len(text) > MAX_TOKEN_CHARS:
        raise InvalidToken("token is empty or too long")
    body, dot, mac = text.partition(".")
    if not dot or not body or not mac:
        raise InvalidToken("token is not payload.signature")
    try:
        payload = _unb64(body)
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not base64url") from None
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise InvalidToken("token signature does not match")
    try:
        data = orjson.loads(payload)
        customer = data.get("c")
        token = TrackingToken(
            trigger_id=str(data["t"]),
            rule=str(data["r"]),
            journey_key=str(data["k"]),
            customer_id=None if customer is None else str(customer),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise InvalidToken("token payload is malformed") from None
    return token
