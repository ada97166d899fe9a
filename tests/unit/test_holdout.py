"""Control groups: deterministic, stable, salted membership per (customer, rule)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.settings import load_settings
from stream.triggers.holdout import Holdouts, check_fraction, holdout_point, is_held_out
from stream.triggers.playbook import parse_playbook, rule_holdouts

STAGES = ("awareness", "decision", "purchase")


def test_membership_is_a_pure_function_of_customer_rule_and_salt() -> None:
    customers = [f"c-{i}" for i in range(2000)]
    first = [is_held_out(c, "cart", 0.3, "s1") for c in customers]
    assert first == [is_held_out(c, "cart", 0.3, "s1") for c in customers]
    # Another rule or another salt draws another split; no fraction, nobody held out.
    assert first != [is_held_out(c, "browse", 0.3, "s1") for c in customers]
    assert first != [is_held_out(c, "cart", 0.3, "s2") for c in customers]
    assert not any(is_held_out(c, "cart", 0.0, "s1") for c in customers)


def test_a_larger_fraction_keeps_everyone_already_held_out() -> None:
    customers = [f"c-{i}" for i in range(2000)]
    small = {c for c in customers if is_held_out(c, "cart", 0.1, "s")}
    large = {c for c in customers if is_held_out(c, "cart", 0.5, "s")}
    assert small and small < large


def test_a_customers_point_is_the_same_in_every_release() -> None:
    # A changed hash would silently re-split running control groups: pinned values.
    assert holdout_point("ann", "cart", "journey-holdout") == 0.9301129964113448
    assert holdout_point("c-1", "welcome", "x") == 0.7046375636050755


@settings(max_examples=40, deadline=None)
@given(
    fraction=st.floats(min_value=0.02, max_value=0.98),
    salt=st.text(max_size=20),
    rule=st.text(min_size=1, max_size=20),
    prefix=st.text(max_size=8),
)
def test_the_held_out_share_is_close_to_the_fraction(
    fraction: float, salt: str, rule: str, prefix: str
) -> None:
    n = 5000
    held = sum(is_held_out(f"{prefix}{i}", rule, fraction, salt) for i in range(n))
    # Five standard deviations of a binomial share at most (sd <= 0.0071 for n = 5000).
    assert abs(held / n - fraction) < 0.036


def test_holdouts_name_rules_and_unknown_rules_hold_out_nobody() -> None:
    h = Holdouts({"cart": 0.5}, "s")
    customers = [f"c-{i}" for i in range(500)]
    assert any(h.held_out("cart", c) for c in customers)
    assert not any(h.held_out("other", c) for c in customers)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.1", True, None, float("nan")])
def test_a_holdout_outside_zero_to_one_is_refused_naming_the_rule(bad: object) -> None:
    with pytest.raises(ValueError, match=r"journey\.abandonment\[0\]: holdout"):
        check_fraction(bad, "journey.abandonment[0]")
    rule = {"name": "cart", "start": ["add_to_cart"], "wait_s": 60, "holdout": bad}
    with pytest.raises(ValueError, match=r"journey\.abandonment\[0\]: holdout"):
        parse_playbook([rule], [], STAGES)
    follow = {"name": "welcome", "to_stage": "purchase", "holdout": bad}
    with pytest.raises(ValueError, match=r"journey\.followups\[0\]: holdout"):
        parse_playbook([], [follow], STAGES)
    with pytest.raises(ValueError, match="holdout"):
        rule_holdouts([], [follow])


def test_the_shipped_config_holds_out_a_tenth_of_abandonments_and_no_stage_followups() -> None:
    j = load_settings(environ={}).journey
    fractions = rule_holdouts(j.abandonment, j.followups)
    assert fractions == {
        "cart": 0.1,
        "checkout": 0.1,
        "browse": 0.1,
        "welcome": 0.0,
        "thank_you": 0.0,
    }
    playbook = parse_playbook(
        j.abandonment, j.followups, STAGES, roles={"purchase": "purchase", "loyalty": None}
    )
    assert playbook.holdouts() == {"cart": 0.1, "checkout": 0.1, "browse": 0.1, "welcome": 0.0}
    # Left out, a rule holds out nobody.
    assert parse_playbook([{"name": "r", "start": ["x"], "wait_s": 1}], [], STAGES).holdouts() == {
        "r": 0.0
    }
