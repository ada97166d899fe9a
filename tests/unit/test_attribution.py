"""Conversion attribution in event time: windows, last touch, one record per decision,
the same records whatever the arrival order."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.analytics.attribution import (
    CONTROL,
    TREATED,
    Attribution,
    Conversion,
    Policy,
    conversion_id,
    order_cents,
    rule_windows,
)
from stream.contract.marks import NEVER
from tests.builders import NOON, purchase

MIN = 60_000
POLICY = Policy(window_ms=60 * MIN, grace_ms=10 * MIN, rule_windows={"browse": 30 * MIN})
END = 2**62


def decided(state: Attribution, tid: str, deadline: int, outcome: str, rule: str = "cart") -> None:
    state.on_trigger(tid, rule, deadline, POLICY)
    state.on_outcome(tid, rule, outcome, deadline, POLICY)


def by_trigger(records: list[Conversion]) -> dict[str, Conversion]:
    out = {c.trigger_id: c for c in records}
    assert len(out) == len(records), "two records of one trigger"
    return out


def test_a_purchase_inside_the_window_converts_it_with_the_orders_value() -> None:
    s = Attribution("c-1")
    decided(s, "t1", NOON, "sent")
    s.on_purchase(purchase("p1", NOON + 20 * MIN, value=42.5), POLICY)
    assert s.advance(NOON + 60 * MIN + 10 * MIN - 1, POLICY) == []  # not past end + grace
    [c] = s.advance(NOON + 70 * MIN, POLICY)
    assert (c.trigger_id, c.arm, c.converted, c.revenue_cents, c.currency) == (
        "t1",
        TREATED,
        True,
        4250,
        "EUR",
    )
    assert (c.converted_at, c.order_id, c.decided_at, c.window_end) == (
        NOON + 20 * MIN,
        "o-p1",
        NOON,
        NOON + 60 * MIN,
    )
    assert c.conversion_id == conversion_id("t1") and len(c.conversion_id) == 32
    assert s.advance(END, POLICY) == []  # exactly one record


def test_the_window_is_open_on_the_left_and_closed_on_the_right() -> None:
    s = Attribution("c-1")
    decided(s, "t1", NOON, "held_out")
    s.on_purchase(purchase("at-start", NOON), POLICY)
    s.on_purchase(purchase("after-end", NOON + 60 * MIN + 1), POLICY)
    [c] = s.advance(END, POLICY)
    assert (c.arm, c.converted, c.revenue_cents) == (CONTROL, False, 0)
    s2 = Attribution("c-1")
    decided(s2, "t1", NOON, "sent")
    s2.on_purchase(purchase("at-end", NOON + 60 * MIN), POLICY)
    [c2] = s2.advance(END, POLICY)
    assert c2.converted and c2.revenue_cents == 5000


def test_an_expired_window_closes_as_not_converted() -> None:
    s = Attribution("c-1")
    decided(s, "t1", NOON, "sent")
    s.on_purchase(purchase("early", NOON - MIN), POLICY)
    [c] = s.advance(NOON + 70 * MIN, POLICY)
    assert not c.converted and c.converted_at is None and c.orders == 0


def test_a_purchase_in_two_windows_credits_the_most_recent_and_converts_both() -> None:
    s = Attribution("c-1")
    decided(s, "old", NOON, "sent")
    decided(s, "new", NOON + 10 * MIN, "held_out", rule="browse")
    s.on_purchase(purchase("p1", NOON + 20 * MIN, value=80.0), POLICY)
    out = by_trigger(s.advance(END, POLICY))
    assert out["old"].converted and out["new"].converted
    assert (out["old"].revenue_cents, out["new"].revenue_cents) == (0, 8000)
    assert out["new"].window_end == NOON + 40 * MIN  # the rule's own window


def test_the_newer_window_closing_first_keeps_the_credit() -> None:
    s = Attribution("c-1")
    decided(s, "old", NOON, "sent")
    decided(s, "new", NOON + 10 * MIN, "sent", rule="browse")  # ends before "old"
    s.on_purchase(purchase("p1", NOON + 20 * MIN, value=10.0), POLICY)
    first = s.advance(NOON + 50 * MIN, POLICY)
    assert [(c.trigger_id, c.revenue_cents) for c in first] == [("new", 1000)]
    [rest] = s.advance(END, POLICY)
    assert (rest.trigger_id, rest.converted, rest.revenue_cents) == ("old", True, 0)


def test_only_decided_triggers_get_records_and_re_deliveries_add_none() -> None:
    s = Attribution("c-1")
    s.on_trigger("capped", "cart", NOON, POLICY)
    s.on_outcome("capped", "cart", "capped", NOON, POLICY)
    s.on_trigger("quiet", "cart", NOON, POLICY)
    s.on_outcome("quiet", "cart", "delayed_quiet_hours", NOON, POLICY)
    s.on_outcome("quiet", "cart", "sent", NOON + 5 * MIN, POLICY)  # released later, sent
    s.on_outcome("quiet", "cart", "sent", NOON + 5 * MIN, POLICY)  # at-least-once re-delivery
    [c] = s.advance(NOON + 70 * MIN, POLICY)
    assert c.trigger_id == "quiet"
    s.on_outcome("quiet", "cart", "sent", NOON + 70 * MIN, POLICY)
    s.on_trigger("quiet", "cart", NOON, POLICY)
    assert s.advance(NOON + 80 * MIN, POLICY) == []
    assert s.triggers == {} and s.windows == {}


def test_a_decision_after_its_purchase_and_one_arriving_before_its_trigger() -> None:
    s = Attribution("c-1")
    s.on_purchase(purchase("p1", NOON + 5 * MIN), POLICY)
    s.on_outcome("t1", "cart", "sent", NOON, POLICY)  # the trigger is still on its way
    s.on_trigger("t1", "cart", NOON, POLICY)
    [c] = s.advance(END, POLICY)
    assert c.converted and c.revenue_cents == 5000


def test_duplicate_purchases_count_once_and_erasure_forgets_orders() -> None:
    s = Attribution("c-1")
    decided(s, "t1", NOON, "sent")
    s.on_purchase(purchase("p1", NOON + MIN), POLICY)
    s.on_purchase(purchase("p1", NOON + MIN), POLICY)
    s.on_purchase(purchase("p2", NOON + 2 * MIN, value=1.0), POLICY)
    [c] = s.advance(END, POLICY)
    assert (c.orders, c.revenue_cents) == (2, 5100)
    e = Attribution("c-2")
    decided(e, "t2", NOON, "sent")
    e.on_purchase(purchase("p3", NOON + MIN, customer="c-2"), POLICY)
    e.erase()
    [c2] = e.advance(END, POLICY)
    assert (c2.journey_key, c2.converted, e.purchases) == (None, False, [])


def test_state_is_bounded_and_emptied_once_everything_is_old() -> None:
    p = Policy(window_ms=60 * MIN, grace_ms=10 * MIN, max_purchases=3, max_waiting=2)
    s = Attribution("c-1")
    for i in range(10):
        s.on_purchase(purchase(f"p{i}", NOON + i), p)
        s.on_trigger(f"t{i}", "cart", NOON, p)
        s.on_outcome(f"o{i}", "cart", "sent", NOON, p)
    assert (len(s.purchases), len(s.triggers), len(s.decisions)) == (3, 2, 2)
    s.advance(NOON, p)
    due = s.next_due(p)
    assert due is not None
    while (due := s.next_due(p)) is not None:
        s.advance(due, p)
    assert s.empty


def test_state_round_trips() -> None:
    s = Attribution("c-1")
    decided(s, "t1", NOON, "sent")
    s.on_trigger("t2", "browse", NOON, POLICY)
    s.on_outcome("t3", "cart", "held_out", NOON, POLICY)
    s.on_purchase(purchase("p1", NOON + MIN), POLICY)
    s.advance(NOON, POLICY)
    again = Attribution.from_dict(s.to_dict())
    assert again == s
    assert again.advance(END, POLICY) == s.advance(END, POLICY)


def test_order_values_and_rule_windows() -> None:
    assert order_cents({"value": 19.99}) == 1999
    assert order_cents({"total": 3}) == 300
    assert order_cents({"products": [{"price": 2.5, "quantity": 2}, {"price": 1}]}) == 600
    assert order_cents({"value": True}) == 0
    rules = [{"name": "cart", "attribution_window_s": 3600}, {"name": "browse"}]
    assert rule_windows(rules, 604800.0) == {"cart": 3_600_000}
    with pytest.raises(ValueError, match=r"'cart'.*attribution_window_s"):
        rule_windows([{"name": "cart", "attribution_window_s": -1}], 604800.0)
    with pytest.raises(ValueError, match="attribution_window_s"):
        rule_windows([{"name": "cart", "attribution_window_s": "7d"}], 604800.0)


# -- arrival order ---------------------------------------------------------------

Item = tuple[str, Any, int]  # (kind, payload, latest watermark at which it may arrive)


@st.composite
def scenarios(draw: Any) -> tuple[list[Item], int]:
    """Decided and undecided triggers and purchases of one customer, each with the last
    watermark it may arrive before: purchases within the allowed lateness (before the
    watermark passes them), decisions within the grace after their deadline."""
    items: list[Item] = []
    for i in range(draw(st.integers(0, 6))):
        deadline = NOON + draw(st.integers(0, 300)) * MIN
        rule = draw(st.sampled_from(["cart", "browse"]))
        outcome = draw(st.sampled_from(["sent", "held_out", "capped"]))
        tid = f"t{i}"
        limit = deadline + POLICY.grace_ms
        items.append(("trigger", (tid, rule, deadline), limit))
        # Decided (wall clock) at the deadline or later, up to the grace.
        at = deadline + draw(st.integers(0, 9)) * MIN
        items.append(("outcome", (tid, rule, outcome, at), limit))
        if draw(st.booleans()):
            items.append(("outcome", (tid, rule, outcome, at), limit))  # re-delivered
    for j in range(draw(st.integers(0, 6))):
        at = NOON + draw(st.integers(0, 400)) * MIN
        value = draw(st.integers(1, 500))
        items.append(("purchase", purchase(f"p{j}", at, value=float(value)), at))
    return items, draw(st.integers(0, 2**31))


def run(items: list[tuple[int, Item]]) -> list[dict[str, Any]]:
    """Feed (arrival watermark, item) in order, the watermark moving as they arrive."""
    s = Attribution("c-1")
    out: list[Conversion] = []
    for wm, (kind, payload, _) in items:
        out.extend(s.advance(wm, POLICY))
        if kind == "trigger":
            s.on_trigger(*payload, POLICY)
        elif kind == "outcome":
            s.on_outcome(*payload, POLICY)
        else:
            s.on_purchase(payload, POLICY)
    out.extend(s.advance(END, POLICY))
    return sorted((c.to_dict() for c in out), key=lambda d: d["trigger_id"])


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_any_arrival_order_within_lateness_and_grace_gives_the_same_records(
    scenario: tuple[list[Item], int], data: Any
) -> None:
    items, seed = scenario
    reference = run([(NEVER, item) for item in items])
    rng = random.Random(seed)
    arrivals = []
    for item in items:
        earliest = item[2] - 400 * MIN
        wm = data.draw(st.integers(earliest, item[2] - 1))
        arrivals.append((wm, rng.random(), item))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    got = run([(wm, item) for wm, _, item in arrivals])
    assert got == reference
    decided_ids = {p[0] for k, p, _ in items if k == "outcome" and p[2] in ("sent", "held_out")}
    assert [r["trigger_id"] for r in reference] == sorted(decided_ids)
    # Every order inside some window is credited once, to one record.
    credited = sum(r["orders"] for r in reference)
    windows = [(r["decided_at"], r["window_end"]) for r in reference]
    inside = {
        p.event_id
        for k, p, _ in items
        if k == "purchase" and any(a < p.timestamp <= b for a, b in windows)
    }
    assert credited == len(inside)


def test_an_orphans_purchases_come_with_its_merge_answer() -> None:
    from stream.analytics.attribution import purchases_in
    from stream.contract import internal_touchpoint

    bought = purchase("pos-1", NOON + MIN, channel="pos")
    answer = internal_touchpoint(
        "merge_in",
        "merge_in:loyalty:L-1:c-1",
        NOON + 2 * MIN,
        anonymous_id="loyalty:L-1",
        properties={
            "alias": "loyalty:L-1",
            "state": {"journal": [bought.to_dict()], "pending": []},
        },
    )
    assert purchases_in(answer) == [bought]
    assert purchases_in(bought) == [bought]
    ack = internal_touchpoint("merge_in", "m", NOON, anonymous_id="a", properties={"state": None})
    assert purchases_in(ack) == []
    s = Attribution("c-1")
    decided(s, "t1", NOON, "sent")
    for tp in purchases_in(answer):
        s.on_purchase(tp, POLICY)
    [c] = s.advance(END, POLICY)
    assert c.converted and c.order_id == "o-pos-1"
