"""``journey.visits`` records: one journey step's visit effects, numbered, or an erasure.

The journey agent publishes, per journey step that produced visit effects, one
record keyed by the journey key on the journey's partition::

    {"journey": KEY, "seq": N, "visits": [EFFECT, ...]}

where effect ``i`` is the journey's visit effect number ``N + i`` (the journey
state counts them), so a step published again after a crash carries the same
numbers and the analytics agent counts each effect once. An erased journey's
numbering ends with ``{"journey": KEY, "erase": true}``.

:func:`decode` holds a record to its types and bounds (msgspec, in one pass);
anything else is a :class:`BadRecord` with the reason, for the dead letter.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from stream.journey.visits import (
    NAME_CHARS,
    VisitClosed,
    VisitEffect,
    VisitOpened,
    VisitTouched,
)

#: Largest record accepted (a step's effects are a handful; this is far above).
MAX_RECORD_BYTES = 256 * 1024
MAX_EFFECTS = 1024
MAX_TOUCHPOINTS = 256
MAX_KEY_CHARS = 512
MAX_STAGE_CHARS = 128
MAX_CAUSE_CHARS = 512
MAX_SEQ = 2**53

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]
Stage = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STAGE_CHARS)]
Name = Annotated[str, msgspec.Meta(max_length=NAME_CHARS)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]


class _Opened(msgspec.Struct, tag="opened", tag_field="kind", forbid_unknown_fields=True):
    journey_key: Key
    stage: Stage
    entered_at: Millis
    segment: Name
    first: bool


class _Touched(msgspec.Struct, tag="touched", tag_field="kind", forbid_unknown_fields=True):
    journey_key: Key
    stage: Stage
    entered_at: Millis
    segment: Name
    touchpoint: Name
    at: Millis


class _Closed(msgspec.Struct, tag="closed", tag_field="kind", forbid_unknown_fields=True):
    journey_key: Key
    stage: Stage
    entered_at: Millis
    ended_at: Millis
    outcome: Literal["advanced", "dropped", "merged"]
    to: Stage | None
    cause: Annotated[str, msgspec.Meta(max_length=MAX_CAUSE_CHARS)]
    segment: Name
    touchpoints: Annotated[
        list[Annotated[list[Name], msgspec.Meta(min_length=2, max_length=2)]],
        msgspec.Meta(max_length=MAX_TOUCHPOINTS),
    ]


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    journey: Key
    seq: Seq = 0
    visits: Annotated[list[_Opened | _Touched | _Closed], msgspec.Meta(max_length=MAX_EFFECTS)] = []
    erase: bool = False


_decoder = msgspec.json.Decoder(_Record)


class BadRecord(ValueError):
    """A ``journey.visits`` record that cannot be counted; the message is the reason."""


@dataclass(frozen=True, slots=True)
class VisitRecord:
    """A decoded record: ``visits`` numbered from ``seq``, or ``erase``."""

    journey: str
    seq: int
    visits: tuple[VisitEffect, ...]
    erase: bool = False


def _tagged(effect: VisitEffect) -> dict[str, object]:
    if isinstance(effect, VisitOpened):
        return {"kind": "opened", **effect.to_dict()}
    if isinstance(effect, VisitTouched):
        return {"kind": "touched", **effect.to_dict()}
    return {"kind": "closed", **effect.to_dict()}


def encode(journey: str, seq: int, visits: Iterable[VisitEffect]) -> bytes:
    """The record of one step's visit effects, numbered from ``seq``."""
    body = {"journey": journey, "seq": seq, "visits": [_tagged(v) for v in visits]}
    return msgspec.json.encode(body)


def encode_erase(journey: str) -> bytes:
    """The record ending an erased journey's numbering."""
    return msgspec.json.encode({"journey": journey, "erase": True})


def decode(raw: bytes | None) -> VisitRecord:
    """The record ``raw`` holds; :class:`BadRecord` naming what is wrong."""
    if not raw:
        raise BadRecord("empty journey.visits record")
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"journey.visits record of {len(raw)} bytes, over {MAX_RECORD_BYTES}")
    try:
        rec = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRecord(f"journey.visits record: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRecord(f"journey.visits record is not JSON: {exc}") from None
    if rec.erase and rec.visits:
        raise BadRecord("journey.visits record: an erasure carries no visits")
    if rec.seq + len(rec.visits) > MAX_SEQ:
        raise BadRecord("journey.visits record: seq out of range")
    return VisitRecord(rec.journey, rec.seq, tuple(_effect(v) for v in rec.visits), rec.erase)


def _effect(v: _Opened | _Touched | _Closed) -> VisitEffect:
    if isinstance(v, _Opened):
        return VisitOpened(v.journey_key, v.stage, v.entered_at, v.segment, v.first)
    if isinstance(v, _Touched):
        return VisitTouched(v.journey_key, v.stage, v.entered_at, v.segment, v.touchpoint, v.at)
    if v.ended_at < v.entered_at:
        raise BadRecord("journey.visits record: a visit ends before it begins")
    if v.outcome == "advanced" and v.to is None:
        raise BadRecord("journey.visits record: an advanced visit names the stage it moved to")
    return VisitClosed(
        journey_key=v.journey_key,
        stage=v.stage,
        entered_at=v.entered_at,
        ended_at=v.ended_at,
        outcome=v.outcome,
        to_stage=v.to,
        cause=v.cause,
        segment=v.segment,
        touchpoints=tuple((p[0], p[1]) for p in v.touchpoints),
    )


def fresh(record: VisitRecord, counted: int) -> Sequence[VisitEffect]:
    """The effects of ``record`` not yet counted, given ``counted`` effects of its journey were."""
    skip = max(0, counted - record.seq)
    return record.visits[skip:]
