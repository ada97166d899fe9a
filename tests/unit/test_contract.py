"""The touchpoint contract: parsing, validation reasons, (de)serialisation, bad input."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream import contract
from stream.contract import (
    CHANNELS,
    INTERNAL_SOURCE,
    INTERNAL_TYPES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    InvalidTouchpoint,
    Rejected,
    Touchpoint,
    decode_message,
    dumps,
    parse,
)
from tests import builders

TS_MS = 1_730_711_730_250  # 2024-11-04T09:15:30.250Z

#: A valid touchpoint object; ``field=None`` removes a field.
event = partial(builders.event, timestamp=TS_MS, anonymous_id="anon-1")


def rejection(obj: Any) -> InvalidTouchpoint:
    with pytest.raises(InvalidTouchpoint) as info:
        parse(obj)
    return info.value


# -- valid input -------------------------------------------------------------


def test_valid_touchpoint_parses_with_every_field() -> None:
    tp = parse(
        event(
            customer_id="c-1",
            properties={"sku": "S-1", "price": 9.5, "quantity": 2},
            context={"timezone": "Europe/Berlin"},
            schema_version=1,
            source="web",
        )
    )
    assert tp == Touchpoint(
        event_id="e-1",
        type="page_view",
        channel="web",
        timestamp=TS_MS,
        customer_id="c-1",
        anonymous_id="anon-1",
        properties={"sku": "S-1", "price": 9.5, "quantity": 2},
        context={"timezone": "Europe/Berlin"},
        schema_version=1,
        source="web",
    )
    assert tp.known_type


@pytest.mark.parametrize(
    "obj",
    [
        event(),
        event(anonymous_id=None, customer_id="c-1"),
        event(anonymous_id=None, channel="pos", properties={"loyalty_id": "L-1", "total": 12}),
        event(anonymous_id=None, channel="email", properties={"email": "A@Example.com"}),
        event(customer_id="c-1", properties={"products": [{"sku": "a"}]}, context={"ip": "x"}),
    ],
)
def test_valid_touchpoints_round_trip(obj: dict[str, Any]) -> None:
    tp = parse(obj)
    assert parse(orjson.loads(dumps(tp))) == tp
    assert contract.loads(dumps(tp)) == tp


def test_integer_ids_become_strings_and_empty_ids_none() -> None:
    tp = parse(event(event_id=42, customer_id=1001, anonymous_id=""))
    assert (tp.event_id, tp.customer_id, tp.anonymous_id) == ("42", "1001", None)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-11-04T09:15:30.250Z", TS_MS),
        ("2024-11-04T09:15:30.250z", TS_MS),
        ("2024-11-04T10:15:30.250+01:00", TS_MS),
        ("2024-11-04T04:15:30.250-05:00", TS_MS),
        ("2024-11-04T09:15:30Z", TS_MS - 250),
        ("2000-01-01T00:00:00Z", MIN_TIMESTAMP_MS),
    ],
)
def test_rfc3339_timestamps(text: str, ms: int) -> None:
    assert parse(event(timestamp=text)).timestamp == ms


@pytest.mark.parametrize(
    ("value", "ms"),
    [(TS_MS, TS_MS), (float(TS_MS), TS_MS), (MIN_TIMESTAMP_MS, MIN_TIMESTAMP_MS)],
)
def test_epoch_millisecond_timestamps(value: int | float, ms: int) -> None:
    assert parse(event(timestamp=value)).timestamp == ms


def test_format_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    assert contract.format_timestamp(TS_MS) == "2024-11-04T09:15:30.250Z"


def test_rfc3339_milliseconds_are_exact() -> None:
    # 2004-08-20T17:08:17.547Z is 1093021697547 ms; float math gives ...546.
    assert contract.parse_timestamp("2004-08-20T17:08:17.547Z") == 1_093_021_697_547


def test_unknown_types_are_kept() -> None:
    tp = parse(event(type="webinar_attended"))
    assert tp.type == "webinar_attended"
    assert not tp.known_type


def test_internal_type_is_accepted_only_from_the_engine() -> None:
    tp = parse(event(type="link", source=INTERNAL_SOURCE, properties={"customer_id": "c"}))
    assert tp.type == "link"


# -- invalid input: a precise reason naming the field ---------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (event(event_id=None), "event_id", "event_id is required"),
        (event(event_id=""), "event_id", "event_id is required"),
        (event(event_id=["e"]), "event_id", "event_id must be a string"),
        (event(event_id="e" * 257), "event_id", "longer than 256"),
        (event(type=None), "type", "type is required"),
        (event(type="   "), "type", "type is required"),
        (event(type="t" * 65), "type", "longer than 64"),
        (event(channel="fax"), "channel", "channel must be one of"),
        (event(channel=None), "channel", "channel must be one of"),
        (event(timestamp=None), "timestamp", "timestamp is required"),
        (event(timestamp=1_730_711_730), "timestamp", "seconds instead of milliseconds"),
        (event(timestamp=1_730_711_730_250_000), "timestamp", "outside 2000..2100"),
        (event(timestamp="yesterday"), "timestamp", "is not RFC 3339"),
        (event(timestamp="2024-11-04T09:15:30"), "timestamp", "no UTC offset"),
        (event(timestamp=True), "timestamp", "epoch milliseconds"),
        (event(timestamp=[TS_MS]), "timestamp", "epoch milliseconds"),
        (event(anonymous_id=None), "customer_id", "customer_id or anonymous_id is required"),
        (
            event(anonymous_id=None, properties={"email": "not-an-address"}),
            "customer_id",
            "customer_id or anonymous_id is required",
        ),
        (event(customer_id=1.5), "customer_id", "customer_id must be a string"),
        (event(anonymous_id={"a": 1}), "anonymous_id", "anonymous_id must be a string"),
        (event(properties=[1]), "properties", "properties must be an object"),
        (event(context="ctx"), "context", "context must be an object"),
        (event(properties={"price": "9.99"}), "properties", "properties.price"),
        (event(properties={"price": True}), "properties", "properties.price"),
        (event(properties={"value": "lots"}), "properties", "properties.value"),
        (event(properties={"quantity": -1}), "properties", "properties.quantity"),
        (event(properties={"quantity": 1.5}), "properties", "properties.quantity"),
        (event(properties={"products": "a,b"}), "properties", "properties.products"),
        (event(schema_version=0), "schema_version", "positive integer"),
        (event(schema_version=2), "schema_version", "newer than this engine"),
        (event(source=7), "source", "source must be a string"),
        (event(type="link"), "type", "reserved for the engine"),
        (event(type="merge", source="web"), "type", "reserved for the engine"),
        (event(type="merge_in"), "type", "reserved for the engine"),
    ],
)
def test_invalid_touchpoints_name_the_field(obj: dict[str, Any], field: str, words: str) -> None:
    exc = rejection(obj)
    assert exc.field == field
    assert words in exc.reason
    assert str(exc) == exc.reason


@pytest.mark.parametrize("obj", [None, 1, "event", [event()], True])
def test_non_object_is_rejected_without_a_field(obj: Any) -> None:
    exc = rejection(obj)
    assert exc.field is None
    assert "must be a JSON object" in exc.reason


def test_first_problem_is_reported() -> None:
    exc = rejection(event(event_id=None, channel="fax"))
    assert exc.field == "event_id"


@pytest.mark.parametrize("channel", [[], {"web": 1}])
def test_unhashable_channel_is_rejected_not_raised(channel: Any) -> None:
    exc = rejection(event(channel=channel))
    assert exc.field == "channel"


# -- decode_message ------------------------------------------------------------------


def test_decode_single_object() -> None:
    (item,) = decode_message(orjson.dumps(event()))
    assert item == parse(event())


def test_decode_invalid_object_keeps_original_bytes() -> None:
    raw = b'{ "event_id": "e-1", "type": "page_view", "channel": "fax" }'
    (item,) = decode_message(raw)
    assert isinstance(item, Rejected)
    assert item.raw == raw
    assert item.index is None
    assert item.field == "channel"
    assert item.kind == "invalid_channel"


def test_decode_array_with_one_bad_element() -> None:
    good1, bad, good2 = event(event_id="a"), event(event_id="b", timestamp=5), event(event_id="c")
    items = list(decode_message(orjson.dumps([good1, bad, good2])))
    assert len(items) == 3
    assert items[0] == parse(good1)
    assert items[2] == parse(good2)
    rej = items[1]
    assert isinstance(rej, Rejected)
    assert rej.index == 1
    assert rej.field == "timestamp"
    assert orjson.loads(rej.raw) == bad


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe{}", b'[{"a": 1}', b"nul"])
def test_decode_invalid_json_keeps_original_bytes(raw: bytes) -> None:
    (item,) = decode_message(raw)
    assert isinstance(item, Rejected)
    assert item.raw == raw
    assert item.index is None
    assert item.field is None
    assert item.kind == "malformed"
    assert item.reason.startswith("not valid JSON")


def test_decode_empty_array_is_rejected() -> None:
    (item,) = decode_message(b"[]")
    assert isinstance(item, Rejected)
    assert item.reason == "empty batch"


def test_decode_array_of_non_objects() -> None:
    items = list(decode_message(b'[1, "x", null]'))
    assert [i.index for i in items if isinstance(i, Rejected)] == [0, 1, 2]
    assert [orjson.loads(i.raw) for i in items if isinstance(i, Rejected)] == [1, "x", None]


# -- properties --------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
#: JSON values within the input limits (integers within signed 64 bits).
valid_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=contract.INT64_MIN, max_value=contract.INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
#: Values the contract's own field names are likely to meet; lists/dicts are left out of
#: "channel" is drawn from text only: unhashable channels have their own test above.
field_values = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_scalars | st.sampled_from(["e", "e-1"]),
        "type": json_values | st.sampled_from([*sorted(INTERNAL_TYPES), "page_view"]),
        "channel": json_scalars | st.sampled_from(sorted(CHANNELS)),
        "timestamp": json_values
        | st.integers(MIN_TIMESTAMP_MS - 10, MAX_TIMESTAMP_MS + 10)
        | st.sampled_from(
            ["2024-11-04T09:15:30Z", "2024-11-04T09:15:30", "0001-01-01T00:00:00+14:00"]
        ),
        "customer_id": json_values,
        "anonymous_id": json_values,
        "properties": json_values
        | st.dictionaries(
            st.sampled_from(
                ["price", "value", "quantity", "products", "items", "loyalty_id", "email"]
            ),
            json_values,
        ),
        "context": json_values,
        "schema_version": json_values,
        "source": json_values | st.just(INTERNAL_SOURCE),
    },
)


@settings(max_examples=200, deadline=None)
@given(json_values | field_values)
def test_parse_raises_only_invalid_touchpoint(value: Any) -> None:
    try:
        tp = parse(value)
    except InvalidTouchpoint as exc:
        assert exc.reason
        return
    assert isinstance(tp, Touchpoint)
    assert tp.channel in CHANNELS
    assert MIN_TIMESTAMP_MS <= tp.timestamp < MAX_TIMESTAMP_MS
    assert tp.customer_id or tp.anonymous_id or contract.alias_ids(tp)


@settings(max_examples=120, deadline=None)
@given(json_values | field_values | st.lists(field_values, max_size=4))
def test_decode_message_of_any_json_never_raises(value: Any) -> None:
    raw = orjson.dumps(value)
    items = list(decode_message(raw))
    if isinstance(value, list) and value:
        assert len(items) == len(value)
        for i, item in enumerate(items):
            if isinstance(item, Rejected):
                assert item.index == i
                assert orjson.loads(item.raw) == value[i]
    else:
        assert len(items) == 1
        if isinstance(items[0], Rejected):
            assert items[0].raw == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"\x00")
@example(b"[" * 2000)
@example(b'{"a": 1e999}')
@example(b'{"a": 99999999999999999999999999}')
def test_decode_message_of_any_bytes_never_raises(raw: bytes) -> None:
    for item in decode_message(raw):
        assert isinstance(item, Touchpoint | Rejected)


ids = st.text(min_size=1, max_size=40).filter(lambda s: s != "")
plain_props = st.dictionaries(
    st.text(max_size=8).filter(
        lambda k: k not in {"price", "value", "revenue", "total", "quantity", "products", "items"}
    ),
    valid_values,
    max_size=4,
)


@st.composite
def touchpoints(draw: st.DrawFn) -> Touchpoint:
    customer_id = draw(st.none() | ids)
    anonymous_id = draw(ids if customer_id is None else st.none() | ids)
    props = draw(plain_props)
    props.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "price": st.floats(-1e6, 1e6) | st.integers(-1000, 1000),
                    "quantity": st.integers(0, 100),
                    "products": st.lists(plain_props, max_size=3),
                },
            )
        )
    )
    type_ = draw(st.sampled_from(sorted(contract.KNOWN_TYPES)) | st.text(min_size=1, max_size=64))
    source = draw(st.none() | st.text(max_size=10))
    if type_ in INTERNAL_TYPES or not type_.strip():
        type_ = "page_view"
    return Touchpoint(
        event_id=draw(ids),
        type=type_,
        channel=draw(st.sampled_from(sorted(CHANNELS))),
        timestamp=draw(st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1)),
        customer_id=customer_id,
        anonymous_id=anonymous_id,
        properties=props,
        context=draw(st.dictionaries(st.text(max_size=8), valid_values, max_size=3)),
        source=source,
    )


@settings(max_examples=120, deadline=None)
@given(touchpoints())
def test_generated_touchpoints_round_trip(tp: Touchpoint) -> None:
    assert parse(orjson.loads(dumps(tp))) == tp
    assert contract.from_trusted(tp.to_dict()) == tp
    (decoded,) = decode_message(dumps(tp))
    assert decoded == tp


@settings(max_examples=300, deadline=None)
@given(st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1))
def test_epoch_ms_survive_format_and_parse_to_within_a_millisecond(ms: int) -> None:
    assert contract.parse_timestamp(contract.format_timestamp(ms)) == ms


def test_groups_round_trip() -> None:
    a, b = parse(event(event_id="a")), parse(event(event_id="b", customer_id="c"))
    raw = contract.dumps_groups([("anon:anon-1", [a]), ("c", [b])])
    assert contract.loads_groups(raw) == [("anon:anon-1", [a]), ("c", [b])]
    assert [parse(d) for d in orjson.loads(contract.dumps_many([a, b]))] == [a, b]


def test_marks_and_packed_groups_are_told_apart() -> None:
    raw = contract.dumps_mark(3, 1_700_000_000_000)
    assert contract.loads_mark(raw) == contract.Mark("source", 3, 1_700_000_000_000)
    relayed = contract.dumps_mark(2, 1_700_000_000_000, contract.LINKS_MARK)
    assert contract.loads_mark(relayed) == contract.Mark("links", 2, 1_700_000_000_000)
    assert contract.loads_mark(contract.dumps_groups([])) is None


def test_a_single_link_object_is_not_a_mark() -> None:
    # journey.links carries single touchpoint objects as well as marks.
    link = parse(event(event_id="l1", properties={"customer_id": "c", "mark": 5}))
    assert contract.loads_mark(contract.dumps(link)) is None
    assert contract.loads_mark(b'{"source": 1}') is None
    assert contract.loads_mark(b'{"source": "x", "mark": 5}') is None
    assert contract.loads_mark(b"{not json") is None


# -- pack_groups ------------------------------------------------------------------


def test_pack_groups_bounds_each_value_and_keeps_every_touchpoint_in_order() -> None:
    from stream.contract import loads_groups, pack_groups

    groups = [
        (
            f"cust-{k}",
            [parse(event(event_id=f"e-{k}-{i}", customer_id=f"cust-{k}")) for i in range(40)],
        )
        for k in range(30)
    ]
    groups.append(
        ("big", [parse(event(event_id=f"big-{i}", customer_id="big")) for i in range(400)])
    )
    values = list(pack_groups(groups, 8 * 1024))
    assert len(values) > 1
    assert all(len(v) <= 8 * 1024 for v in values)
    got: dict[str, list[str]] = {}
    for v in values:
        for key, tps in loads_groups(v):
            got.setdefault(key, []).extend(tp.event_id for tp in tps)
    assert got == {key: [tp.event_id for tp in tps] for key, tps in groups}
    (single,) = pack_groups(groups[:2], 1 << 20)
    assert single == contract.dumps_groups(groups[:2])


def test_pack_groups_with_returns_what_loads_groups_reads() -> None:
    from stream.faust_ext.fastpath import Handoff

    groups = [
        (
            f"cust-{k}",
            [parse(event(event_id=f"e-{k}-{i}", customer_id=f"cust-{k}")) for i in range(40)],
        )
        for k in range(30)
    ]
    packed = list(contract.pack_groups_with(groups, 8 * 1024))
    assert len(packed) > 1
    handoff = Handoff()
    for offset, (value, held) in enumerate(packed):
        assert contract.loads_groups(value) == held
        handoff.put(0, offset, value, held)
    value, held = packed[0]
    assert handoff.take(0, 0, value) == held
    assert handoff.take(0, 0, value) is None  # taken once
    assert handoff.take(0, 1, packed[2][0]) is None  # other bytes at that offset: decode
    assert handoff.take(0, 2, packed[2][0]) == packed[2][1]


@given(
    st.lists(st.text(max_size=300), max_size=60),
    st.integers(min_value=16, max_value=4096),
)
def test_pack_arrays_keeps_every_item_in_order_within_the_limit(
    items: list[str], max_bytes: int
) -> None:
    encoded = [orjson.dumps(item) for item in items]
    values = list(contract.pack_arrays(encoded, max_bytes))
    unpacked = [item for value in values for item in orjson.loads(value)]
    assert unpacked == items
    for value in values:
        # Over the limit only as a lone item that is larger on its own.
        assert len(value) <= max_bytes or len(orjson.loads(value)) == 1


def test_a_large_batch_of_transitions_goes_out_under_the_producer_s_request_limit() -> None:
    # A backlog once gave one partition ~7,800 transitions in one step: 1.17 MB in
    # one message, which the producer refused, and the journey agent stopped.
    from stream.journey.clock import check_messages
    from stream.journey.state import Transition

    transitions = [
        Transition(f"customer-{i:06d}", "consideration", "decision", 1_700_000_000_000 + i, f"e{i}")
        for i in range(10_000)
    ]
    encoded = [orjson.dumps(tr.to_dict()) for tr in transitions]
    assert sum(len(e) for e in encoded) > 1_000_000
    values = list(contract.pack_arrays(encoded))
    assert len(values) > 1
    assert all(len(v) <= contract.MAX_PACKED_BYTES for v in values)
    assert [d["cause_event_id"] for v in values for d in orjson.loads(v)] == [
        tr.cause_event_id for tr in transitions
    ]

    keys = [f"anonymous-{i:040d}" for i in range(30_000)]
    checks = list(check_messages(123, keys))
    assert len(checks) > 1
    assert all(len(c) <= contract.MAX_PACKED_BYTES + 64 for c in checks)
    bodies = [orjson.loads(c) for c in checks]
    assert all(b["watermark"] == 123 for b in bodies)
    assert [k for b in bodies for k in b["keys"]] == keys
