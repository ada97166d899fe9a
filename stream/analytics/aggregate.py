"""A mergeable aggregate of stage visits: what the journey map is computed from.

One :class:`Aggregate` per journey partition (the stream keeps one in a table)
or per log (``journey report``). It holds only counts and sketches, keyed by
event-time bucket (a UTC day by default), segment value and stage:

- visits begun in the bucket (``opened``) and journeys begun (``started``);
- visits that *ended* in the bucket: advanced (by the stage they moved to) and
  dropped; and every visit that ended, merged ones too, by the bucket it began
  in (``closed_from``: a report subtracts them from ``opened`` for open visits);
- per (touchpoint, channel) and per touchpoint in any channel (channel ""):
  closed visits with it and how many of those advanced;
- a :class:`DurationSketch` of time to advance;
- for alerts, the same-bucket counts: visits begun in the bucket that advanced
  in it (``advanced_same``), and per touchpoint, visits begun in the bucket that
  first saw it in the bucket (``touched_same``).

``merge`` adds counts and sketches, so merging per-partition aggregates in any
order or grouping gives exactly what one pass over every visit gives.

Bounds, each kept by a rule that depends only on *which* values were seen,
never on the order they came in (so merges stay exact):

- per bucket, the ``segment_capacity`` segment values with the smallest hash
  (CRC-32, ties by value) are kept by name; the counts of the others go to
  ``other``;
- per bucket, segment and stage, the ``touchpoint_capacity`` (touchpoint,
  channel) keys with the smallest hash are kept; the visits counted under the
  others are added up in ``touchpoints_dropped``;
- buckets more than ``retention_buckets`` behind the newest one are dropped.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.analytics.sketch import DurationSketch
from stream.journey.visits import (
    ADVANCED,
    DROPPED,
    VisitClosed,
    VisitEffect,
    VisitOpened,
    VisitTouched,
)
from stream.settings import AnalyticsSettings

FORMAT = 1
#: Where the visits of segment values beyond the capacity are counted.
OTHER = "other"
#: The touchpoint key's channel for "in any channel".
ANY_CHANNEL = ""
#: An aggregate keeps this many times the segment values a report names.
SEGMENT_CAPACITY_FACTOR = 4


def _rank(text: str) -> tuple[int, str]:
    """A stable order independent of arrival: CRC-32, then the text itself."""
    return (zlib.crc32(text.encode()), text)


def _touchpoint_rank(key: tuple[str, str]) -> tuple[int, str]:
    return _rank(f"{key[0]}\x1f{key[1]}")


@dataclass(slots=True)
class StageCounts:
    """Visits of one stage, in one bucket and segment."""

    opened: int = 0
    started: int = 0
    advanced_to: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    closed_from: dict[int, int] = field(default_factory=dict)
    #: (touchpoint, channel or "") -> [closed visits with it, of which advanced].
    touchpoints: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    touchpoints_dropped: int = 0
    time_to_advance: DurationSketch = field(default_factory=DurationSketch)
    advanced_same: int = 0
    touched_same: dict[str, int] = field(default_factory=dict)

    @property
    def advanced(self) -> int:
        return sum(self.advanced_to.values())

    def merge(self, other: StageCounts, capacity: int | None = None) -> None:
        """Add ``other``'s counts; ``capacity`` bounds the touchpoint keys (None: no bound)."""
        self.opened += other.opened
        self.started += other.started
        for stage, n in other.advanced_to.items():
            self.advanced_to[stage] = self.advanced_to.get(stage, 0) + n
        self.dropped += other.dropped
        for b, n in other.closed_from.items():
            self.closed_from[b] = self.closed_from.get(b, 0) + n
        for key, (w, a) in other.touchpoints.items():
            mine = self.touchpoints.get(key)
            if mine is None:
                self.touchpoints[key] = [w, a]
            else:
                mine[0] += w
                mine[1] += a
        self.touchpoints_dropped += other.touchpoints_dropped
        self.time_to_advance.merge(other.time_to_advance)
        self.advanced_same += other.advanced_same
        for name, n in other.touched_same.items():
            self.touched_same[name] = self.touched_same.get(name, 0) + n
        if capacity is not None:
            self.cap_touchpoints(capacity)

    def cap_touchpoints(self, capacity: int) -> None:
        if len(self.touchpoints) > capacity:
            for key in sorted(self.touchpoints, key=_touchpoint_rank)[capacity:]:
                self.touchpoints_dropped += self.touchpoints.pop(key)[0]
        if len(self.touched_same) > capacity:
            for name in sorted(self.touched_same, key=_rank)[capacity:]:
                del self.touched_same[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "started": self.started,
            "advanced_to": [[s, self.advanced_to[s]] for s in sorted(self.advanced_to)],
            "dropped": self.dropped,
            "closed_from": [[b, self.closed_from[b]] for b in sorted(self.closed_from)],
            "touchpoints": [[n, c, *self.touchpoints[n, c]] for n, c in sorted(self.touchpoints)],
            "touchpoints_dropped": self.touchpoints_dropped,
            "time_to_advance": self.time_to_advance.to_dict(),
            "advanced_same": self.advanced_same,
            "touched_same": [[n, self.touched_same[n]] for n in sorted(self.touched_same)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageCounts:
        return cls(
            opened=int(d.get("opened", 0)),
            started=int(d.get("started", 0)),
            advanced_to={str(s): int(n) for s, n in d.get("advanced_to", ())},
            dropped=int(d.get("dropped", 0)),
            closed_from={int(b): int(n) for b, n in d.get("closed_from", ())},
            touchpoints={
                (str(n), str(c)): [int(w), int(a)] for n, c, w, a in d.get("touchpoints", ())
            },
            touchpoints_dropped=int(d.get("touchpoints_dropped", 0)),
            time_to_advance=DurationSketch.from_dict(d.get("time_to_advance") or {}),
            advanced_same=int(d.get("advanced_same", 0)),
            touched_same={str(n): int(k) for n, k in d.get("touched_same", ())},
        )


#: segment value -> stage -> counts, for one bucket.
Bucket = dict[str, dict[str, StageCounts]]


@dataclass
class Aggregate:
    """Visit counts by bucket, segment value and stage (see the module docstring)."""

    #: The segment dimension the values belong to (aggregates of another don't merge).
    segment: str
    bucket_s: int = 86400
    segment_capacity: int = 40
    touchpoint_capacity: int = 256
    retention_buckets: int = 90
    buckets: dict[int, Bucket] = field(default_factory=dict)

    @classmethod
    def for_settings(cls, a: AnalyticsSettings) -> Aggregate:
        return cls(
            segment=a.segment,
            bucket_s=a.bucket_s,
            segment_capacity=SEGMENT_CAPACITY_FACTOR * a.max_segment_values,
            touchpoint_capacity=a.max_touchpoints,
            retention_buckets=math.ceil(a.retention_days * 86400 / a.bucket_s),
        )

    @property
    def shape(self) -> tuple[str, int, int, int, int]:
        return (
            self.segment,
            self.bucket_s,
            self.segment_capacity,
            self.touchpoint_capacity,
            self.retention_buckets,
        )

    def bucket_of(self, ms: int) -> int:
        return ms // (self.bucket_s * 1000)

    def bucket_start(self, bucket: int) -> int:
        return bucket * self.bucket_s * 1000

    @property
    def oldest_kept(self) -> int | None:
        """The oldest bucket retention keeps (None while empty)."""
        if not self.buckets:
            return None
        return max(self.buckets) - self.retention_buckets + 1

    def bucket_for(self, effect: VisitEffect) -> int | None:
        """The bucket ``effect`` counts in (None: a touch in a later bucket, not kept)."""
        if isinstance(effect, VisitOpened):
            return self.bucket_of(effect.entered_at)
        if isinstance(effect, VisitTouched):
            b = self.bucket_of(effect.at)
            # Only same-bucket touches are kept (for alerts).
            return b if b == self.bucket_of(effect.entered_at) else None
        return self.bucket_of(effect.ended_at)

    def add(self, effect: VisitEffect) -> int | None:
        """Count one visit effect; returns the bucket it changed (None: nothing to count)."""
        b = self.bucket_for(effect)
        if b is None:
            return None
        oldest = self.oldest_kept
        if oldest is not None and b < oldest:
            return None
        newest = max(self.buckets) if self.buckets else None
        counts = self._counts(b, effect.segment, effect.stage)
        if isinstance(effect, VisitOpened):
            counts.opened += 1
            counts.started += effect.first
        elif isinstance(effect, VisitTouched):
            name = effect.touchpoint
            counts.touched_same[name] = counts.touched_same.get(name, 0) + 1
            counts.cap_touchpoints(self.touchpoint_capacity)
        else:
            self._add_closed(counts, effect)
        if newest is not None and b > newest:
            self.prune()
        return b

    def add_all(self, effects: Iterable[VisitEffect]) -> set[int]:
        """Count visit effects; returns the buckets changed."""
        touched = set()
        for effect in effects:
            b = self.add(effect)
            if b is not None:
                touched.add(b)
        return touched

    def _add_closed(self, counts: StageCounts, v: VisitClosed) -> None:
        entry = self.bucket_of(v.entered_at)
        counts.closed_from[entry] = counts.closed_from.get(entry, 0) + 1
        if v.outcome == ADVANCED:
            assert v.to_stage is not None
            counts.advanced_to[v.to_stage] = counts.advanced_to.get(v.to_stage, 0) + 1
            counts.time_to_advance.add(v.duration_ms)
            counts.advanced_same += entry == self.bucket_of(v.ended_at)
        elif v.outcome == DROPPED:
            counts.dropped += 1
        else:
            return  # merged: it only stops being open
        advanced = int(v.outcome == ADVANCED)
        keys = set(v.touchpoints) | {(name, ANY_CHANNEL) for name, _ in v.touchpoints}
        for key in keys:
            held = counts.touchpoints.get(key)
            if held is None:
                counts.touchpoints[key] = [1, advanced]
            else:
                held[0] += 1
                held[1] += advanced
        counts.cap_touchpoints(self.touchpoint_capacity)

    def _counts(self, b: int, segment: str, stage: str) -> StageCounts:
        bucket = self.buckets.get(b)
        if bucket is None:
            bucket = self.buckets[b] = {}
        stages = bucket.get(segment)
        if stages is None:
            segment = self._admit(bucket, segment)
            stages = bucket.setdefault(segment, {})
        counts = stages.get(stage)
        if counts is None:
            counts = stages[stage] = StageCounts()
        return counts

    def _admit(self, bucket: Bucket, segment: str) -> str:
        """The key a new segment value is counted under: itself, or ``other``."""
        if segment == OTHER:
            return OTHER
        named = [v for v in bucket if v != OTHER]
        if len(named) < self.segment_capacity:
            return segment
        worst = max(named, key=_rank)
        if _rank(segment) > _rank(worst):
            return OTHER
        self._fold(bucket, worst)
        return segment

    def _fold(self, bucket: Bucket, segment: str) -> None:
        """Move a segment value's counts into ``other``."""
        into = bucket.setdefault(OTHER, {})
        for stage, counts in bucket.pop(segment).items():
            mine = into.get(stage)
            if mine is None:
                into[stage] = mine = StageCounts()
            mine.merge(counts, self.touchpoint_capacity)

    def merge(self, other: Aggregate) -> None:
        """Add ``other``'s counts to this aggregate (``other`` is not changed)."""
        if other.shape != self.shape:
            raise ValueError(f"aggregates differ in shape: {self.shape} and {other.shape}")
        for b, theirs in other.buckets.items():
            bucket = self.buckets.setdefault(b, {})
            for segment, stages in theirs.items():
                mine = bucket.setdefault(segment, {})
                for stage, counts in stages.items():
                    held = mine.get(stage)
                    if held is None:
                        mine[stage] = held = StageCounts()
                    held.merge(counts, self.touchpoint_capacity)
            named = sorted((v for v in bucket if v != OTHER), key=_rank)
            for segment in named[self.segment_capacity :]:
                self._fold(bucket, segment)
        self.prune()

    def prune(self) -> None:
        oldest = self.oldest_kept
        if oldest is None:
            return
        for b in [b for b in self.buckets if b < oldest]:
            del self.buckets[b]

    def to_dict(self, buckets: Iterable[int] | None = None) -> dict[str, Any]:
        """Plain JSON-ready data; ``buckets`` limits it to those (for storing per bucket)."""
        keys = sorted(self.buckets if buckets is None else set(buckets) & set(self.buckets))
        return {
            "format": FORMAT,
            "segment": self.segment,
            "bucket_s": self.bucket_s,
            "segment_capacity": self.segment_capacity,
            "touchpoint_capacity": self.touchpoint_capacity,
            "retention_buckets": self.retention_buckets,
            "buckets": [
                {
                    "bucket": b,
                    "segments": [
                        {
                            "segment": segment,
                            "stages": [
                                {"stage": stage, **stages[stage].to_dict()}
                                for stage in sorted(stages)
                            ],
                        }
                        for segment, stages in sorted(self.buckets[b].items())
                    ],
                }
                for b in keys
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Aggregate:
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"aggregate format {d.get('format')} is not {FORMAT}")
        agg = cls(
            segment=d["segment"],
            bucket_s=int(d["bucket_s"]),
            segment_capacity=int(d["segment_capacity"]),
            touchpoint_capacity=int(d["touchpoint_capacity"]),
            retention_buckets=int(d["retention_buckets"]),
        )
        for raw in d.get("buckets", ()):
            agg.buckets[int(raw["bucket"])] = {
                s["segment"]: {c["stage"]: StageCounts.from_dict(c) for c in s["stages"]}
                for s in raw["segments"]
            }
        return agg


def merge(a: Aggregate, b: Aggregate) -> Aggregate:
    """A new aggregate holding both ``a`` and ``b`` (associative and commutative)."""
    out = Aggregate.from_dict(a.to_dict())
    out.merge(b)
    return out
