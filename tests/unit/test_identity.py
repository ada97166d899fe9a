"""Identity resolution (which journey a touchpoint belongs to), the oracle, and RecentIds."""

from __future__ import annotations

from typing import Any

import pytest

from stream.contract import INTERNAL_SOURCE, Touchpoint
from stream.ingest.dedupe import RecentIds
from stream.ingest.identity import LINK, MERGE, orphan_key, resolve
from stream.journey.replay import Oracle, run_oracle
from stream.journey.stages import DAY_MS, load_model
from tests.builders import NOON
from tests.builders import touchpoint as tp

FIVE = load_model("five-stage")
T0 = NOON
HOUR = 3_600_000


def table(**links: str) -> Any:
    return links.get


def test_orphan_keys() -> None:
    assert orphan_key("dev-1") == "anon:dev-1"
    assert orphan_key("loyalty:L") == "loyalty:L"
    assert orphan_key("email:a@b.c") == "email:a@b.c"


def test_customer_only_event_belongs_to_the_customer() -> None:
    res = resolve(tp("e", customer="c-1"), table())
    assert res.journey_key == "c-1"
    assert (res.record, res.merges, res.links) == (None, [], [])


def test_unknown_anonymous_event_belongs_to_its_orphan_journey() -> None:
    res = resolve(tp("e", anon="dev-1"), table())
    assert res.journey_key == "anon:dev-1"
    assert (res.record, res.merges, res.links) == (None, [], [])


def test_known_anonymous_event_belongs_to_the_customer() -> None:
    res = resolve(tp("e", anon="dev-1"), table(**{"dev-1": "c-1"}))
    assert res.journey_key == "c-1"
    assert (res.record, res.merges) == (None, [])


def test_identify_records_the_link_and_merges_the_orphan() -> None:
    res = resolve(tp("e", "identify", customer="c-1", anon="dev-1"), table())
    assert res.journey_key == "c-1"
    assert res.record == ("dev-1", "c-1")
    ((orphan, merge),) = res.merges
    assert orphan == "anon:dev-1"
    assert merge.type == MERGE
    assert merge.source == INTERNAL_SOURCE
    assert merge.properties == {"into": "c-1", "alias": "dev-1"}
    assert merge.timestamp == T0
    assert merge.event_id == "merge:dev-1:c-1"
    assert res.links == []


def test_a_second_identical_identify_records_nothing_and_repeats_the_same_merge() -> None:
    links: dict[str, str] = {}
    first = resolve(tp("e1", "identify", customer="c-1", anon="dev-1"), links.get)
    assert first.record is not None
    links[first.record[0]] = first.record[1]
    again = resolve(tp("e2", "identify", T0 + 1, customer="c-1", anon="dev-1"), links.get)
    assert again.journey_key == "c-1"
    assert again.record is None
    # The same merge (same id, so ingest sends it once per process): a worker
    # killed after recording the link may never have sent the first one.
    assert (
        [(k, m.event_id) for k, m in again.merges]
        == [(k, m.event_id) for k, m in first.merges]
        == [("anon:dev-1", "merge:dev-1:c-1")]
    )


def test_identify_as_another_customer_relinks() -> None:
    res = resolve(tp("e", "identify", customer="c-2", anon="dev-1"), table(**{"dev-1": "c-1"}))
    assert res.journey_key == "c-2"
    assert res.record == ("dev-1", "c-2")


def test_loyalty_and_email_become_link_messages() -> None:
    res = resolve(
        tp(
            "e",
            "identify",
            customer="c-1",
            anon="dev-1",
            loyalty_id="L-7",
            email=" Ann@Example.com",
        ),
        table(**{"dev-1": "c-1"}),
    )
    assert res.journey_key == "c-1"
    assert [key for key, _ in res.links] == ["loyalty:L-7", "email:ann@example.com"]
    for key, link in res.links:
        assert link.type == LINK
        assert link.source == INTERNAL_SOURCE
        assert link.anonymous_id == key
        assert link.routing_key == key
        assert link.properties == {"customer_id": "c-1"}
        assert link.event_id == f"link:{key}:c-1"


def test_merges_and_links_already_sent_are_not_built_again() -> None:
    sent = RecentIds(10)

    def unsent(message_id: str) -> bool:
        return not sent.seen(message_id)

    event = tp("e1", "identify", customer="c-1", anon="dev-1", loyalty_id="L-7")
    first = resolve(event, table(), unsent)
    assert [m.event_id for _, m in first.merges] == ["merge:dev-1:c-1"]
    assert [link.event_id for _, link in first.links] == ["link:loyalty:L-7:c-1"]
    again = resolve(
        tp("e2", "page", T0 + 1, customer="c-1", anon="dev-1", loyalty_id="L-7"),
        table(**{"dev-1": "c-1"}),
        unsent,
    )
    assert (again.journey_key, again.record, again.merges, again.links) == ("c-1", None, [], [])
    # Another process (empty memory) sends them again.
    restarted = RecentIds(10)
    fresh = resolve(event, table(**{"dev-1": "c-1"}), lambda i: not restarted.seen(i))
    assert [m.event_id for _, m in fresh.merges] == ["merge:dev-1:c-1"]
    assert len(fresh.links) == 1


def test_pos_sale_with_customer_and_loyalty_links_the_card() -> None:
    res = resolve(tp("p", "pos_purchase", customer="c-1", channel="pos", loyalty_id="L-7"), table())
    assert res.journey_key == "c-1"
    assert res.record is None  # keyed by the customer id itself
    assert [key for key, _ in res.links] == ["loyalty:L-7"]


def test_loyalty_only_sale_goes_to_its_orphan_or_the_linked_customer() -> None:
    sale = tp("p", "pos_purchase", channel="pos", loyalty_id="L-7")
    assert resolve(sale, table()).journey_key == "loyalty:L-7"
    assert resolve(sale, table(**{"loyalty:L-7": "c-1"})).journey_key == "c-1"


def test_link_message_records_and_merges_the_orphan() -> None:
    ((_, link),) = resolve(tp("e", customer="c-1", loyalty_id="L-7"), table()).links
    res = resolve(link, table())
    assert res.journey_key == ""
    assert res.record == ("loyalty:L-7", "c-1")
    ((orphan, merge),) = res.merges
    assert orphan == "loyalty:L-7"
    assert merge.properties == {"into": "c-1", "alias": "loyalty:L-7"}
    # Already linked: nothing to record, but the orphan still answers the customer.
    again = resolve(link, table(**{"loyalty:L-7": "c-1"}))
    assert again.record is None
    assert [k for k, _ in again.merges] == ["loyalty:L-7"]


# -- the oracle --------------------------------------------------------------------


def cross_channel_story(pos_first: bool) -> list[Touchpoint]:
    visit = tp("v", "page_view", T0, anon="dev-1")
    identify = tp("i", "identify", T0 + HOUR, customer="c-1", anon="dev-1", loyalty_id="L-7")
    cart = tp("a", "add_to_cart", T0 + 2 * HOUR, anon="dev-1", sku="MUG", price=8.5)
    sale = tp("p", "pos_purchase", T0 + 3 * HOUR, channel="pos", loyalty_id="L-7", total=8.5)
    return [sale, visit, identify, cart] if pos_first else [visit, identify, cart, sale]


@pytest.mark.parametrize("lateness", [0, HOUR, DAY_MS])
def test_anonymous_visit_identify_cart_and_pos_sale_end_in_one_journey(lateness: int) -> None:
    oracle = run_oracle(cross_channel_story(pos_first=False), FIVE, lateness, until=T0 + DAY_MS)
    (journey,) = oracle.final_states()
    assert journey.key == "c-1"
    assert journey.stage == "purchase"
    assert journey.events == 4
    assert journey.anonymous_ids == ["dev-1"]
    assert journey.loyalty_ids == ["L-7"]
    assert journey.orders.count == 1 and journey.orders.last_channel == "pos"
    assert journey.cart is None
    assert oracle.identity == {"dev-1": "c-1", "loyalty:L-7": "c-1"}
    assert oracle.states["anon:dev-1"].merged_into == "c-1"
    mine = [t for t in oracle.transitions if t.customer_id == "c-1"]
    assert [t.to_stage for t in mine][-1] == "purchase"
    assert [t.at for t in mine] == sorted(t.at for t in mine)


def test_pos_sale_before_the_card_is_linked_is_merged_later() -> None:
    oracle = run_oracle(cross_channel_story(pos_first=True), FIVE, HOUR, until=T0 + DAY_MS)
    (journey,) = oracle.final_states()
    assert journey.key == "c-1"
    assert journey.stage == "purchase"
    assert journey.events == 4
    assert journey.orders.count == 1
    assert oracle.states["loyalty:L-7"].merged_into == "c-1"
    assert set(journey.merged_from) == {"dev-1", "loyalty:L-7"}


def test_oracle_drops_duplicates_and_links_are_not_journeys() -> None:
    events = cross_channel_story(pos_first=False)
    oracle = Oracle(FIVE, HOUR)
    for e in events + events[:2]:
        oracle.feed(e)
    oracle.finish(T0 + DAY_MS)
    assert oracle.duplicates == 2
    assert {s.key for s in oracle.final_states()} == {"c-1"}
    assert not any(k.startswith("link") for k in oracle.states)


def test_oracle_finish_settles_and_lapses() -> None:
    oracle = run_oracle(cross_channel_story(pos_first=False), FIVE, DAY_MS)
    (journey,) = oracle.final_states()
    assert journey.stage == "lapsed"  # finish() settles everything, to the end of time
    assert journey.pending == []


def test_oracle_merge_keeps_transitions_in_time_order() -> None:
    events = [
        tp("p", "purchase", T0, customer="c-1", value=5),
        tp("a", "add_to_cart", T0 + 2 * HOUR, anon="dev-1", sku="s"),
        tp("v", "page_view", T0 + 4 * HOUR, anon="dev-1"),
        tp("i", "identify", T0 + 4 * HOUR + 1, customer="c-1", anon="dev-1"),
    ]
    merged = run_oracle(events, FIVE, HOUR, until=T0 + 5 * HOUR)
    (journey,) = merged.final_states()
    entered = [v.entered_at for v in journey.history]
    assert entered == sorted(entered)
    # The orphan's events (its settled ones from its journal) are replayed into the
    # customer's journey in event-time order: the cart after the purchase starts a
    # new cycle, exactly as if every event had carried the customer id.
    assert journey.stage == "decision"
    assert journey.orders.count == 1
    assert [v.stage for v in journey.history] == ["purchase", "decision"]


# -- RecentIds ---------------------------------------------------------------------


def test_recent_ids_answers_seen_and_records() -> None:
    ids = RecentIds(3)
    assert [ids.seen(x) for x in "abca"] == [False, False, False, True]
    assert len(ids) == 3


def test_recent_ids_evicts_the_least_recently_seen() -> None:
    ids = RecentIds(3)
    for x in "abc":
        ids.seen(x)
    assert ids.seen("a")  # refreshes "a": "b" is now the oldest
    assert not ids.seen("d")  # evicts "b"
    assert len(ids) == 3
    assert ids.seen("a") and ids.seen("c") and ids.seen("d")
    assert not ids.seen("b")


def test_recent_ids_capacity_one_and_invalid() -> None:
    ids = RecentIds(1)
    assert not ids.seen("a")
    assert ids.seen("a")
    assert not ids.seen("b")
    assert not ids.seen("a")
    with pytest.raises(ValueError):
        RecentIds(0)
