"""The identity-link protocol between journeys (pure): merges, answers, waiting, giving up.

An orphan journey asked to merge answers with its state (or an
acknowledgement), again if asked again after a crash, and the customer's
journey waits for every answer before it settles.
"""

from __future__ import annotations

from stream.ingest.identity import MERGE, resolve
from stream.journey import linking
from stream.journey.linking import LINK_ACK_TIMEOUT_MS, MERGE_IN
from stream.journey.stages import load_model
from tests.builders import touchpoint as event

FIVE = load_model("five-stage")
T0 = 1_700_000_000_000
NOW = 1_800_000_000_000


def test_a_merged_orphan_sends_itself_again_and_the_customer_takes_it_once() -> None:
    views = [event(f"v{i}", "product_view", T0 + i, anon="dev-1") for i in range(3)]
    step = linking.take_in(None, "anon:dev-1", views, 0, NOW, FIVE)
    assert step.save and step.applied == 3 and step.effects == []
    orphan_state = step.state

    login = event("login", "identify", T0 + 10, anon="dev-1", customer="c-1")
    ((orphan, merge),) = resolve(login, {"dev-1": "c-1"}.get).merges  # link already on record
    assert (orphan, merge.type) == ("anon:dev-1", MERGE)

    step = linking.take_in(orphan_state, orphan, [merge], 0, NOW, FIVE)
    ((into, (first,)),) = step.forwards
    assert into == "c-1" and first.type == MERGE_IN and step.merged
    assert len(first.properties["state"]["pending"]) == 3
    assert step.state is not None and step.state.merged_into == "c-1"

    # The same merge again (read again after a crash): the journey goes again, as it went.
    again = linking.take_in(step.state, orphan, [merge], 0, NOW, FIVE)
    ((into, (second,)),) = again.forwards
    assert into == "c-1" and second.type == MERGE_IN
    assert second.properties == first.properties
    assert not again.save

    # The customer's journey, waiting for the link's answer, takes the orphan in once.
    waiting = linking.take_in(None, "c-1", [login], 0, NOW, FIVE)
    customer = waiting.state
    assert customer is not None and customer.awaiting == {"dev-1": NOW}
    assert linking.held(customer, NOW)
    done = linking.take_in(customer, "c-1", [second, first], 0, NOW, FIVE)
    customer = done.state
    assert customer is not None and customer.awaiting == {}
    assert sorted(tp.event_id for tp in customer.pending) == ["login", "v0", "v1", "v2"]
    assert customer.merged_from == ["dev-1"]


def test_a_merge_into_another_customer_is_acknowledged() -> None:
    orphan = linking.take_in(
        None, "anon:dev-2", [event("v", "page_view", T0, anon="dev-2")], 0, NOW, FIVE
    ).state
    one = event("a", "identify", T0 + 1, anon="dev-2", customer="c-1")
    two = event("b", "identify", T0 + 2, anon="dev-2", customer="c-2")
    ((key, to_one),) = resolve(one, {}.get).merges
    ((_, to_two),) = resolve(two, {"dev-2": "c-1"}.get).merges
    first = linking.take_in(orphan, key, [to_one], 0, NOW, FIVE)
    assert [m.properties["state"] is not None for _, ms in first.forwards for m in ms] == [True]
    second = linking.take_in(first.state, key, [to_two], 0, NOW, FIVE)
    ((target, (ack,)),) = second.forwards
    assert target == "c-2"
    assert (ack.type, ack.properties["alias"], ack.properties["state"]) == (MERGE_IN, "dev-2", None)


def test_an_ack_for_an_alias_without_a_journey_keeps_nothing() -> None:
    login = event("l", "identify", T0, anon="dev-3", customer="c-3")
    ((key, merge),) = resolve(login, {}.get).merges
    step = linking.take_in(None, key, [merge], 0, NOW, FIVE)
    assert step.state is None and not step.save
    ((target, (ack,)),) = step.forwards
    assert target == "c-3" and ack.properties["state"] is None


def test_a_held_journey_settles_nothing_until_its_links_answer_or_time_out() -> None:
    login = event("l", "identify", T0, anon="dev-4", customer="c-4")
    step = linking.take_in(None, "c-4", [login], T0 + 3_600_000, NOW, FIVE)
    assert step.effects == [] and step.state is not None and step.state.pending
    held = linking.check(step.state, T0 + 3_600_000, NOW + 1, FIVE)
    assert held.held_until == NOW + LINK_ACK_TIMEOUT_MS + 1 and not held.save
    late = NOW + LINK_ACK_TIMEOUT_MS + 1
    settled = linking.check(step.state, T0 + 3_600_000, late, FIVE)
    assert settled.unanswered == ["dev-4"] and settled.save
    assert [(t.from_stage, t.to_stage) for t in settled.effects] == [(None, "awareness")]


def test_a_redelivered_event_is_neither_applied_nor_late() -> None:
    view = event("v1", "product_view", T0, customer="c-5")
    first = linking.take_in(None, "c-5", [view], T0 + 1, NOW, FIVE)
    assert (first.applied, first.late) == (1, 0)
    again = linking.take_in(first.state, "c-5", [view], T0 + 1, NOW, FIVE)
    assert (again.applied, again.late) == (0, 0)


def test_an_erase_takes_the_journey_its_aliases_and_their_orphan_journeys() -> None:
    login = event(
        "login",
        "identify",
        T0,
        anon="dev-1",
        customer="c-1",
        email="Ann@Example.com",
        loyalty_id="L-1",
    )
    cart = event("a1", "add_to_cart", T0 + 1, customer="c-1", sku="S")
    state = linking.take_in(None, "c-1", [login, cart], T0 + 10, NOW, FIVE).state
    assert state is not None
    request = linking.erase_request("c-1", NOW)
    step = linking.take_in(
        state,
        "c-1",
        [event("later", "page_view", T0 + 5, customer="c-1"), request],
        0,
        NOW,
        FIVE,
    )
    assert step.erase and step.state is None and step.effects == []
    assert step.unlinks == ["dev-1", "email:ann@example.com", "loyalty:L-1"]
    assert sorted(k for k, _ in step.forwards) == [
        "anon:dev-1",
        "email:ann@example.com",
        "loyalty:L-1",
    ]
    assert all(tps[0].type == linking.ERASE for _, tps in step.forwards)
    # Erasing what is not there (an orphan erased already, a repeated request) is a no-op.
    again = linking.take_in(
        None, "anon:dev-1", [linking.erase_request("anon:dev-1", NOW)], 0, NOW, FIVE
    )
    assert again.erase and again.unlinks == [] and again.forwards == []


def test_an_unlink_forgets_an_alias_only_while_it_links_to_the_erased_customer() -> None:
    from stream.ingest.identity import unlink

    assert resolve(unlink("dev-1", "c-1", NOW), {"dev-1": "c-1"}.get).forget == "dev-1"
    # Linked to someone else since: not this customer's to erase.
    assert resolve(unlink("dev-1", "c-1", NOW), {"dev-1": "c-2"}.get).forget is None
