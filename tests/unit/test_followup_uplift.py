"""Follow-up effectiveness: counts per rule and arm, merged in any order; uplift, interval,
revenue and verdict."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.proportion import confint_proportions_2indep

from stream.analytics.attribution import CONTROL, TREATED, Conversion, conversion_id
from stream.analytics.followups import FollowupCounts, followups, merged
from tests.builders import NOON

DAY = 86_400_000


def record(
    tid: str,
    arm: str,
    converted: bool,
    cents: int = 0,
    *,
    rule: str = "cart",
    at: int = NOON,
    currency: str = "EUR",
) -> Conversion:
    return Conversion(
        conversion_id=conversion_id(tid),
        trigger_id=tid,
        rule=rule,
        journey_key=f"k-{tid}",
        arm=arm,
        outcome="sent" if arm == TREATED else "held_out",
        decided_at=at,
        window_end=at + 7 * DAY,
        converted=converted,
        converted_at=at + 1 if converted else None,
        order_id="o" if converted else None,
        orders=1 if cents else 0,
        revenue_cents=cents,
        currency=currency,
    )


def population(rule: str, n_t: int, conv_t: int, n_c: int, conv_c: int, cents: int) -> list[Any]:
    out = [
        record(f"{rule}t{i}", TREATED, i < conv_t, cents if i < conv_t else 0, rule=rule)
        for i in range(n_t)
    ]
    out += [
        record(f"{rule}c{i}", CONTROL, i < conv_c, cents if i < conv_c else 0, rule=rule)
        for i in range(n_c)
    ]
    return out


def test_uplift_interval_revenue_and_verdicts() -> None:
    counts = FollowupCounts()
    counts.add_all(population("cart", 1000, 300, 200, 30, 5000))
    counts.add_all(population("browse", 500, 50, 100, 10, 2000))
    counts.add_all(population("winback", 1000, 50, 1000, 100, 1000))
    counts.add_all(population("new", 20, 10, 5, 0, 1000))
    got = {f["rule"]: f for f in followups(counts, min_per_arm=50)}
    cart = got["cart"]
    assert (cart["decided"], cart["sent"], cart["held_out"]) == (1200, 1000, 200)
    assert (cart["treated_conversions"], cart["control_conversions"]) == (300, 30)
    assert (cart["treated_rate"], cart["control_rate"]) == (0.3, 0.15)
    assert cart["uplift_abs"] == 0.15 and cart["uplift_rel"] == 1.0
    low, high = confint_proportions_2indep(300, 1000, 30, 200, method="newcomb", compare="diff")
    assert (cart["uplift_abs_ci_low"], cart["uplift_abs_ci_high"]) == (
        float(f"{low:.6g}"),
        float(f"{high:.6g}"),
    )
    assert cart["uplift_abs_ci_low"] < 0.15 < cart["uplift_abs_ci_high"]
    assert cart["revenue_attributed"] == 15000.0 and cart["currency"] == "EUR"
    # (15000 / 1000 - 1500 / 200) * 1000 sent
    assert cart["incremental_revenue"] == 7500.0
    assert cart["verdict"] == "helps"
    assert got["browse"]["verdict"] == "no_effect"
    assert got["winback"]["verdict"] == "hurts" and got["winback"]["incremental_revenue"] < 0
    assert got["new"]["verdict"] == "insufficient"
    assert got["new"]["uplift_rel"] is None  # no control conversion to compare with
    assert list(got) == ["browse", "cart", "new", "winback"]


def test_one_arm_only_has_no_interval() -> None:
    counts = FollowupCounts()
    counts.add_all(population("cart", 10, 2, 0, 0, 100))
    [f] = followups(counts, min_per_arm=1)
    assert f["control_rate"] is None and f["uplift_abs"] is None
    assert (f["uplift_abs_ci_low"], f["incremental_revenue"], f["verdict"]) == (
        None,
        None,
        "insufficient",
    )


def test_the_window_selects_by_decision_day_and_currencies_stay_apart() -> None:
    counts = FollowupCounts(DAY)
    counts.add(record("a", TREATED, True, 100, at=NOON))
    counts.add(record("b", TREATED, True, 200, at=NOON + 2 * DAY))
    counts.add(record("c", TREATED, True, 900, at=NOON + 2 * DAY, currency="USD"))
    [everything] = followups(counts)
    assert everything["sent"] == 3 and everything["currency"] == "USD"
    assert everything["revenue_attributed"] == 9.0
    assert everything["revenue_other_currencies"] == {"EUR": 3.0}
    [late] = followups(counts, since=NOON + DAY + 5)  # rounded out to the day
    assert late["sent"] == 2
    [early] = followups(counts, until=NOON + DAY)
    assert early["sent"] == 1
    assert followups(counts, since=NOON + 5 * DAY) == []


arms = st.sampled_from([TREATED, CONTROL])
records = st.lists(
    st.tuples(
        st.sampled_from(["cart", "browse"]),
        arms,
        st.booleans(),
        st.integers(0, 10**6),
        st.integers(0, 5 * DAY),
        st.sampled_from(["EUR", "USD"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(records, st.integers(1, 5), st.randoms(use_true_random=False))
def test_partition_counts_merge_to_the_same_report_in_any_order(
    rows: list[Any], parts: int, rng: random.Random
) -> None:
    convs = [
        record(f"t{i}", arm, conv, cents if conv else 0, rule=rule, at=NOON + at, currency=cur)
        for i, (rule, arm, conv, cents, at, cur) in enumerate(rows)
    ]
    whole = FollowupCounts()
    whole.add_all(convs)
    split = [FollowupCounts() for _ in range(parts)]
    for c in convs:
        split[rng.randrange(parts)].add(c)
    rng.shuffle(split)
    combined = merged(split)
    assert combined == whole
    assert followups(combined, min_per_arm=3) == followups(whole, min_per_arm=3)
    assert FollowupCounts.from_dict(whole.to_dict()) == whole


def test_each_rule_has_every_field_the_journey_map_page_reads() -> None:
    from tests.journey_map_reports import realistic_report

    page_fields = set(realistic_report()["followups"][0])
    counts = FollowupCounts()
    counts.add_all(population("cart", 10, 2, 10, 1, 500))
    [f] = followups(counts)
    assert page_fields <= set(f), page_fields - set(f)
    assert f["verdict"] in ("helps", "no_effect", "hurts", "insufficient")
