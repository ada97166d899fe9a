"""Journey-map reports for tests: the ``/journey-map`` JSON contract, with realistic numbers.

:func:`realistic_report` builds a consistent five-stage week of a shop: stage
visits that add up (advanced + dropped + open), flows that match the stages'
advanced and dropped counts, touchpoints whose lift and interval come from their
own 2x2 counts, the classic checkout incident as open alerts, and follow-up rules
with treated and control groups. :func:`partial_report` is the awkward one:
nulls, unknown values, a backward flow, a stage only the touchpoints name, and
names full of markup.

``python -m tests.journey_map_reports [SEED]`` prints one as JSON.
"""

from __future__ import annotations

import json
import math
import random
import sys
from typing import Any

STAGES = ["awareness", "consideration", "decision", "purchase", "loyalty"]
SINCE = "2026-03-02T16:00:00Z"
UNTIL = "2026-03-09T16:00:00Z"
SEGMENTS = [
    "context.platform:ios",
    "context.platform:android",
    "context.platform:web",
    "context.channel:pos",
]

# stage -> (touchpoint, channel, share of the stage's visits meeting it, effect on the advance rate)
_TOUCHPOINTS: dict[str, list[tuple[str, str | None, float, float]]] = {
    "awareness": [
        ("page_view", "web", 0.82, 0.02),
        ("email_open", "email", 0.31, 0.09),
        ("app_open", "app", 0.22, 0.04),
        ("store_visit", "pos", 0.09, 0.14),
        ("identify", None, 0.18, 0.00),
    ],
    "consideration": [
        ("product_view", "web", 0.88, 0.01),
        ("search", "web", 0.41, 0.06),
        ("email_click", "email", 0.17, 0.11),
        ("size_guide_view", "app", 0.004, 0.05),
        ("support_contact", "support", 0.05, -0.12),
        ("store_visit", "pos", 0.07, 0.19),
    ],
    "decision": [
        ("add_to_cart", "web", 0.76, 0.03),
        ("checkout_started", "web", 0.48, 0.21),
        ("payment_failed", "web", 0.11, -0.27),
        ("pricing_page", "app", 0.12, -0.01),
        ("cart_reminder_click", "email", 0.08, 0.16),
        ("click_and_collect_chosen", "pos", 0.06, 0.08),
        ("support_contact", "support", 0.04, -0.09),
    ],
    "purchase": [
        ("purchase", "web", 0.63, 0.00),
        ("pos_purchase", "pos", 0.37, 0.05),
        ("order_confirmation_open", "email", 0.71, 0.06),
        ("return_started", "support", 0.03, -0.2),
    ],
    "loyalty": [
        ("review_written", "web", 0.09, 0.0),
        ("loyalty_signup", "pos", 0.21, 0.0),
    ],
}

_FOLLOWUPS = [
    # rule, decided, share held out, control rate, uplift, average order value
    ("cart_abandoned", 3_920, 0.10, 0.091, 0.034, 96.0),
    ("browse_abandoned", 5_610, 0.10, 0.032, 0.003, 71.0),
    ("checkout_payment_retry", 240, 0.10, 0.12, 0.05, 118.0),
    ("winback_90d", 2_480, 0.20, 0.071, -0.033, 64.0),
]


def realistic_report(seed: int = 7, *, followups: bool = True) -> dict[str, Any]:
    """A consistent week of a five-stage shop journey; ``seed`` varies the numbers a little."""
    rng = random.Random(seed)
    rates = [0.46, 0.38, 0.34, 0.41, None]  # decision -> purchase fell: the checkout incident
    open_share = [0.08, 0.11, 0.14, 0.22, 0.74]
    entries = [18_400, 2_150, 940, 310, 0]  # customers starting in each stage
    stages: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    arriving = [0] * len(STAGES)
    for i, name in enumerate(STAGES):
        visits = int((entries[i] + arriving[i]) * rng.uniform(0.97, 1.03))
        finished = round(visits * (1 - open_share[i]))
        rate = rates[i]
        advanced = round(finished * rate) if rate is not None else 0
        dropped = finished - advanced
        if advanced:
            skip = round(advanced * (0.07 if i + 2 < len(STAGES) else 0))
            flows.append({"from": name, "to": STAGES[i + 1], "count": advanced - skip})
            arriving[i + 1] += advanced - skip
            if skip:
                flows.append({"from": name, "to": STAGES[i + 2], "count": skip})
                arriving[i + 2] += skip
        flows.append({"from": name, "to": "dropped", "count": dropped})
        median = [5_400.0, 21_600.0, 2_580.0, 1_728_000.0, None][i]
        stages.append(
            {
                "stage": name,
                "visits": visits,
                "advanced": advanced,
                "dropped": dropped,
                "open": visits - finished,
                "advance_rate": round(advanced / finished, 4) if rate is not None else None,
                "median_time_to_advance_s": median,
                "p90_time_to_advance_s": median * 6.5 if median else None,
            }
        )
    touchpoints = [
        _touchpoint(rng, st, *spec) for st in stages for spec in _TOUCHPOINTS[st["stage"]]
    ]
    report: dict[str, Any] = {
        "model": "five-stage",
        "customers": stages[0]["visits"] + 2_150 + 940 + 310 - 1_200,
        "window": {"since": SINCE, "until": UNTIL},
        "segment": None,
        "segments": list(SEGMENTS),
        "stages": stages,
        "flows": flows,
        "touchpoints": touchpoints,
        "alerts": _alerts(),
    }
    if followups:
        report["followups"] = [_followup(rng, *spec) for spec in _FOLLOWUPS]
    return report


def empty_report() -> dict[str, Any]:
    """What a fresh deployment answers: a model and nothing measured yet."""
    return {
        "model": "five-stage",
        "customers": 0,
        "stages": [],
        "flows": [],
        "touchpoints": [],
        "alerts": [],
    }


def partial_report() -> dict[str, Any]:
    """Nulls, unknown values, a backward flow, a stage only a touchpoint names, hostile names."""
    nasty = '<img src=x onerror="window.__pwned=1"></script><!-- & é'
    return {
        "model": "see-think-do-care",
        "customers": 42,
        "window": {"since": "2026-03-09T00:00:00Z"},
        "segment": "context.platform:ios",
        "stages": [
            {
                "stage": "see",
                "visits": 40,
                "advanced": 10,
                "dropped": 0,
                "open": 30,
                "advance_rate": 1.0,
                "median_time_to_advance_s": 75.0,
                "p90_time_to_advance_s": None,
            },
            {
                "stage": "think",
                "visits": 12,
                "advanced": 0,
                "dropped": 0,
                "open": 12,
                "advance_rate": None,
                "median_time_to_advance_s": None,
                "p90_time_to_advance_s": None,
            },
            {"stage": "care", "visits": 3},
        ],
        "flows": [
            {"from": "see", "to": "think", "count": 10},
            {"from": "care", "to": "think", "count": 2},
            {"from": "think", "to": "dropped", "count": 0},
        ],
        "touchpoints": [
            {
                "stage": "see",
                "touchpoint": nasty,
                "channel": "carrier_pigeon",
                "visits_with": 3,
                "advanced_with": 1,
                "visits_without": 37,
                "advanced_without": 9,
                "lift": None,
                "ci_low": None,
                "ci_high": None,
                "verdict": "insufficient",
            },
            {
                "stage": "do",
                "touchpoint": "trial_started",
                "channel": None,
                "visits_with": 1,
                "advanced_with": 0,
                "visits_without": 0,
                "advanced_without": 0,
                "lift": None,
                "ci_low": None,
                "ci_high": None,
                "verdict": "something_new",
            },
        ],
        "alerts": [
            {
                "kind": "stage_advance_drop",
                "stage": "think",
                "touchpoint": None,
                "opened_at": "not a time",
                "closed_at": None,
                "rate": None,
                "baseline_rate": 0.5,
                "p_value": None,
            }
        ],
        "followups": [],
    }


def _touchpoint(
    rng: random.Random,
    stage: dict[str, Any],
    touchpoint: str,
    channel: str | None,
    share: float,
    effect: float,
) -> dict[str, Any]:
    finished = stage["advanced"] + stage["dropped"]
    base = stage["advance_rate"] if stage["advance_rate"] is not None else 0.0
    n_with = max(0, round(finished * share * rng.uniform(0.95, 1.05)))
    n_without = finished - n_with
    # The stage's rate is the mix of the two groups: solve for them around the effect.
    rate_without = min(0.99, max(0.0, base - effect * share))
    rate_with = min(0.99, max(0.0, rate_without + effect))
    adv_with = round(n_with * rate_with)
    adv_without = round(n_without * rate_without)
    lift = ci_low = ci_high = None
    verdict = "insufficient"
    if stage["advance_rate"] is None:
        pass  # the last stage: nothing to advance to, so nothing to measure
    elif n_with >= 30 and n_without >= 30 and finished and adv_with and adv_without:
        # The lift is a ratio of advance rates; its interval is the log-ratio's (Katz).
        p1, p2 = adv_with / n_with, adv_without / n_without
        lift = p1 / p2
        se = math.sqrt(1 / adv_with - 1 / n_with + 1 / adv_without - 1 / n_without)
        ci_low, ci_high = lift * math.exp(-1.96 * se), lift * math.exp(1.96 * se)
        if ci_low > 1 and lift >= 1.05:
            verdict = "moment_of_truth"
        elif ci_high < 1 and lift <= 0.95:
            verdict = "pain_point"
        else:
            verdict = "neutral"
        lift, ci_low, ci_high = (round(v, 4) for v in (lift, ci_low, ci_high))
    elif n_with and n_without and adv_without:
        lift = round((adv_with / n_with) / (adv_without / n_without), 4)
    return {
        "stage": stage["stage"],
        "touchpoint": touchpoint,
        "channel": channel,
        "visits_with": n_with,
        "advanced_with": adv_with,
        "visits_without": n_without,
        "advanced_without": adv_without,
        "lift": lift,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "verdict": verdict,
    }


def _alerts() -> list[dict[str, Any]]:
    return [
        {
            "kind": "stage_advance_drop",
            "stage": "decision",
            "touchpoint": None,
            "opened_at": "2026-03-09T12:00:00Z",
            "closed_at": None,
            "rate": 0.34,
            "baseline_rate": 0.61,
            "p_value": 2.1e-9,
        },
        {
            "kind": "touchpoint_spike",
            "stage": "decision",
            "touchpoint": "payment_failed",
            "opened_at": "2026-03-09T12:10:00Z",
            "closed_at": None,
            "rate": 0.18,
            "baseline_rate": 0.03,
            "p_value": 0.0004,
        },
        {
            "kind": "touchpoint_spike",
            "stage": "consideration",
            "touchpoint": "support_contact",
            "opened_at": "2026-03-05T09:30:00Z",
            "closed_at": "2026-03-05T14:45:00Z",
            "rate": 0.09,
            "baseline_rate": 0.05,
            "p_value": 0.012,
        },
    ]


def _followup(
    rng: random.Random,
    rule: str,
    decided: int,
    held_share: float,
    control_rate: float,
    uplift: float,
    order_value: float,
) -> dict[str, Any]:
    held_out = round(decided * held_share)
    sent = decided - held_out - round(decided * 0.04)  # the rest suppressed by guards
    treated_rate = control_rate + uplift
    treated = round(sent * treated_rate * rng.uniform(0.97, 1.03))
    control = round(held_out * control_rate)
    t_rate, c_rate = treated / sent, control / held_out
    diff = t_rate - c_rate
    se = math.sqrt(t_rate * (1 - t_rate) / sent + c_rate * (1 - c_rate) / held_out)
    low, high = diff - 1.96 * se, diff + 1.96 * se
    if held_out < 100 or control < 10:
        verdict = "insufficient"
    elif low > 0:
        verdict = "helps"
    elif high < 0:
        verdict = "hurts"
    else:
        verdict = "no_effect"
    return {
        "rule": rule,
        "decided": decided,
        "sent": sent,
        "held_out": held_out,
        "treated_conversions": treated,
        "control_conversions": control,
        "treated_rate": round(t_rate, 4),
        "control_rate": round(c_rate, 4),
        "uplift_abs": round(diff, 4),
        "uplift_abs_ci_low": round(low, 4),
        "uplift_abs_ci_high": round(high, 4),
        "uplift_rel": round(diff / c_rate, 4) if c_rate else None,
        "revenue_attributed": round(treated * order_value, 2),
        "incremental_revenue": round(diff * sent * order_value, 2),
        "currency": "EUR",
        "verdict": verdict,
    }


if __name__ == "__main__":
    print(json.dumps(realistic_report(int(sys.argv[1]) if len(sys.argv) > 1 else 7), indent=2))
