"""The demo's simulated answers to follow-ups: planted rates, deterministic, in the window."""

from __future__ import annotations

from stream.reactions import Planted, Reactions, reaction

R = Reactions(window_ms=60_000, rules={"cart": Planted(0.5, 0.2)}, seed=3)


def test_customers_buy_at_the_planted_rate_of_their_arm_inside_the_window() -> None:
    n = 20_000
    bought = {
        arm: [reaction(R, f"t{i}", "cart", outcome) for i in range(n)]
        for arm, outcome in (("treated", "sent"), ("control", "held_out"))
    }
    rate = {arm: sum(p is not None for p in ps) / n for arm, ps in bought.items()}
    assert abs(rate["treated"] - 0.5) < 0.02 and abs(rate["control"] - 0.2) < 0.02
    for p in (p for ps in bought.values() for p in ps if p is not None):
        assert 3_000 <= p.delay_ms <= 36_000 and 20.0 <= p.value <= 180.0
    other = sum(reaction(R, f"t{i}", "browse", "sent") is not None for i in range(n)) / n
    assert abs(other - R.default.treated) < 0.02


def test_answers_depend_on_seed_and_trigger_only_and_undecided_get_none() -> None:
    assert reaction(R, "t1", "cart", "sent") == reaction(R, "t1", "cart", "sent")
    assert reaction(R, "t1", "cart", "capped") is None
    other = Reactions(window_ms=60_000, rules={"cart": Planted(0.5, 0.2)}, seed=4)
    assert [reaction(R, f"t{i}", "cart", "sent") for i in range(50)] != [
        reaction(other, f"t{i}", "cart", "sent") for i in range(50)
    ]
    assert Planted(0.5, 0.2).uplift == 0.5 - 0.2
