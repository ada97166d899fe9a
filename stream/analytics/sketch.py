"""Time to advance as a DDSketch: quantiles within a relative error, merged exactly.

The sketch keeps counts per logarithmic bin of the ``ddsketch`` package's
mapping (a value's bin is ``ceil(log_gamma(value))``), so merging is adding
counts: exact, associative and commutative, whichever partition or worker
added a value. Values are integer milliseconds, so the exact ``sum`` stays an
integer too. Durations of a visit are at most the visit window, which bounds
the number of bins (about 500 at 2% for one week in milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

#: The relative error of a quantile (2%: a 10-minute median is within 12 s).
RELATIVE_ACCURACY = 0.02

_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


@dataclass(slots=True)
class DurationSketch:
    """Durations in milliseconds: counts per DDSketch bin, plus zeros, count, sum, min, max."""

    bins: dict[int, int] = field(default_factory=dict)
    zeros: int = 0
    count: int = 0
    total_ms: int = 0
    min_ms: int | None = None
    max_ms: int | None = None

    def add(self, ms: int) -> None:
        ms = max(0, int(ms))
        if ms == 0:
            self.zeros += 1
        else:
            key = _MAPPING.key(ms)
            self.bins[key] = self.bins.get(key, 0) + 1
        self.count += 1
        self.total_ms += ms
        self.min_ms = ms if self.min_ms is None else min(self.min_ms, ms)
        self.max_ms = ms if self.max_ms is None else max(self.max_ms, ms)

    def merge(self, other: DurationSketch) -> None:
        """Add ``other``'s values to this sketch (``other`` is not changed)."""
        for key, n in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.total_ms += other.total_ms
        for name, pick in (("min_ms", min), ("max_ms", max)):
            theirs = getattr(other, name)
            if theirs is not None:
                mine = getattr(self, name)
                setattr(self, name, theirs if mine is None else pick(mine, theirs))

    def quantile(self, q: float) -> float | None:
        """The value (ms) at quantile ``q`` within the relative accuracy; None when empty."""
        if not self.count:
            return None
        sketch = DDSketch(RELATIVE_ACCURACY)
        if self.zeros:
            sketch.add(0.0, self.zeros)
        for key in sorted(self.bins):
            # The bin's representative value maps back to the bin itself.
            sketch.add(_MAPPING.value(key), self.bins[key])
        value = sketch.get_quantile_value(q)
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "relative_accuracy": RELATIVE_ACCURACY,
            "bins": [[k, self.bins[k]] for k in sorted(self.bins)],
            "zeros": self.zeros,
            "count": self.count,
            "total_ms": self.total_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DurationSketch:
        if d.get("relative_accuracy", RELATIVE_ACCURACY) != RELATIVE_ACCURACY:
            raise ValueError(
                f"sketch made at relative accuracy {d['relative_accuracy']}, "
                f"this engine uses {RELATIVE_ACCURACY}"
            )
        return cls(
            bins={int(k): int(n) for k, n in d.get("bins", ())},
            zeros=int(d.get("zeros", 0)),
            count=int(d.get("count", 0)),
            total_ms=int(d.get("total_ms", 0)),
            min_ms=d.get("min_ms"),
            max_ms=d.get("max_ms"),
        )
