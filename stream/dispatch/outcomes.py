"""Dispatcher outcomes: one per trigger decision, published to ``journey.dispatch``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SENT = "sent"
DEDUPLICATED = "deduplicated"
SUPPRESSED_CONSENT = "suppressed_consent"
CAPPED = "capped"
DELAYED_QUIET_HOURS = "delayed_quiet_hours"
CANCELLED_PURCHASED = "cancelled_purchased"
UNREACHABLE = "unreachable"
FAILED = "failed"
ERASED = "erased"
#: Passed every check but not sent: the customer is in the rule's control group.
HELD_OUT = "held_out"

ALL = (
    SENT,
    DEDUPLICATED,
    SUPPRESSED_CONSENT,
    CAPPED,
    DELAYED_QUIET_HOURS,
    CANCELLED_PURCHASED,
    UNREACHABLE,
    FAILED,
    ERASED,
    HELD_OUT,
)
#: Outcomes after which the trigger is settled (a re-delivery is a duplicate).
FINAL = frozenset(ALL) - {DELAYED_QUIET_HOURS, FAILED, DEDUPLICATED}


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """What happened to one trigger (``at`` is wall-clock epoch ms)."""

    trigger_id: str
    rule: str
    journey_key: str
    customer_id: str | None
    outcome: str
    reason: str
    at: int
    message_id: str | None = None
    release_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trigger_id": self.trigger_id,
            "rule": self.rule,
            "journey_key": self.journey_key,
            "customer_id": self.customer_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "at": self.at,
        }
        if self.message_id is not None:
            out["message_id"] = self.message_id
        if self.release_at is not None:
            out["release_at"] = self.release_at
        return out

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())
