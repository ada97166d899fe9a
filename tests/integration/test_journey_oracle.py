"""The streaming journey pipeline against its oracle (``journey replay``), on the real broker.

The worker and the oracle must end with the same journey states, the same set
of transitions and the same follow-up triggers for the same events, also when
the worker is killed mid-stream and a new one (with an empty local store)
recovers from the changelog.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream import contract, simulator
from stream.ingest.identity import LINK, link_id, orphan_key
from stream.journey.funnel import combine, funnel_figures
from stream.journey.linking import MERGE_IN
from stream.journey.model import journey_model
from stream.journey.replay import run_oracle
from stream.journey.state import JourneyState
from stream.producers.publisher import Publisher, packed_records, partition_of
from stream.settings import Settings
from stream.topics import ensure_topics
from tests.helpers import read_topic, wait_for
from tests.procs import Worker, http_get

DAY_MS = 86_400_000
#: Longer than the simulated log's span in event time (sessions start within 6 h,
#: returning visits come up to a day or two later), and the log ends longer ago
#: than this, so nothing settles while the backlog is read and everything does
#: once the worker is caught up and idle.
LATENESS_S = 5 * 86_400.0


@pytest.fixture
def journey_settings(settings: Settings) -> Settings:
    # Lateness longer than the log's span: nothing settles while the backlog is
    # read, everything settles once the worker is caught up and idle.
    s = replace(settings, journey=replace(settings.journey, allowed_lateness_s=LATENESS_S))
    ensure_topics(s)
    return s


def simulated_log(customers: int, seed: int) -> list[contract.Touchpoint]:
    start = int(time.time() * 1000) - 10 * DAY_MS
    events = simulator.generate(customers, seed=seed, start_ms=start, span_s=6 * 3600)
    return [contract.parse(e) for e in events]


def oracle_for(events: list[contract.Touchpoint], settings: Settings) -> Any:
    model = journey_model(settings)
    until = int(time.time() * 1000) - int(settings.journey.allowed_lateness_s * 1000)
    return run_oracle(events, model, int(settings.journey.allowed_lateness_s * 1000), until)


def produce(settings: Settings, events: list[contract.Touchpoint]) -> None:
    simulator.produce(settings, [e.to_dict() for e in events], rate=None, pack_sessions=True)


def streamed_transitions(settings: Settings) -> set[tuple]:
    records = read_topic(settings.broker.bootstrap, settings.topics.transitions, timeout_s=30)
    return {
        (t["customer_id"], t["from"], t["to"], t["at"], t["cause_event_id"])
        for r in records
        for t in orjson.loads(r.value)
    }


def oracle_transitions(oracle: Any) -> set[tuple]:
    return {
        (t.customer_id, t.from_stage, t.to_stage, t.at, t.cause_event_id)
        for t in oracle.transitions
    }


def streamed_triggers(settings: Settings) -> list[bytes]:
    """Triggers on the topic, without the wall-clock fields only the stream has."""
    records = read_topic(settings.broker.bootstrap, settings.topics.triggers, timeout_s=30)
    return [comparable_trigger(orjson.loads(r.value)) for r in records]


def comparable_trigger(body: dict) -> bytes:
    body = {k: v for k, v in body.items() if k not in ("fired_at", "extra")}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def oracle_triggers(oracle: Any) -> list[bytes]:
    return [comparable_trigger(t.to_dict()) for t in oracle.triggers]


def wait_settled(
    worker: Worker, settings: Settings, expected: set[tuple], timeout: float
) -> set[tuple]:
    """Wait until the transitions topic holds at least the expected number of transitions.

    On timeout the assertion names what is missing and what is extra, not the whole set.
    """
    seen: set[tuple] = set()

    def probe() -> set[tuple]:
        seen.clear()
        seen.update(streamed_transitions(settings))
        return seen

    try:
        return set(
            wait_for(probe, lambda got: len(got) >= len(expected), timeout_s=timeout, every_s=1.0)
        )
    except AssertionError:
        missing = sorted(expected - seen, key=repr)
        extra = sorted(seen - expected, key=repr)
        raise AssertionError(
            f"{len(seen)} of {len(expected)} transitions after {timeout}s; "
            f"missing {len(missing)}: {missing[:10]}; extra {len(extra)}: {extra[:10]}"
        ) from None


def explain(settings: Settings, keys: list[str]) -> str:
    """:func:`topic_history`, or why it could not be read (never hides the failure itself)."""
    try:
        return topic_history(settings, keys)
    except Exception as exc:  # a diagnostic only: the assertion it decorates must still show
        return f"(topics not readable for the diagnostic: {exc!r})"


def topic_history(settings: Settings, keys: list[str]) -> str:
    """What the topics hold for these journeys, for a failure message.

    For each journey and the orphan journeys merged into it: the input
    messages carrying its events (``touchpoints``), each event forwarded to it
    (``touchpoints.resolved``) and each state saved (the journeys changelog),
    all with their offsets: enough to tell an event never read or never
    forwarded from a state that recovery did not read.
    """
    bootstrap = settings.broker.bootstrap
    resolved = [
        (r, contract.loads_groups(r.value))
        for r in read_topic(bootstrap, settings.topics.resolved, timeout_s=30)
        if r.value and contract.loads_mark(r.value) is None
    ]
    changelog = read_topic(bootstrap, f"{settings.worker.app_id}-journeys-changelog", timeout_s=30)
    inputs = read_topic(bootstrap, settings.topics.touchpoints, timeout_s=30)
    links = read_topic(bootstrap, settings.topics.links, timeout_s=30)
    identity = read_topic(bootstrap, f"{settings.worker.app_id}-identity-changelog", timeout_s=30)
    todo, done, lines = list(keys[:3]), set(), []
    while todo:
        key = todo.pop(0)
        if key in done:
            continue
        done.add(key)
        lines.append(f"-- {key}")
        ids: set[str] = set()
        for r, groups in resolved:
            for k, tps in groups:
                if k != key:
                    continue
                ids.update(tp.event_id for tp in tps)
                lines.append(
                    f"resolved {r.partition}@{r.offset}: "
                    + ", ".join(f"{tp.event_id} {tp.type} @{tp.timestamp}" for tp in tps)
                )
                todo.extend(
                    orphan_key(str(tp.properties["alias"])) for tp in tps if tp.type == MERGE_IN
                )
        for r in changelog:
            if r.key == key.encode():
                st = JourneyState.loads(r.value) if r.value else None
                what = (
                    "deleted"
                    if st is None
                    else (
                        f"stage={st.stage} events={st.events} merged_into={st.merged_into} "
                        f"pending={[tp.event_id for tp in st.pending]}"
                    )
                )
                lines.append(f"changelog {r.partition}@{r.offset}: {what}")
        raw = key.removeprefix("anon:")
        for r in identity:
            if r.key == raw.encode():
                lines.append(f"identity {r.partition}@{r.offset}: -> {(r.value or b'').decode()}")
        for r in links:
            got = [
                f"{tp.event_id} @{tp.timestamp}"
                for tp in contract.decode_message(r.value or b"")
                if isinstance(tp, contract.Touchpoint) and tp.routing_key == raw
            ]
            if got:
                lines.append(f"links {r.partition}@{r.offset}: {got}")
        for r in inputs:
            got = [
                tp.event_id
                for tp in contract.decode_message(r.value or b"")
                if isinstance(tp, contract.Touchpoint)
                and (tp.event_id in ids or tp.routing_key == raw or tp.customer_id == key)
            ]
            if got:
                lines.append(f"touchpoints {r.partition}@{r.offset}: {got}")
    return "\n".join(lines)


def differing(settings: Settings, got: set[tuple], expected: set[tuple]) -> str:
    """The journeys whose transitions differ, by journeys partition, and what the topics hold."""
    keys = sorted({t[0] for t in got ^ expected})
    n = settings.topics.partitions
    by_partition: dict[int, list[str]] = {}
    for key in keys:
        by_partition.setdefault(partition_of(key.encode(), n), []).append(key)
    counts = {p: len(v) for p, v in sorted(by_partition.items())}
    return f"{len(keys)} journeys differ, per partition {counts}: {keys[:40]}\n" + explain(
        settings, keys
    )


def comparable(state: dict) -> dict:
    # merged_from is left out: whether a loyalty card's sale met the link first or
    # became a small journey merged later depends on arrival order; the result does not.
    keep = ("stage", "events", "counts_by_type", "orders", "cart", "history", "anonymous_ids")
    return {k: state[k] for k in keep}


def assert_states_equal(worker: Worker, oracle: Any, settings: Settings | None = None) -> None:
    mismatches = []
    for state in oracle.final_states():
        status, body = worker.api(f"/customers/{state.key}/journey")
        want = comparable(state.summary())
        if status != 200 or comparable(body) != want:
            mismatches.append(
                (state.key, status, body if status != 200 else comparable(body), want)
            )
    assert not mismatches, f"{len(mismatches)} journeys differ, first: {mismatches[0]}" + (
        "\n" + explain(settings, [k for k, *_ in mismatches]) if settings is not None else ""
    )


def settled_journey(worker: Worker, customer: str, events: int, timeout_s: float) -> dict:
    """The customer's journey once it holds ``events`` events and none pending."""
    return wait_for(
        lambda: worker.api(f"/customers/{customer}/journey"),
        lambda r: r[0] == 200 and r[1]["events"] == events and r[1]["pending_events"] == 0,
        timeout_s=timeout_s,
    )[1]


def test_stream_equals_oracle(journey_settings: Settings, tmp_path: Path) -> None:
    events = simulated_log(customers=800, seed=7)
    assert len(events) >= 5000
    oracle = oracle_for(events, journey_settings)
    produce(journey_settings, events)

    worker = Worker(journey_settings, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        expected = oracle_transitions(oracle)
        got = wait_settled(worker, journey_settings, expected, timeout=180)
        assert got == expected
        assert_states_equal(worker, oracle)
        want_triggers = oracle_triggers(oracle)
        assert {orjson.loads(t)["rule"] for t in want_triggers} >= {"cart", "browse", "welcome"}
        triggers = wait_for(
            lambda: streamed_triggers(journey_settings),
            lambda got: len(got) >= len(want_triggers),
            timeout_s=30,
        )
        # Exactly once each, and exactly the oracle's.
        assert sorted(triggers) == sorted(want_triggers)

        model = journey_model(journey_settings)
        status, funnel = worker.api("/funnel")
        assert status == 200
        assert funnel == orjson.loads(
            orjson.dumps(combine([funnel_figures(oracle.final_states(), model)], model))
        )
        status, body = worker.api("/customers/nobody-at-all/journey")
        assert status == 404 and "error" in body
        want = dict.fromkeys(model.all_stages, 0.0)
        for state in oracle.final_states():
            want[state.stage] += 1
        # The gauge is refreshed by the worker's timer, so wait for it to catch up.
        wait_for(
            lambda: {
                s: worker.metric("journey_stage_customers", stage=s) for s in model.all_stages
            },
            lambda populations: populations == want,
            timeout_s=10,
        )
        # Every identity link this backlog made was answered in time (none settled
        # without its orphan journey's answer).
        _, text = http_get(f"{worker.url}/metrics")
        assert "\njourney_identity_links_unanswered_total 0.0\n" in text
    finally:
        worker.stop()


@pytest.mark.slow
def test_worker_killed_mid_stream_recovers_from_changelog(
    journey_settings: Settings, tmp_path: Path
) -> None:
    events = simulated_log(customers=800, seed=11)
    oracle = oracle_for(events, journey_settings)
    half = len(events) // 2
    produce(journey_settings, events[:half])

    first = Worker(journey_settings, tmp_path / "worker-1.log")
    first.start().wait_ready()
    wait_for(
        lambda: first.metric("journey_events_applied_total"),
        lambda n: n >= half // 3,
        timeout_s=120,
    )
    produce(journey_settings, events[half:])
    first.kill()

    # A new worker with an empty local store: its state can only come from the changelog.
    fresh = replace(
        journey_settings,
        worker=replace(journey_settings.worker, data_dir=str(tmp_path / "worker-2-data")),
    )
    second = Worker(fresh, tmp_path / "worker-2.log")
    try:
        second.start().wait_ready()
        expected = oracle_transitions(oracle)
        try:
            got = wait_settled(second, fresh, expected, timeout=240)
        except AssertionError as exc:
            got = streamed_transitions(fresh)
            raise AssertionError(f"{exc}\n{differing(fresh, got, expected)}") from None
        assert got == expected, differing(fresh, got, expected)
        assert_states_equal(second, oracle, fresh)
        # At least once on the topic (a crash may re-emit), and the same set as the oracle.
        want_triggers = set(oracle_triggers(oracle))
        triggers = wait_for(
            lambda: set(streamed_triggers(fresh)),
            lambda got: len(got) >= len(want_triggers),
            timeout_s=30,
        )
        assert triggers == want_triggers
    finally:
        second.stop()


def test_web_and_pos_events_of_one_person_end_in_one_journey(
    journey_settings: Settings, tmp_path: Path
) -> None:
    t0 = int(time.time() * 1000) - 10 * DAY_MS
    raw = [
        {
            "event_id": "w1",
            "type": "page_view",
            "channel": "web",
            "timestamp": t0,
            "anonymous_id": "device-9",
        },
        {
            "event_id": "w2",
            "type": "product_view",
            "channel": "web",
            "timestamp": t0 + 60_000,
            "anonymous_id": "device-9",
            "properties": {"sku": "SKU-7", "price": 40.0},
        },
        {
            "event_id": "w3",
            "type": "identify",
            "channel": "web",
            "timestamp": t0 + 120_000,
            "anonymous_id": "device-9",
            "customer_id": "cust-9",
            "properties": {
                "email": "nine@example.com",
                "loyalty_id": "LOY-9",
                "first_name": "Nina",
            },
        },
        {
            "event_id": "p1",
            "type": "pos_purchase",
            "channel": "pos",
            "timestamp": t0 + 3_600_000,
            "properties": {
                "loyalty_id": "LOY-9",
                "store_id": "S-1",
                "order_id": "R-1",
                "value": 40.0,
                "currency": "EUR",
                "products": [{"sku": "SKU-7", "price": 40.0, "quantity": 1}],
            },
        },
    ]
    events = [contract.parse(e) for e in raw]
    produce(journey_settings, events)
    worker = Worker(journey_settings, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        state = settled_journey(worker, "cust-9", events=4, timeout_s=90)
        assert state["stage"] == "purchase"
        assert state["orders"]["count"] == 1
        assert state["counts_by_channel"] == {"web": 3, "pos": 1}
        assert state["loyalty_ids"] == ["LOY-9"]
        assert state["anonymous_ids"] == ["device-9"]
        assert [v["stage"] for v in state["history"]] == ["awareness", "consideration", "purchase"]
        for orphan in ("anon:device-9", "loyalty:LOY-9"):
            status, body = worker.api(f"/customers/{orphan}/journey")
            assert status == 404 or body.get("merged_into") == "cust-9", (orphan, status, body)
    finally:
        worker.stop()


def keys_on(partition: int, prefix: str, count: int, partitions: int = 4) -> list[str]:
    """``count`` raw ids starting with ``prefix`` that hash to ``partition``."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        key = f"{prefix}{i}"
        if partition_of(key.encode(), partitions) == partition:
            out.append(key)
        i += 1
    return out


def test_orphan_journey_waits_for_its_merge_from_a_lagging_links_partition(
    settings: Settings, tmp_path: Path
) -> None:
    """A loyalty card's sale is not settled on its own while the card's link is on its way.

    The sale (loyalty card partition) comes first; the login that links the card
    to the customer is read from another partition, and its link waits on
    ``journey.links`` behind a backlog of other links. Every source's events,
    and newer ones in every partition, are forwarded long before: only the
    links partition's relayed marks keep the card's watermark from passing
    the sale, so, as in the oracle, the sale goes into the customer's journey
    and the card's own journey emits nothing.
    """
    s = replace(settings, journey=replace(settings.journey, allowed_lateness_s=60.0))
    ensure_topics(s)
    n = s.topics.partitions
    card = "LOY-1"
    card_partition = partition_of(f"loyalty:{card}".encode(), n)
    t0 = int(time.time() * 1000) - 10 * DAY_MS
    device = next(d for p in range(n) if p != card_partition for d in keys_on(p, "dev-", 1, n))

    # The backlog: links for other aliases the card's partition owns.
    backlog = [
        contract.internal_touchpoint(
            LINK,
            link_id(alias, f"bulk-{alias}"),
            t0 - DAY_MS,
            anonymous_id=alias,
            properties={"customer_id": f"bulk-{alias}"},
        )
        for alias in keys_on(card_partition, "bulk-", 20_000, n)
    ]
    publisher = Publisher(s.broker, ack_timeout_s=60)
    try:
        publisher.send_and_wait(packed_records(s.topics.links, backlog, n))
    finally:
        publisher.close()

    raw = [
        {
            "event_id": "sale",
            "type": "pos_purchase",
            "channel": "pos",
            "timestamp": t0,
            "properties": {
                "loyalty_id": card,
                "order_id": "R-1",
                "value": 25.0,
                "currency": "EUR",
                "products": [{"sku": "SKU-1", "price": 25.0, "quantity": 1}],
            },
        },
        {
            "event_id": "visit",
            "type": "page_view",
            "channel": "web",
            "timestamp": t0 + 10_000,
            "anonymous_id": device,
        },
        {
            "event_id": "login",
            "type": "identify",
            "channel": "web",
            "timestamp": t0 + 30_000,
            "anonymous_id": device,
            "customer_id": "cust-1",
            "properties": {"loyalty_id": card},
        },
    ]
    # Newer events in every partition: every source's mark passes the sale at once.
    for p in range(n):
        raw.append(
            {
                "event_id": f"later-{p}",
                "type": "page_view",
                "channel": "web",
                "timestamp": t0 + 20 * 60_000,
                "anonymous_id": keys_on(p, "later-", 1, n)[0],
            }
        )
    events = [contract.parse(e) for e in raw]
    oracle = oracle_for(events, s)
    expected = oracle_transitions(oracle)
    assert not any(t[0] == f"loyalty:{card}" for t in expected)  # the oracle merges it first
    produce(s, events)

    worker = Worker(s, tmp_path / "worker.log")
    try:
        worker.start().wait_ready()
        state = settled_journey(worker, "cust-1", events=3, timeout_s=120)
        assert state["stage"] == "purchase"
        assert state["loyalty_ids"] == [card]
        got = wait_settled(worker, s, expected, timeout=30)
        assert got == expected, differing(s, got, expected)
        assert_states_equal(worker, oracle)
        assert worker.metric("journey_identity_links_unanswered_total") == 0
        # The test's premise: the card's link was recorded after the whole backlog.
        recorded = [
            r.key
            for r in read_topic(
                s.broker.bootstrap, f"{s.worker.app_id}-identity-changelog", timeout_s=30
            )
            if r.partition == card_partition
        ]
        assert recorded.index(f"loyalty:{card}".encode()) > max(
            i for i, key in enumerate(recorded) if key.startswith(b"bulk-")
        )
    finally:
        worker.stop()
