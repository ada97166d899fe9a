"""Follow-up effectiveness (pure): conversion records counted per rule, and the uplift.

:class:`FollowupCounts` sums :class:`~stream.analytics.attribution.Conversion`
records per (rule, bucket of decision time, arm): decided, converted, orders
credited and their revenue in minor units per currency. Integers only, so
per-partition counts merge exactly, in any order.

:func:`followups` turns them into what the marketer reads, per rule:

- treated (``sent``) and control (``held_out``) conversion rates;
- the absolute uplift (treated rate - control rate) with a 95% interval from
  statsmodels (``confint_proportions_2indep``, difference, Newcombe's hybrid
  score method: well behaved at small counts and rates near 0 or 1, where Wald
  is not), and the relative uplift (uplift / control rate);
- ``revenue_attributed``: revenue of the orders credited to sent follow-ups
  (last touch);
- ``incremental_revenue``: the revenue the sends added, (treated revenue per
  treated decision - control revenue per control decision) x treated
  decisions. Per decision rather than uplift x mean order value, so a follow-up
  that changes how much people buy, not only whether, is counted too;
- a verdict from the interval: ``helps`` (above 0), ``hurts`` (below 0),
  ``no_effect`` (contains 0), ``insufficient`` with fewer than ``min_per_arm``
  decided triggers in either arm.

Revenue figures are in the rule's main currency (the one with most revenue);
other currencies are listed apart in ``revenue_other_currencies``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from statsmodels.stats.proportion import confint_proportions_2indep

from stream.analytics.attribution import CONTROL, TREATED, Conversion

HELPS = "helps"
NO_EFFECT = "no_effect"
HURTS = "hurts"
INSUFFICIENT = "insufficient"
VERDICTS = (HELPS, NO_EFFECT, HURTS, INSUFFICIENT)
CONFIDENCE = 0.95
#: Per arm: [decided, converted, orders credited, {currency: revenue cents}].
Cell = list[Any]


def _cell() -> Cell:
    return [0, 0, 0, {}]


class FollowupCounts:
    """Conversion records counted per rule, decision-time bucket and arm (mergeable)."""

    def __init__(self, bucket_ms: int = 86_400_000) -> None:
        self.bucket_ms = bucket_ms
        #: (rule, bucket start) -> arm -> cell
        self.cells: dict[tuple[str, int], dict[str, Cell]] = {}

    def add(self, c: Conversion) -> None:
        bucket = c.decided_at - c.decided_at % self.bucket_ms
        arms = self.cells.setdefault((c.rule, bucket), {})
        cell = arms.setdefault(c.arm, _cell())
        cell[0] += 1
        cell[1] += int(c.converted)
        cell[2] += c.orders
        if c.revenue_cents:
            cell[3][c.currency] = cell[3].get(c.currency, 0) + c.revenue_cents

    def add_all(self, records: Iterable[Conversion]) -> None:
        for c in records:
            self.add(c)

    def merge(self, other: FollowupCounts) -> None:
        if other.bucket_ms != self.bucket_ms:
            raise ValueError("follow-up counts of different bucket sizes")
        for key, arms in other.cells.items():
            _add_arms(self.cells.setdefault(key, {}), arms)

    def forget_before(self, bucket: int) -> None:
        """Drop buckets older than ``bucket`` (event time ms)."""
        self.cells = {k: v for k, v in self.cells.items() if k[1] >= bucket}

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket_ms": self.bucket_ms,
            "cells": [[rule, bucket, arms] for (rule, bucket), arms in sorted(self.cells.items())],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FollowupCounts:
        out = cls(int(d["bucket_ms"]))
        for rule, bucket, arms in d["cells"]:
            out.cells[str(rule), int(bucket)] = {
                str(arm): [
                    int(c[0]),
                    int(c[1]),
                    int(c[2]),
                    {str(k): int(v) for k, v in c[3].items()},
                ]
                for arm, c in arms.items()
            }
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FollowupCounts) and self.to_dict() == other.to_dict()


def _add_arms(into: dict[str, Cell], arms: Mapping[str, Cell]) -> None:
    for arm, cell in arms.items():
        mine = into.setdefault(arm, _cell())
        for i in range(3):
            mine[i] += cell[i]
        for cur, cents in cell[3].items():
            mine[3][cur] = mine[3].get(cur, 0) + cents


def merged(parts: Iterable[FollowupCounts], bucket_ms: int = 86_400_000) -> FollowupCounts:
    out = FollowupCounts(bucket_ms)
    for part in parts:
        out.merge(part)
    return out


def _num(value: float | None) -> float | None:
    """Six significant digits (equal inputs give equal reports)."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def uplift_interval(
    treated_conv: int, treated_n: int, control_conv: int, control_n: int
) -> tuple[float, float] | None:
    """95% interval of treated rate - control rate (Newcombe), None without both arms."""
    if not treated_n or not control_n:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = confint_proportions_2indep(
            treated_conv,
            treated_n,
            control_conv,
            control_n,
            method="newcomb",
            compare="diff",
            alpha=1 - CONFIDENCE,
        )
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return float(low), float(high)


def verdict(
    interval: tuple[float, float] | None, treated_n: int, control_n: int, min_n: int
) -> str:
    if interval is None or treated_n < min_n or control_n < min_n:
        return INSUFFICIENT
    low, high = interval
    if low > 0:
        return HELPS
    if high < 0:
        return HURTS
    return NO_EFFECT


def followups(
    counts: FollowupCounts,
    since: int | None = None,
    until: int | None = None,
    min_per_arm: int = 100,
) -> list[dict[str, Any]]:
    """Per rule (sorted by name), the figures of the triggers decided in [since, until).

    ``since``/``until`` are epoch ms, rounded out to whole buckets.
    """
    b = counts.bucket_ms
    lo = None if since is None else since - since % b
    hi = None if until is None else until
    per_rule: dict[str, dict[str, Cell]] = defaultdict(dict)
    for (rule, bucket), arms in counts.cells.items():
        if (lo is not None and bucket < lo) or (hi is not None and bucket >= hi):
            continue
        _add_arms(per_rule[rule], arms)
    return [_rule_figures(rule, arms, min_per_arm) for rule, arms in sorted(per_rule.items())]


def _rule_figures(rule: str, arms: Mapping[str, Cell], min_n: int) -> dict[str, Any]:
    t, c = arms.get(TREATED, _cell()), arms.get(CONTROL, _cell())
    tn, tconv, cn, cconv = t[0], t[1], c[0], c[1]
    revenue: dict[str, int] = defaultdict(int)
    for cell in (t, c):
        for cur, cents in cell[3].items():
            revenue[cur] += cents
    currency = max(sorted(revenue), key=lambda k: revenue[k]) if revenue else ""
    t_rev, c_rev = t[3].get(currency, 0) / 100, c[3].get(currency, 0) / 100
    t_rate = tconv / tn if tn else None
    c_rate = cconv / cn if cn else None
    uplift = t_rate - c_rate if t_rate is not None and c_rate is not None else None
    interval = uplift_interval(tconv, tn, cconv, cn)
    incremental = (t_rev / tn - c_rev / cn) * tn if tn and cn else None
    others = {
        cur: (t[3].get(cur, 0)) / 100
        for cur in sorted(revenue)
        if cur != currency and t[3].get(cur)
    }
    return {
        "rule": rule,
        "decided": tn + cn,
        "sent": tn,
        "held_out": cn,
        "treated_conversions": tconv,
        "control_conversions": cconv,
        "treated_rate": _num(t_rate),
        "control_rate": _num(c_rate),
        "uplift_abs": _num(uplift),
        "uplift_abs_ci_low": _num(interval[0]) if interval else None,
        "uplift_abs_ci_high": _num(interval[1]) if interval else None,
        "uplift_rel": _num(uplift / c_rate) if uplift is not None and c_rate else None,
        "revenue_attributed": round(t_rev, 2),
        "control_revenue": round(c_rev, 2),
        "incremental_revenue": None if incremental is None else round(incremental, 2),
        "currency": currency,
        "revenue_other_currencies": others,
        "verdict": verdict(interval, tn, cn, min_n),
    }
