"""Drop-off alerts: a recent event-time window against the trailing baseline.

A metric is a proportion of the visits of a stage *begun* in a bucket, counted
within that same bucket, so it is known as soon as the bucket is complete and
never waits for visits to drop a window later:

- a stage's advance rate: the share that advanced to a later stage before the
  bucket ended;
- a touchpoint's share: the share that saw the touchpoint before it ended.

It is evaluated at bucket boundaries: at boundary ``E`` the recent window is
the ``window`` buckets before ``E`` and the baseline the ``baseline`` buckets
before those. It is *significant* when both windows hold at least
``min_count`` visits, the recent one at least ``min_count`` of the kind the
alert is about (visits that did not advance, visits with the touchpoint: a
handful is not an incident), and statsmodels' one-sided two-proportion score test
(``test_proportions_2indep``) gives a p-value below ``level`` in the alert's
direction (a lower advance rate, a higher touchpoint share).

An alert opens at the first boundary where its metric is significant and
closes at the first later boundary where it is not; it carries the rates and
p-value of its last significant evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import test_proportions_2indep

#: Directions, as statsmodels names them (recent compared with baseline).
LOWER = "smaller"
HIGHER = "larger"


@dataclass(frozen=True)
class Episode:
    """One alert: open from boundary ``opened`` to ``closed`` (None: still open)."""

    opened: int
    closed: int | None
    rate: float
    baseline_rate: float
    p_value: float


def p_value(hits: int, total: int, base_hits: int, base_total: int, direction: str) -> float:
    """One-sided p-value that the recent proportion is ``direction`` than the baseline's."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = test_proportions_2indep(
            hits,
            total,
            base_hits,
            base_total,
            method="score",
            compare="diff",
            alternative=direction,
        )
    p = float(result.pvalue)
    # Equal proportions at 0 or 1 leave the statistic undefined: no evidence of a change.
    return p if math.isfinite(p) else 1.0


def scan(
    hits: Mapping[int, int],
    totals: Mapping[int, int],
    boundaries: Sequence[int],
    *,
    window: int,
    baseline: int,
    level: float,
    min_count: int,
    direction: str,
) -> list[Episode]:
    """Alert episodes of one metric, evaluated at each boundary (bucket numbers, ascending)."""
    if not boundaries:
        return []
    lo = boundaries[0] - window - baseline
    hi = boundaries[-1]
    cum_hits, cum_totals = [0], [0]
    for b in range(lo, hi):
        cum_hits.append(cum_hits[-1] + hits.get(b, 0))
        cum_totals.append(cum_totals[-1] + totals.get(b, 0))

    def between(cum: list[int], start: int, end: int) -> int:
        return cum[end - lo] - cum[start - lo]

    episodes: list[Episode] = []
    current: dict[str, float | int] | None = None
    for e in boundaries:
        n = between(cum_totals, e - window, e)
        n0 = between(cum_totals, e - window - baseline, e - window)
        significant = False
        if n >= min_count and n0 >= min_count:
            k = between(cum_hits, e - window, e)
            k0 = between(cum_hits, e - window - baseline, e - window)
            rate, base = k / n, k0 / n0
            moved = rate < base if direction == LOWER else rate > base
            enough = (n - k if direction == LOWER else k) >= min_count
            if moved and enough:
                p = p_value(k, n, k0, n0, direction)
                if p < level:
                    significant = True
                    if current is None:
                        current = {"opened": e}
                    current.update(rate=rate, base=base, p=p)
        if not significant and current is not None:
            episodes.append(_episode(current, e))
            current = None
    if current is not None:
        episodes.append(_episode(current, None))
    return episodes


def _episode(state: dict[str, float | int], closed: int | None) -> Episode:
    return Episode(
        opened=int(state["opened"]),
        closed=closed,
        rate=float(state["rate"]),
        baseline_rate=float(state["base"]),
        p_value=float(state["p"]),
    )
