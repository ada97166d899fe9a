"""Touchpoint impact: the 2x2 table of one (stage, touchpoint) and its verdict.

Closed visits of a stage with the touchpoint and without it, and how many of
each advanced. The lift is the ratio of the two advance rates; its 95%
interval comes from statsmodels (``confint_proportions_2indep``, ratio,
``log-adjusted``: defined with zero counts too). A touchpoint is a
``moment_of_truth`` when the interval lies above 1, a ``pain_point`` when it
lies below 1, else ``neutral``; with fewer than ``min_visits`` visits with it
(or without it) it is ``insufficient``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import confint_proportions_2indep

MOMENT_OF_TRUTH = "moment_of_truth"
PAIN_POINT = "pain_point"
NEUTRAL = "neutral"
INSUFFICIENT = "insufficient"
#: Confidence of the lift's interval.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Impact:
    visits_with: int
    advanced_with: int
    visits_without: int
    advanced_without: int
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str


def impact(
    visits_with: int,
    advanced_with: int,
    visits_without: int,
    advanced_without: int,
    min_visits: int,
) -> Impact:
    """The lift of advancing with the touchpoint over without it, its interval and verdict."""
    lift = low = high = None
    if visits_with and visits_without:
        rate_without = advanced_without / visits_without
        if rate_without:
            lift = (advanced_with / visits_with) / rate_without
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            bounds = confint_proportions_2indep(
                advanced_with,
                visits_with,
                advanced_without,
                visits_without,
                method="log-adjusted",
                compare="ratio",
                alpha=1 - CONFIDENCE,
            )
        low, high = (_finite(b) for b in bounds)
    if visits_with < min_visits or visits_without < min_visits or low is None or high is None:
        verdict = INSUFFICIENT
    elif low > 1:
        verdict = MOMENT_OF_TRUTH
    elif high < 1:
        verdict = PAIN_POINT
    else:
        verdict = NEUTRAL
    return Impact(
        visits_with,
        advanced_with,
        visits_without,
        advanced_without,
        lift,
        low,
        high,
        verdict,
    )


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
