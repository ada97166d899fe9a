"""The offline oracle settles journeys as the stream's timer does."""

from __future__ import annotations

from stream.journey.replay import run_oracle
from stream.journey.stages import load_model
from tests.builders import touchpoint as tp

FIVE = load_model("five-stage")
MIN = 60_000
T0 = 1_767_225_600_000
LATENESS = 10 * MIN


def test_an_orphan_settled_before_its_link_keeps_its_own_transitions() -> None:
    events = [
        tp("a1", "page_view", T0, anon="dev-1"),
        tp("a2", "product_view", T0 + MIN, anon="dev-1"),
        # Other shoppers move the watermark well past the device's visit ...
        *[tp(f"o{i}", "page_view", T0 + (i + 2) * MIN, customer="other") for i in range(30)],
        # ... before the device logs in.
        tp("login", "identify", T0 + 40 * MIN, anon="dev-1", customer="cust-1"),
    ]
    oracle = run_oracle(events, FIVE, LATENESS)
    orphan = [t for t in oracle.transitions if t.customer_id == "anon:dev-1"]
    assert [(t.from_stage, t.to_stage) for t in orphan] == [
        (None, "awareness"),
        ("awareness", "consideration"),
    ]
    states = {s.key: s for s in oracle.final_states()}
    assert "anon:dev-1" not in states, "merged into the customer"
    # The customer's journey took the device's visit in: it starts at the first view.
    assert states["cust-1"].history[0].entered_at == T0


def test_an_orphan_linked_within_the_lateness_shows_no_transitions_of_its_own() -> None:
    events = [
        tp("a1", "page_view", T0, anon="dev-2"),
        tp("login", "identify", T0 + MIN, anon="dev-2", customer="cust-2"),
        *[tp(f"o{i}", "page_view", T0 + (i + 2) * MIN, customer="other") for i in range(30)],
    ]
    oracle = run_oracle(events, FIVE, LATENESS)
    assert not [t for t in oracle.transitions if t.customer_id == "anon:dev-2"]
    assert [t.to_stage for t in oracle.transitions if t.customer_id == "cust-2"][:1] == [
        "awareness"
    ]
