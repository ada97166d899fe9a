"""Hostile input cannot stop the engine or move its clock (real broker, collector, worker).

One worker and one collector serve the whole module (they take about ten
seconds to start); each test uses ids of its own and reads what it caused
from the topics, the worker's HTTP API and its metrics.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from stream import contract
from stream.contract import Touchpoint
from stream.producers.pos.producer import PosProducer
from stream.producers.publisher import Publisher, partition_of
from stream.settings import Settings
from stream.topics import create_topics, ensure_topics
from tests.helpers import isolated_settings, read_topic, wait_for
from tests.integration.test_collector import post, running, with_keys
from tests.procs import Worker

MIN = 60_000
U64_MAX = 18_446_744_073_709_551_615


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    url: str

    @property
    def bootstrap(self) -> str:
        return self.settings.broker.bootstrap

    def dead_letters(self, stage: str) -> list[Any]:
        return [
            r
            for r in read_topic(self.bootstrap, self.settings.topics.dlq)
            if dict(r.headers).get("stage") == stage.encode()
        ]

    def journey(self, key: str) -> tuple[int, Any]:
        return self.worker.api(f"/customers/{key}/journey")


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hostile")
    s = with_keys(isolated_settings(broker.url, uuid.uuid4().hex[:8], tmp))
    ensure_topics(s)
    worker = Worker(s, tmp / "worker.log")
    publisher = Publisher(s.broker, s.collector.ack_timeout_s)
    try:
        worker.start().wait_ready()
        with running(s, publisher) as url:
            yield Stack(s, worker, url)
    finally:
        publisher.close()
        worker.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def deep(levels: int) -> bytes:
    """JSON of ``levels`` objects nested in each other (more than orjson encodes)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def call_bytes(fields: dict[str, Any], properties: bytes) -> bytes:
    """A Segment call's JSON with ``properties`` spliced in as given."""
    return orjson.dumps(fields)[:-1] + b',"properties":' + properties + b"}"


def kafka(stack: Stack) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=stack.bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )


def cart_add(event_id: str, customer: str, at: int, **props: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "add_to_cart",
        "channel": "web",
        "timestamp": at,
        "customer_id": customer,
        "properties": {"sku": "S", "price": 1, "quantity": 1, "cart_id": "k", **props},
    }


def processed(stack: Stack, customer: str, timeout_s: float = 60) -> dict[str, Any]:
    """The customer's journey once the worker has it."""
    _, body = wait_for(lambda: stack.journey(customer), lambda r: r[0] == 200, timeout_s=timeout_s)
    return body


# -- 1 and 3: poison calls at the collector ---------------------------------------------


def test_nested_calls_and_huge_integers_are_refused_per_call_and_dead_lettered(
    stack: Stack,
) -> None:
    u = uuid.uuid4().hex[:8]
    deep252 = call_bytes({"userId": f"u-{u}", "event": "Product Viewed"}, deep(252))
    answer = post(stack.url, "/v1/track", deep252)
    assert answer.status == 400
    assert "nested deeper than 32 levels" in answer.body["error"]

    huge = {"sku": "S", "price": 1, "quantity": U64_MAX}
    added = [
        orjson.dumps({"userId": f"u-{u}", "event": "Product Added", "properties": huge})
        for _ in range(2)
    ]
    for body in added:
        answer = post(stack.url, "/v1/track", body)
        assert answer.status == 400
        assert "signed 64-bit range" in answer.body["error"]

    deep600 = call_bytes(
        {"userId": f"u-{u}", "event": "Product Viewed", "messageId": f"m600-{u}"}, deep(600)
    )
    answer = post(stack.url, "/v1/track", deep600)
    assert answer.status == 400  # not 500: an SDK would retry that forever

    good = {"type": "track", "userId": f"u-{u}", "event": "Product Viewed", "messageId": f"g-{u}"}
    bad = call_bytes({"type": "track", "userId": f"u-{u}", "event": "Product Viewed"}, deep(260))
    batch = b'{"batch":[' + orjson.dumps(good) + b"," + bad + b"]}"
    answer = post(stack.url, "/v1/batch", batch)
    assert answer.status == 400
    assert answer.body["accepted"] == 1
    (refused,) = answer.body["rejected"]
    assert refused["index"] == 1 and "nested deeper" in refused["reason"]

    on_topic = [
        tp
        for r in read_topic(stack.bootstrap, stack.settings.topics.touchpoints)
        for tp in _touchpoints(r.value)
    ]
    assert f"g-{u}" in {tp.event_id for tp in on_topic}

    dead = {r.value: dict(r.headers) for r in stack.dead_letters("collector")}
    for body in (deep252, *added, deep600):
        assert body in dead, body[:80]
    (cut,) = [v for v, h in dead.items() if h.get("index") == b"1" and f"u-{u}".encode() in v]
    assert b'"..."' in cut  # the call cut at the depth limit: JSON cannot carry 260 levels


def _touchpoints(raw: bytes) -> list[Touchpoint]:
    value = orjson.loads(raw)
    return [contract.from_trusted(v) for v in (value if isinstance(value, list) else [value])]


# -- 1: poison records on touchpoints -------------------------------------------------------


def test_poison_records_on_touchpoints_are_dead_lettered_and_ingest_goes_on(stack: Stack) -> None:
    u = uuid.uuid4().hex[:8]
    t = now_ms() - 5 * MIN
    topic = stack.settings.topics.touchpoints
    shell = {k: v for k, v in cart_add(f"n-{u}", f"p-{u}", t).items() if k != "properties"}
    nested = call_bytes(shell, deep(252))
    huge = orjson.dumps(cart_add(f"q-{u}", f"p-{u}", t, quantity=U64_MAX))
    big = orjson.dumps(cart_add(f"b-{u}", f"p-{u}", t, note="x" * (1024 * 1024)))
    garbage = b"{" * 10**6
    good = orjson.dumps(cart_add(f"g-{u}", f"after-{u}", t))
    sent = {}
    p = kafka(stack)
    for name, value in [("nested", nested), ("huge", huge), ("big", big), ("garbage", garbage)]:
        sent[name] = p.send(topic, key=f"p-{u}".encode(), value=value).get(30)
    p.send(topic, key=f"after-{u}".encode(), value=good).get(30)
    p.close()

    journey = processed(stack, f"after-{u}")
    assert journey["pending_events"] + journey["events"] == 1

    def ours() -> dict[str, dict[str, bytes]]:
        where = {(m.partition, m.offset): name for name, m in sent.items()}
        out = {}
        for r in stack.dead_letters("ingest"):
            h = dict(r.headers)
            key = (int(h["source_partition"]), int(h["source_offset"]))
            if key in where:
                out[where[key]] = {**h, "value": r.value}
        return out

    dead = wait_for(ours, lambda d: len(d) == 4)
    assert b"nested deeper than 32 levels" in dead["nested"]["reason"]
    assert dead["nested"]["value"] == nested
    assert b"signed 64-bit range" in dead["huge"]["reason"]
    assert b"over the 1048576-byte limit" in dead["big"]["reason"]
    assert b"not valid JSON" in dead["garbage"]["reason"]
    for name, value in (("big", big), ("garbage", garbage)):
        assert dead[name]["value"] == value[: 64 * 1024]
        assert dead[name]["original_bytes"] == str(len(value)).encode()
        assert dead[name]["original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert stack.worker.metric("journey_events_dead_lettered_total", reason="limit_depth") >= 1


# -- no record stops the journey agent -------------------------------------------------------


def test_the_journey_agent_dead_letters_a_journey_it_cannot_take_and_keeps_its_neighbours(
    stack: Stack,
) -> None:
    """A packed ``touchpoints.resolved`` message is many journeys; one that fails is
    dead-lettered alone (the contract keeps such records out; this one is written
    straight to the topic), and the agent goes on."""
    u = uuid.uuid4().hex[:8]
    s = stack.settings
    n = s.topics.partitions
    keys = [f"j{i}-{u}" for i in range(400)]
    home = partition_of(keys[0].encode(), n)
    victim, overflow, good_a, good_b = [k for k in keys if partition_of(k.encode(), n) == home][:4]
    old = now_ms() - 60 * MIN  # behind the watermark: settled (and summed) at once

    def tp(event_id: str, key: str, at: Any = old, **props: Any) -> Touchpoint:
        return contract.from_trusted(cart_add(event_id, key, at, **props))

    first = contract.dumps_groups(
        [
            (victim, [tp(f"v-{u}", victim, at="soon")]),  # no event time the rules can order
            (overflow, [tp(f"o1-{u}", overflow, quantity=U64_MAX)]),
            (good_a, [tp(f"a-{u}", good_a)]),
        ]
    )
    second = contract.dumps_groups(
        [(overflow, [tp(f"o2-{u}", overflow, quantity=U64_MAX)]), (good_b, [tp(f"b-{u}", good_b)])]
    )
    p = kafka(stack)
    for value in (first, b"not a packed message", second):
        p.send(s.topics.resolved, value=value, partition=home).get(30)
    p.close()

    assert processed(stack, good_a)["key"] == good_a
    assert processed(stack, good_b)["key"] == good_b

    def journey_letters() -> dict[bytes, dict[str, bytes]]:
        out = {}
        for r in stack.dead_letters("journey"):
            h = dict(r.headers)
            if h.get("journey_key") in (victim.encode(), overflow.encode()):
                out[h["journey_key"]] = {**h, "value": r.value}
            elif r.value == b"not a packed message":
                out[b"(message)"] = {**h, "value": r.value}
        return out

    dead = wait_for(
        journey_letters,
        lambda d: {victim.encode(), overflow.encode(), b"(message)"} <= set(d),
    )
    assert b"TypeError" in dead[victim.encode()]["reason"]
    assert contract.loads_groups(dead[victim.encode()]["value"])[0][0] == victim
    # Two adds of 2^64 - 1 cannot be summed into a cart JSON carries (a step, or a check).
    assert b"64-bit" in dead[overflow.encode()]["reason"]
    assert dead[b"(message)"]["value"] == b"not a packed message"
    assert stack.worker.metric("journey_agent_errors_total", agent="journey") >= 3

    # Still taking touchpoints: one more through the whole pipeline.
    later = orjson.dumps(cart_add(f"later-{u}", f"later-{u}", now_ms() - MIN))
    p = kafka(stack)
    p.send(s.topics.touchpoints, key=f"later-{u}".encode(), value=later).get(30)
    p.close()
    assert processed(stack, f"later-{u}")["key"] == f"later-{u}"


# -- 2: event time a client cannot move -------------------------------------------------------


def test_event_times_in_2099_cannot_move_the_watermark(stack: Stack) -> None:
    u = uuid.uuid4().hex[:8]
    s = stack.settings
    n = s.topics.partitions
    users = {}
    for i in range(200):
        users.setdefault(partition_of(f"future-{u}-{i}".encode(), n), f"future-{u}-{i}")
    assert len(users) == n
    future = "2099-12-31T00:00:00Z"
    for user in users.values():
        answer = post(
            stack.url,
            "/v1/track",
            {"userId": user, "event": "Product Viewed", "timestamp": future},
        )
        assert answer.status == 400
        assert "ahead of the time it was received" in answer.body["error"]
    # The same straight onto the topic, as a producer with a broken clock would.
    p = kafka(stack)
    offsets = set()
    for user in users.values():
        event = cart_add(f"{user}-direct", user, contract.parse_timestamp(future))
        meta = p.send(s.topics.touchpoints, key=user.encode(), value=orjson.dumps(event)).get(30)
        offsets.add((meta.partition, meta.offset))
    p.close()

    shopper = f"shopper-{u}"
    added_at = now_ms()
    answer = post(
        stack.url,
        "/v1/track",
        {
            "userId": shopper,
            "event": "Product Added",
            "messageId": f"cart-{u}",
            "timestamp": contract.format_timestamp(added_at),
            "properties": {"sku": "S", "price": 10, "quantity": 1, "cart_id": f"k-{u}"},
        },
    )
    assert answer.status == 200
    processed(stack, shopper)

    def rejected_at_ingest() -> set[tuple[int, int]]:
        found = set()
        for r in stack.dead_letters("ingest"):
            h = dict(r.headers)
            key = (int(h["source_partition"]), int(h["source_offset"]))
            if key in offsets:
                assert b"ahead of the time it was received" in h["reason"]
                found.add(key)
        return found

    wait_for(rejected_at_ingest, lambda found: found == offsets)
    # Every partition's watermark, once it has one, stays behind the wall clock by
    # about the allowed lateness (600 s): the cart's 30 minutes have not begun to pass.
    journey_partition = partition_of(shopper.encode(), n)
    lag = wait_for(
        lambda: stack.worker.metric(
            "journey_watermark_lag_seconds", partition=str(journey_partition)
        ),
        lambda v: v == v and v > 0,  # not NaN (metric served), and behind the wall clock
    )
    assert lag > 60
    state = processed(stack, shopper)
    assert state["settled_until"] < added_at + 30 * MIN
    assert state.get("abandoned", {}) == {}
    triggers = read_topic(stack.bootstrap, s.topics.triggers)
    assert not [r for r in triggers if orjson.loads(r.value).get("customer_id") == shopper], (
        "the cart was declared abandoned"
    )


# -- 1: the POS producer ----------------------------------------------------------------------


def test_a_pos_row_over_the_limits_goes_to_the_rejects_file_cut(settings: Settings) -> None:
    create_topics(settings.broker.bootstrap, {settings.topics.touchpoints: 4})
    name = "n" * 1_500_000
    rows = [
        {
            "store_id": "S1",
            "register": 1,
            "receipt_id": "R1",
            "timestamp": "2024-11-04T09:00:00Z",
            "customer_id": "c-big",
            "items": [{"sku": "A", "name": name, "price": 1, "quantity": 1}],
        },
        {
            "store_id": "S1",
            "register": 1,
            "receipt_id": "R2",
            "timestamp": "2024-11-04T09:01:00Z",
            "customer_id": "c-ok",
            "items": [{"sku": "A", "name": "Mug", "price": 1, "quantity": 1}],
        },
    ]
    export = settings.path(settings.pos.checkpoint).parent / "export.jsonl"
    export.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps(r) for r in rows]
    export.write_bytes(b"\n".join(lines) + b"\n")
    publisher = Publisher(settings.broker)
    try:
        report = PosProducer(settings, publisher).run([export])
    finally:
        publisher.close()
    assert (report.published, report.rejected) == (1, 1)
    (reject,) = [
        orjson.loads(line) for line in settings.path(settings.pos.rejects).read_bytes().splitlines()
    ]
    # A line this long is not even held: streamed past, hashed, a prefix kept.
    assert "longer than 1048576" in reject["reason"]
    assert len(reject["raw"]) <= 64 * 1024
    assert reject["original_bytes"] == str(len(lines[0]))
    assert reject["original_sha256"] == hashlib.sha256(lines[0]).hexdigest()
    (record,) = read_topic(settings.broker.bootstrap, settings.topics.touchpoints)
    assert [tp.customer_id for tp in _touchpoints(record.value)] == ["c-ok"]


# -- anything at all ---------------------------------------------------------------------------

hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["x" * 9000, "2099-12-31T00:00:00Z", "2026-01-01T00:00:00Z"])
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
call_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "identify", "alias", "nope"])},
    optional={
        "userId": st.sampled_from(["u1", "u2"]) | hostile_scalars,
        "anonymousId": st.sampled_from(["a1"]) | hostile_values,
        "event": st.sampled_from(["Product Added", "Product Viewed"]) | hostile_scalars,
        "messageId": hostile_values,
        "timestamp": hostile_scalars,
        "sentAt": hostile_scalars,
        "properties": hostile_values,
        "context": hostile_values,
        "previousId": hostile_scalars,
    },
)
#: A valid call with up to two of its fields replaced by anything.
mutated_calls = st.builds(
    lambda base, over: {**base, **over},
    st.fixed_dictionaries(
        {
            "type": st.just("track"),
            "userId": st.sampled_from(["u1", "u2", "u3"]),
            "event": st.sampled_from(["Product Added", "Product Viewed", "Order Completed"]),
            "properties": st.fixed_dictionaries(
                {"sku": st.just("S"), "price": st.integers(0, 100), "quantity": st.integers(0, 5)}
            ),
        }
    ),
    st.dictionaries(
        st.sampled_from(["userId", "event", "timestamp", "sentAt", "properties", "context"]),
        hostile_values,
        max_size=2,
    ),
)
#: A JSON body: a call, a batch, something else; or its nesting deepened; or any bytes.
bodies = st.one_of(
    mutated_calls.map(lambda c: ("/v1/track", c)),
    call_fields.map(lambda c: ("/v1/track", c)),
    st.lists(mutated_calls | call_fields | hostile_values, max_size=4).map(
        lambda b: ("/v1/batch", {"batch": b})
    ),
    hostile_values.map(lambda v: ("/v1/track", v)),
    st.tuples(st.sampled_from(["/v1/track", "/v1/batch"]), st.binary(max_size=200)),
    st.tuples(st.sampled_from(["/v1/track", "/v1/batch"]), st.integers(20, 700).map(deep)),
)
records = st.one_of(
    st.builds(
        lambda props: _encoded(cart_add("r", "hyp", 1_767_225_600_000, extra=props)),
        st.dictionaries(st.text(max_size=5), hostile_scalars, max_size=3),
    ),
    st.binary(max_size=200),
    hostile_values.map(lambda v: _encoded(v)),
    st.integers(20, 700).map(deep),
    st.builds(
        lambda at, props: _encoded(cart_add("r", "hyp", at, extra=props)),
        st.sampled_from([1_767_225_600_000, 4_102_358_400_000]),  # 2026-01-01, 2099-12-31
        hostile_values,
    ),
)


def _encoded(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return repr(value).encode()


def _body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else _encoded(value)


def test_anything_at_the_collector_and_on_touchpoints_is_answered_dead_lettered_and_survived(
    stack: Stack,
) -> None:
    s = stack.settings
    collector_before = len(stack.dead_letters("collector"))
    expected_collector = 0
    statuses: Counter[int] = Counter()
    p = kafka(stack)
    sends = []
    limits = s.limits
    window = contract.EventTimeWindow.of_seconds(s.journey.max_future_s, s.journey.max_past_s)

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(bodies, records)
    def throw(request: tuple[str, Any], record: bytes) -> None:
        nonlocal expected_collector
        path, body = request
        answer = post(stack.url, path, _body(body))
        statuses[answer.status] += 1
        assert 200 <= answer.status < 300 or 400 <= answer.status < 500, answer
        refused = isinstance(answer.body, dict) and answer.body.get("code") == "invalid_message"
        if answer.status == 400 and refused:
            expected_collector += len(answer.body.get("rejected", [None]))
        sends.append((record, p.send(s.topics.touchpoints, key=b"hyp", value=record)))

    throw()
    expected_ingest: dict[tuple[int, int], int] = {}
    for record, future in sends:
        meta = future.get(30)
        received = meta.timestamp
        items = contract.decode_message(record, limits, received_ms=received, window=window)
        expected_ingest[meta.partition, meta.offset] = sum(
            isinstance(i, contract.Rejected) for i in items
        )
    p.close()

    # The worker still takes a good event, through the collector.
    u = uuid.uuid4().hex[:8]
    good = {"userId": f"good-{u}", "event": "Product Viewed", "messageId": f"good-{u}"}
    assert post(stack.url, "/v1/track", good).status == 200
    processed(stack, f"good-{u}")

    def ingest_letters() -> Counter[tuple[int, int]]:
        found: Counter[tuple[int, int]] = Counter()
        for r in stack.dead_letters("ingest"):
            h = dict(r.headers)
            key = (int(h["source_partition"]), int(h["source_offset"]))
            if key in expected_ingest:
                found[key] += 1
        return found

    wanted = Counter({k: v for k, v in expected_ingest.items() if v})
    wait_for(ingest_letters, lambda found: found == wanted)
    assert len(stack.dead_letters("collector")) - collector_before == expected_collector
    assert statuses[500] == 0 and statuses[503] == 0
    print(
        "STATUSES",
        statuses,
        expected_collector,
        sum(expected_ingest.values()),
        len(expected_ingest),
    )
