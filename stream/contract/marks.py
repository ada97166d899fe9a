"""Event-time marks: how far each input of the journey partitions has got.

A mark shares its topic with touchpoints (``touchpoints.resolved``,
``journey.links``) and is told apart by :func:`loads_mark`.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

#: "No event time yet": below every real mark and watermark.
NEVER = -(2**62)

#: Kinds of event-time marks (see ``stream.journey.clock.MergedClock``).
SOURCE_MARK = "source"
LINKS_MARK = "links"


class Mark(NamedTuple):
    """Event-time progress of one input of the journey partitions.

    ``kind`` ``"source"``: ``touchpoints`` partition ``partition`` forwarded
    its events up to ``at``. ``"links"``: the ``journey.links`` partition
    ``partition`` handled the identity links every source sent it up to ``at``
    (the smallest of the source marks it read after them).
    """

    kind: str
    partition: int
    at: int


def dumps_mark(partition: int, at: int, kind: str = SOURCE_MARK) -> bytes:
    """A mark (a JSON object) for ``touchpoints.resolved`` or ``journey.links``.

    Both topics otherwise carry touchpoints (JSON arrays, and on
    ``journey.links`` also single objects); :func:`loads_mark` tells them apart.
    """
    return orjson.dumps({kind: partition, "mark": at})


def loads_mark(raw: bytes) -> Mark | None:
    """The :class:`Mark` in ``raw``, or None if ``raw`` is anything else."""
    if raw[:1] != b"{":
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "mark" not in body or "event_id" in body:
        return None
    for kind in (SOURCE_MARK, LINKS_MARK):
        if kind in body:
            partition, at = body[kind], body["mark"]
            if isinstance(partition, int) and isinstance(at, int):
                return Mark(kind, partition, at)
    return None
