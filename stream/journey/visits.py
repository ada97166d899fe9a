"""Stage visits: a customer's stay in one stage, as effects of the journey rules.

A visit begins when a journey enters a stage and ends, in event time:

- ``advanced`` on the first move to a later stage of the model (higher rank;
  leaving the lapse stage for any funnel stage counts as coming back);
- ``dropped`` when the watermark reaches ``entered_at + window`` with no such
  move (a move at exactly that time still advances), or earlier on a move to an
  earlier stage (regression, a new cycle after a purchase) or on lapsing;
- ``merged`` when an orphan journey (device, loyalty card, email) is folded
  into a customer's while one of its visits is open: that visit is neither
  advanced nor dropped, its events go on in the customer's journey.

The rules emit :class:`VisitOpened` when a visit begins, :class:`VisitTouched`
when a touchpoint is first seen in it and :class:`VisitClosed` when it ends,
like transitions and triggers. While a visit is open, the
journey keeps it as :class:`OpenVisit`: its stage, segment and the distinct
touchpoints seen in it (bounded). Pure data and functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stream.contract import Touchpoint

if TYPE_CHECKING:
    from stream.journey.stages import StageModel
    from stream.journey.state import JourneyState

#: Distinct (touchpoint, channel) pairs one visit remembers; later new ones are not kept.
VISIT_TOUCHPOINTS = 32
#: Touchpoint names and segment values are cut to this many characters.
NAME_CHARS = 64
#: The segment of a visit whose journey never carried the segment dimension.
UNKNOWN = "unknown"

ADVANCED = "advanced"
DROPPED = "dropped"
MERGED = "merged"

#: Why a visit dropped.
WINDOW = "window"
REGRESSION = "regression"
LAPSE = "lapse"


@dataclass(frozen=True)
class VisitRules:
    """How visits are kept (from the ``[analytics]`` settings).

    - ``window_ms``: a visit not advanced this long after it began is dropped;
    - ``touchpoint_property``: a property that refines a touchpoint type into
      named touchpoints (``page_type`` makes ``page_view:pricing``), "" for none;
    - ``segment``: the dimension visits are cut by, a path into the touchpoint:
      ``context.<key>[.<key>...]``, ``properties.<key>[...]``, ``channel`` or
      ``source`` ("" for none: every visit is ``unknown``);
    - ``max_touchpoints``: distinct (touchpoint, channel) pairs kept per visit.
    """

    window_ms: int
    touchpoint_property: str = ""
    segment: str = ""
    max_touchpoints: int = VISIT_TOUCHPOINTS

    def __post_init__(self) -> None:
        if self.window_ms <= 0:
            raise ValueError("the visit window must be positive")
        if self.max_touchpoints < 1:
            raise ValueError("a visit must keep at least one touchpoint")
        if self.segment:
            head = self.segment.split(".", 1)[0]
            if head not in ("context", "properties", "channel", "source") or (
                head in ("context", "properties") and "." not in self.segment
            ):
                raise ValueError(
                    f"segment {self.segment!r}: use context.<key>, properties.<key>, "
                    "channel or source"
                )


@dataclass(slots=True)
class OpenVisit:
    """The visit a journey is in now (part of :class:`JourneyState`)."""

    stage: str
    entered_at: int
    segment: str
    first: bool
    #: Distinct [touchpoint, channel] pairs, in the (event-time) order first seen.
    touchpoints: list[list[str]] = field(default_factory=list)
    #: Distinct pairs seen beyond the cap (not kept).
    overflow: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "entered_at": self.entered_at,
            "segment": self.segment,
            "first": self.first,
            "touchpoints": [list(p) for p in self.touchpoints],
            "overflow": self.overflow,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpenVisit:
        return cls(
            stage=d["stage"],
            entered_at=int(d["entered_at"]),
            segment=d.get("segment", UNKNOWN),
            first=bool(d.get("first", False)),
            touchpoints=[[str(n), str(c)] for n, c in d.get("touchpoints", ())],
            overflow=int(d.get("overflow", 0)),
        )


@dataclass(frozen=True, slots=True)
class VisitOpened:
    """A journey entered ``stage`` at ``entered_at`` (``first``: its first stage ever)."""

    journey_key: str
    stage: str
    entered_at: int
    segment: str
    first: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "journey_key": self.journey_key,
            "stage": self.stage,
            "entered_at": self.entered_at,
            "segment": self.segment,
            "first": self.first,
        }


@dataclass(frozen=True, slots=True)
class VisitClosed:
    """A visit ended at ``ended_at`` with ``outcome`` (advanced, dropped or merged).

    ``to_stage`` is the stage moved to (None when dropped by the window or
    merged); ``cause`` the event id that moved it, or ``window``, ``regression``,
    ``lapse``, ``merge:<alias>``; ``touchpoints`` the distinct (touchpoint,
    channel) pairs seen during the visit, sorted.
    """

    journey_key: str
    stage: str
    entered_at: int
    ended_at: int
    outcome: str
    to_stage: str | None
    cause: str
    segment: str
    touchpoints: tuple[tuple[str, str], ...] = ()

    @property
    def duration_ms(self) -> int:
        return self.ended_at - self.entered_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "journey_key": self.journey_key,
            "stage": self.stage,
            "entered_at": self.entered_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "to": self.to_stage,
            "cause": self.cause,
            "segment": self.segment,
            "touchpoints": [list(p) for p in self.touchpoints],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VisitClosed:
        return cls(
            journey_key=d["journey_key"],
            stage=d["stage"],
            entered_at=int(d["entered_at"]),
            ended_at=int(d["ended_at"]),
            outcome=d["outcome"],
            to_stage=d.get("to"),
            cause=d.get("cause", ""),
            segment=d.get("segment", UNKNOWN),
            touchpoints=tuple((str(n), str(c)) for n, c in d.get("touchpoints", ())),
        )


@dataclass(frozen=True, slots=True)
class VisitTouched:
    """A touchpoint seen for the first time in the visit that began at ``entered_at``.

    Emitted when it is seen (at ``at``), not when the visit ends, so a visit that
    fails (and only ends dropped a window later) shows its touchpoints at once.
    """

    journey_key: str
    stage: str
    entered_at: int
    segment: str
    touchpoint: str
    at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "journey_key": self.journey_key,
            "stage": self.stage,
            "entered_at": self.entered_at,
            "segment": self.segment,
            "touchpoint": self.touchpoint,
            "at": self.at,
        }


VisitEffect = VisitOpened | VisitTouched | VisitClosed


def touchpoint_name(tp: Touchpoint, refine_by: str) -> str:
    """The touchpoint's type, refined by a property's value when set (``page_view:pricing``)."""
    name = tp.type
    if refine_by:
        value = tp.properties.get(refine_by)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            name = f"{name}:{value}"
    return name[:NAME_CHARS]


def dimension_value(tp: Touchpoint, path: str) -> str | None:
    """The value of a segment dimension on a touchpoint, as text (None when absent)."""
    if not path:
        return None
    head, _, rest = path.partition(".")
    value: Any
    if head == "channel":
        value = tp.channel
    elif head == "source":
        value = tp.source
    else:
        value = tp.context if head == "context" else tp.properties
        for key in rest.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return None
    return str(value)[:NAME_CHARS]


def note_segment(state: JourneyState, tp: Touchpoint, rules: VisitRules) -> None:
    """Remember the journey's latest value of the segment dimension (settled order)."""
    value = dimension_value(tp, rules.segment)
    if value is not None:
        state.segment_value = value


def touch(state: JourneyState, tp: Touchpoint, at: int, rules: VisitRules) -> list[VisitEffect]:
    """Add a settled touchpoint (applied at ``at``) to the open visit (distinct pairs, bounded).

    Returns a :class:`VisitTouched` when the touchpoint is new to the visit in
    any channel.
    """
    visit = state.visit
    if visit is None:
        return []
    name = touchpoint_name(tp, rules.touchpoint_property)
    pair = [name, tp.channel]
    if pair in visit.touchpoints:
        return []
    if len(visit.touchpoints) >= rules.max_touchpoints:
        visit.overflow += 1
        return []
    new = all(n != name for n, _ in visit.touchpoints)
    visit.touchpoints.append(pair)
    if not new:
        return []
    return [VisitTouched(state.key, visit.stage, visit.entered_at, visit.segment, name, at)]


def enter(
    state: JourneyState, prev: str | None, stage: str, at: int, cause: str, model: StageModel
) -> list[VisitEffect]:
    """Close the open visit (the journey moved to ``stage`` at ``at``) and open the next."""
    out: list[VisitEffect] = []
    visit = state.visit
    if visit is not None:
        if model.rank(stage) > model.rank(visit.stage):
            out.append(_closed(state, visit, at, ADVANCED, stage, cause))
        else:
            why = LAPSE if stage == model.lapse_stage else REGRESSION
            out.append(_closed(state, visit, at, DROPPED, stage, why))
    segment = state.segment_value or UNKNOWN
    state.visit = OpenVisit(stage=stage, entered_at=at, segment=segment, first=prev is None)
    out.append(VisitOpened(state.key, stage, at, segment, prev is None))
    return out


def deadline(state: JourneyState, rules: VisitRules) -> int | None:
    """When the open visit drops if the journey does not advance (the watermark to reach)."""
    return None if state.visit is None else state.visit.entered_at + rules.window_ms


def expire(state: JourneyState, rules: VisitRules, before: int) -> list[VisitEffect]:
    """Drop the open visit if its window ended before ``before``."""
    due = deadline(state, rules)
    if due is None or due >= before:
        return []
    assert state.visit is not None
    visit, state.visit = state.visit, None
    return [_closed(state, visit, due, DROPPED, None, WINDOW)]


def merged(orphan: JourneyState, alias: str) -> list[VisitEffect]:
    """The orphan's open visit, closed because the orphan joins a customer's journey."""
    visit = orphan.visit
    if visit is None:
        return []
    at = max(visit.entered_at, orphan.settled_until)
    return [_closed(orphan, visit, at, MERGED, None, f"merge:{alias}")]


def _closed(
    state: JourneyState,
    visit: OpenVisit,
    at: int,
    outcome: str,
    to_stage: str | None,
    cause: str,
) -> VisitClosed:
    return VisitClosed(
        journey_key=state.key,
        stage=visit.stage,
        entered_at=visit.entered_at,
        ended_at=at,
        outcome=outcome,
        to_stage=to_stage,
        cause=cause,
        segment=visit.segment,
        touchpoints=tuple(sorted((n, c) for n, c in visit.touchpoints)),
    )
