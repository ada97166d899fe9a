"""Triggers and dispatcher outcomes as attribution reads them (pure), checked.

``journey.triggers`` and ``journey.dispatch`` are written by the engine, but a
record is still held to sizes and ranges before it reaches a table: a bad one
is a ``ValueError`` with the reason, for the agent to dead-letter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

#: Ids and names on ``journey.triggers`` and ``journey.dispatch`` are at most this long.
MAX_ID_CHARS = 256
#: Event and wall times are epoch ms between 2000 and 2100.
MIN_MS, MAX_MS = 946_684_800_000, 4_102_444_800_000


@dataclass(frozen=True, slots=True)
class TriggerFact:
    trigger_id: str
    rule: str
    journey_key: str
    deadline: int


@dataclass(frozen=True, slots=True)
class OutcomeFact:
    trigger_id: str
    rule: str
    journey_key: str
    outcome: str
    at: int


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise ValueError(f"{name} must be text of 1 to {MAX_ID_CHARS} characters")
    return value


def _ms(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_MS <= value <= MAX_MS:
        raise ValueError(f"{name} must be epoch ms between 2000 and 2100")
    return value


def _object(raw: bytes, max_bytes: int) -> Mapping[str, Any]:
    if len(raw) > max_bytes:
        raise ValueError(f"{len(raw)} bytes, over the {max_bytes}-byte limit")
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def read_trigger(raw: bytes, max_bytes: int = 1 << 20) -> TriggerFact:
    """What attribution needs of a ``journey.triggers`` record; ``ValueError`` says why not."""
    body = _object(raw, max_bytes)
    return TriggerFact(
        _text(body, "trigger_id"),
        _text(body, "rule"),
        _text(body, "journey_key"),
        _ms(body, "deadline"),
    )


def read_outcome(raw: bytes, max_bytes: int = 1 << 20) -> OutcomeFact:
    """A ``journey.dispatch`` record (``stream.dispatch.outcomes.OutcomeRecord``), checked."""
    body = _object(raw, max_bytes)
    return OutcomeFact(
        _text(body, "trigger_id"),
        _text(body, "rule"),
        _text(body, "journey_key"),
        _text(body, "outcome"),
        _ms(body, "at"),
    )


def outcome_line(raw: bytes) -> OutcomeFact | None:
    """A log line holding a dispatcher outcome (``journey report``), else None.

    An object with ``trigger_id`` and ``outcome`` and no ``event_id``: a
    touchpoint never has that shape, so everything else is left to the
    touchpoint contract (which rejects a broken outcome with its reason).
    """
    if b'"outcome"' not in raw or b'"trigger_id"' not in raw or b'"event_id"' in raw:
        return None
    try:
        return read_outcome(raw)
    except (ValueError, orjson.JSONDecodeError):
        return None
