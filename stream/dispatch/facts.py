"""What touchpoints tell the dispatcher about a customer, and how it names people it
must remember without naming them (pure).

``touchpoints.resolved`` carries purchases, unsubscribes and erase requests
(:func:`signals_of`); the suppression list and the erasure markers keep
SHA-256 digests (:func:`suppression_entry`, :func:`digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from stream import contract
from stream.contract import Touchpoint

PURCHASE_TYPES = frozenset({"purchase", "pos_purchase"})
UNSUBSCRIBE_TYPES = frozenset({"unsubscribe"})
#: ``stream.journey.linking.ERASE`` (the dispatcher does not import the journey rules).
ERASE_TYPE = "erase"


@dataclass(frozen=True, slots=True)
class JourneySignal:
    """What one message says about one journey (event times in epoch ms)."""

    unsubscribed_at: int | None = None
    purchased_at: int | None = None
    #: An erase request's time: the journey's data goes (``stream.dispatch.erase``).
    erased_at: int | None = None


def signals_of(groups: Iterable[tuple[str, list[Touchpoint]]]) -> dict[str, JourneySignal]:
    """Latest unsubscribe, purchase and erase request per journey key in a packed
    message (pure)."""
    out: dict[str, JourneySignal] = {}
    for key, tps in groups:
        seen = out.get(key, JourneySignal())
        unsub, bought, erased = seen.unsubscribed_at, seen.purchased_at, seen.erased_at
        for tp in tps:
            if tp.type in UNSUBSCRIBE_TYPES:
                unsub = max(unsub or tp.timestamp, tp.timestamp)
            elif tp.type in PURCHASE_TYPES:
                bought = max(bought or tp.timestamp, tp.timestamp)
            elif tp.type == ERASE_TYPE and tp.source == contract.INTERNAL_SOURCE:
                erased = max(erased or tp.timestamp, tp.timestamp)
        if unsub is not None or bought is not None or erased is not None:
            out[key] = JourneySignal(unsub, bought, erased)
    return out


def digest(value: str) -> str:
    """A one-way digest: what Redis keeps where it must remember someone it may not name."""
    return hashlib.sha256(value.encode()).hexdigest()


def normalized(value: str) -> str:
    """An email (lower case) or customer id as the suppression list compares it."""
    value = value.strip()
    return value.lower() if "@" in value else value


def suppression_entry(value: str) -> str:
    """How an email or customer id is stored in the suppression set: a digest, so the
    list remembers not to mail an erased customer without keeping who they are."""
    return "sha256:" + digest(normalized(value))
