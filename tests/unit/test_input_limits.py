"""The input rule: limits, the event-time window and bounded dead letters, pure.

Every entry point (collector, POS producer, ingest) applies these through
``stream.contract``; hostile input must end as ``InvalidTouchpoint`` (or a
``Rejected``), never as another exception, and nothing accepted may fail later
when it is encoded, packed or summed into a journey.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream import contract
from stream.contract import (
    DEFAULT_LIMITS,
    EventTimeWindow,
    InvalidTouchpoint,
    Rejected,
    Touchpoint,
    check_value,
    decode_message,
    parse,
)
from stream.producers.segment import event_time, to_touchpoint
from stream.settings import CollectorSettings, load_settings
from tests import builders

T0 = 1_796_601_600_000  # 2026-12-07T00:00:00Z

event = partial(builders.event, type="add_to_cart", timestamp=T0, anonymous_id="anon-1")
Y2099 = "2099-12-31T00:00:00Z"


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def rejected(obj: Any) -> InvalidTouchpoint:
    with pytest.raises(InvalidTouchpoint) as info:
        parse(obj)
    return info.value


# -- each limit ------------------------------------------------------------------


@pytest.mark.parametrize("levels", [32, 252, 600, 5000])
def test_nesting_past_the_depth_limit_is_rejected_without_recursion_errors(levels: int) -> None:
    exc = rejected(event(properties=nested(levels)))
    assert exc.limit == "depth"
    assert exc.field == "properties"
    assert "nested deeper than 32 levels" in exc.reason


def test_nesting_within_the_limit_is_kept() -> None:
    tp = parse(event(properties=nested(30)))
    assert contract.dumps(tp)


@pytest.mark.parametrize(
    ("properties", "limit"),
    [
        ({"quantity": 18_446_744_073_709_551_615, "sku": "S", "price": 1}, "number"),
        ({"n": 2**63}, "number"),
        ({"n": -(2**63) - 1}, "number"),
        ({"n": float("nan")}, "number"),
        ({"n": [float("inf")]}, "number"),
        ({"name": "x" * 8193}, "string"),
        ({"k" * 257: 1}, "key"),
        ({f"k{i}": i for i in range(257)}, "keys"),
        ({"products": list(range(1001))}, "items"),
        ({"n": {1, 2}}, "type"),
        ({"n": b"bytes"}, "type"),
        ({"n": "\ud800"}, "type"),
        ({"quantity": contract.MAX_QUANTITY + 1}, "number"),
        ({"price": 1e300}, "number"),
        ({"products": [{"sku": "S", "quantity": 2**40}]}, "number"),
    ],
)
def test_each_limit_names_itself(properties: dict[str, Any], limit: str) -> None:
    exc = rejected(event(properties=properties))
    assert exc.limit == limit
    assert Rejected.of(exc, b"").kind == f"limit_{limit}"


def test_integers_at_the_edges_of_64_bits_are_kept() -> None:
    tp = parse(event(properties={"a": contract.INT64_MAX, "b": contract.INT64_MIN}))
    assert orjson.loads(contract.dumps(tp))["properties"]["a"] == contract.INT64_MAX


def test_an_event_over_the_size_limit_is_rejected_and_one_under_it_kept() -> None:
    limits = replace(DEFAULT_LIMITS, max_string_chars=100_000)
    big = event(properties={"note": "x" * (32 * 1024)})
    with pytest.raises(InvalidTouchpoint) as info:
        parse(big, limits)
    assert info.value.limit == "event_size"
    assert "over the 32768-byte limit" in info.value.reason
    fits = event(properties={"note": "x" * (31 * 1024)})
    assert parse(fits, limits).properties["note"] == fits["properties"]["note"]


def test_limits_are_settings() -> None:
    settings = load_settings(
        environ={"JOURNEY_LIMITS_MAX_DEPTH": "4", "JOURNEY_JOURNEY_MAX_FUTURE_S": "60"}
    )
    assert settings.limits.max_depth == 4
    assert settings.journey.max_future_s == 60.0
    with pytest.raises(InvalidTouchpoint, match="deeper than 4"):
        parse(event(properties=nested(4)), settings.limits)


def test_the_depth_ceiling_holds_whatever_the_setting() -> None:
    limits = replace(DEFAULT_LIMITS, max_depth=100_000)
    with pytest.raises(InvalidTouchpoint) as info:
        check_value(nested(20_000), limits)
    assert info.value.limit == "depth"


# -- messages and dead letters ---------------------------------------------------------


def test_a_message_over_the_size_limit_is_one_rejection_of_its_bytes() -> None:
    raw = contract.dumps(parse(event())) + b" " * (1024 * 1024)
    (item,) = decode_message(raw)
    assert isinstance(item, Rejected)
    assert item.kind == "limit_message_size"
    assert item.raw == raw


def test_a_megabyte_of_invalid_json_is_one_malformed_rejection() -> None:
    raw = b"{" + b"x" * (10**6 - 1)
    (item,) = decode_message(raw)
    assert isinstance(item, Rejected) and item.kind == "malformed"
    value, headers = contract.dead_letter(item.raw, DEFAULT_LIMITS.dead_letter_bytes)
    assert value == raw[: 64 * 1024]
    assert headers == {
        "truncated": b"prefix",
        "original_bytes": b"1000000",
        "original_sha256": hashlib.sha256(raw).hexdigest().encode(),
    }


def test_a_dead_letter_that_fits_is_the_bytes_alone() -> None:
    assert contract.dead_letter(b"abc", 3) == (b"abc", {})


def test_an_element_too_deep_to_encode_is_dead_lettered_cut_at_the_depth_limit() -> None:
    deep = event(event_id="deep", properties=nested(300))
    good = event(event_id="good")
    items = list(decode_message(b"[" + orjson.dumps(good) + b"," + _deep_json(deep) + b"]"))
    assert isinstance(items[0], Touchpoint)
    bad = items[1]
    assert isinstance(bad, Rejected) and bad.index == 1 and bad.kind == "limit_depth"
    kept = orjson.loads(bad.raw)
    assert kept["event_id"] == "deep"
    assert "..." in bad.raw.decode()


def _deep_json(obj: dict[str, Any]) -> bytes:
    """JSON of ``obj`` whose properties are nested past what orjson encodes (built by hand)."""
    props = obj.pop("properties")
    depth = 0
    while isinstance(props, dict):
        props, depth = props["a"], depth + 1
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return orjson.dumps(obj)[:-1] + b',"properties":' + inner + b"}"


def test_event_time_is_checked_against_the_receive_time_for_outside_events_only() -> None:
    window = EventTimeWindow.of_seconds(300)
    future = contract.dumps(parse(event(timestamp=T0 + 301_000)))
    (item,) = decode_message(future, received_ms=T0, window=window)
    assert isinstance(item, Rejected) and item.kind == "limit_event_time"
    assert "301 s ahead" in item.reason
    (item,) = decode_message(future, received_ms=T0 + 1000, window=window)
    assert isinstance(item, Touchpoint)
    internal = replace(parse(event(timestamp=T0 + 10**9)), source=contract.INTERNAL_SOURCE)
    (item,) = decode_message(contract.dumps(internal), received_ms=T0, window=window)
    assert isinstance(item, Touchpoint)


def test_the_past_horizon_is_off_by_default_and_applies_when_set() -> None:
    EventTimeWindow.of_seconds(300).check(T0 - 10 * 365 * 86_400_000, T0)
    with pytest.raises(InvalidTouchpoint, match="before the time it was received"):
        EventTimeWindow.of_seconds(300, 86_400).check(T0 - 86_400_001, T0)


# -- Segment calls -------------------------------------------------------------------

EVENT_TYPES = CollectorSettings().event_types


def call(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "userId": "u", "event": "Product Viewed"}
    message.update(fields)
    return message


def mapped(message: dict[str, Any], **kw: Any) -> Touchpoint:
    return to_touchpoint(message, source="web", event_types=EVENT_TYPES, received_at_ms=T0, **kw)


def test_a_client_clock_years_ahead_is_corrected_with_sent_at() -> None:
    # The device thinks it is 2099; it queued the event 5 s before sending.
    message = call(timestamp="2099-12-31T00:00:00Z", sentAt="2099-12-31T00:00:05Z")
    assert event_time(message, T0) == T0 - 5000
    window = EventTimeWindow.of_seconds(300)
    assert mapped(message, window=window).timestamp == T0 - 5000


def test_a_future_time_without_sent_at_is_refused_at_the_collector() -> None:
    window = EventTimeWindow.of_seconds(300)
    with pytest.raises(InvalidTouchpoint) as info:
        mapped(call(timestamp=Y2099), window=window)
    assert info.value.limit == "event_time"
    assert info.value.field == "timestamp"


def test_a_call_is_held_to_the_limits_before_it_is_mapped() -> None:
    with pytest.raises(InvalidTouchpoint) as info:
        mapped(call(properties=nested(600), messageId="m"))
    assert info.value.limit == "depth"
    with pytest.raises(InvalidTouchpoint) as info:
        mapped(call(event="Product Added", properties={"quantity": 18_446_744_073_709_551_615}))
    assert info.value.limit == "number"


# -- anything at all -------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)
shapes = st.builds(lambda props, depth: nested(depth, props), values, st.integers(0, 80))


@settings(max_examples=200, deadline=None)
@given(shapes)
@example({"a": [float("nan")]})
@example({"a": 2**64})
def test_parse_of_anything_raises_only_invalid_touchpoint_and_keeps_only_what_encodes(
    props: Any,
) -> None:
    try:
        tp = parse(event(properties=props, context={"x": props}))
    except InvalidTouchpoint as exc:
        assert exc.limit is None or exc.limit in contract.LIMITS
        return
    encoded = contract.dumps(tp)
    assert len(encoded) <= DEFAULT_LIMITS.max_event_bytes
    assert contract.loads_groups(contract.dumps_groups([("k", [tp])]))[0][1][0] == tp


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return repr(value).encode()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | values.map(lambda v: _json(v)))
@example(b"[" * 1024 + b"]" * 1024)
@example(b'[{"a":' * 300 + b"1" + b"}" * 300 + b"]")
def test_decode_message_of_anything_yields_only_bounded_results(raw: bytes) -> None:
    for item in decode_message(raw, received_ms=T0, window=EventTimeWindow(300_000)):
        assert isinstance(item, Touchpoint | Rejected)
        if isinstance(item, Rejected):
            assert item.kind.startswith(("limit_", "invalid_", "malformed"))
            value, _ = contract.dead_letter(item.raw, DEFAULT_LIMITS.dead_letter_bytes)
            assert len(value) <= DEFAULT_LIMITS.dead_letter_bytes
