"""Segment calls -> touchpoints: the pure mapping behind the web collector."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import contract
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.producers.segment import derived_event_id, snake_case, to_touchpoint
from stream.settings import CollectorSettings

EVENT_TYPES = CollectorSettings().event_types
RECEIVED_AT = 1_730_710_800_000  # 2024-11-04T09:00:00Z
TS = "2024-11-04T10:15:30.250+01:00"
TS_MS = 1_730_711_730_250


def call(type_: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": type_,
        "messageId": "m-1",
        "anonymousId": "anon-1",
        "timestamp": TS,
    }
    message.update(fields)
    return {k: v for k, v in message.items() if v is not None}


def mapped(message: dict[str, Any], source: str = "web") -> Touchpoint:
    return to_touchpoint(
        message, source=source, event_types=EVENT_TYPES, received_at_ms=RECEIVED_AT
    )


@pytest.mark.parametrize(
    ("event", "type_"),
    [
        ("Products Searched", "search"),
        ("Product Viewed", "product_view"),
        ("Product Added", "add_to_cart"),
        ("Product Removed", "remove_from_cart"),
        ("Checkout Started", "checkout_started"),
        ("Order Completed", "purchase"),
        ("Order Refunded", "return"),
    ],
)
def test_ecommerce_events_map_to_touchpoint_types(event: str, type_: str) -> None:
    tp = mapped(call("track", event=event, userId="c-1", properties={"sku": "SKU-1"}))
    assert tp.type == type_
    assert tp.event_id == "m-1"
    assert tp.customer_id == "c-1"
    assert tp.anonymous_id == "anon-1"
    assert tp.channel == "web"
    assert tp.source == "web"
    assert tp.timestamp == TS_MS
    assert tp.properties["sku"] == "SKU-1"


@pytest.mark.parametrize(
    ("event", "type_"),
    [
        ("Video Played", "video_played"),
        ("wishlistShared", "wishlist_shared"),
        ("  Coupon   Entered!  ", "coupon_entered"),
        ("HTMLExport Done", "html_export_done"),
        ("Añadido al carrito", "añadido_al_carrito"),
    ],
)
def test_unmapped_event_is_kept_as_snake_case_type(event: str, type_: str) -> None:
    tp = mapped(call("track", event=event))
    assert tp.type == type_
    assert not tp.known_type


def test_track_without_event_name_is_rejected() -> None:
    with pytest.raises(InvalidTouchpoint, match="event name") as exc:
        mapped(call("track"))
    assert exc.value.field == "event"
    with pytest.raises(InvalidTouchpoint, match="no letters or digits"):
        mapped(call("track", event="!!!"))


def test_page_and_screen_are_page_views() -> None:
    page = mapped(
        call(
            "page",
            name="Pricing",
            category="Docs",
            properties={"url": "https://shop.example/pricing", "title": "Pricing"},
            context={
                "userAgent": "Mozilla/5.0",
                "ip": "203.0.113.9",
                "locale": "de-DE",
                "timezone": "Europe/Berlin",
                "page": {"url": "https://shop.example/pricing", "referrer": "https://t.co/x"},
                "campaign": {"name": "spring", "source": "newsletter", "utmContent": "hero"},
                "library": {"name": "analytics.js", "version": "4.1"},
            },
        )
    )
    assert (page.type, page.channel) == ("page_view", "web")
    assert page.properties == {
        "url": "https://shop.example/pricing",
        "title": "Pricing",
        "name": "Pricing",
        "category": "Docs",
    }
    assert page.context == {
        "user_agent": "Mozilla/5.0",
        "ip": "203.0.113.9",
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
        "page_url": "https://shop.example/pricing",
        "page_referrer": "https://t.co/x",
        "campaign": {"name": "spring", "source": "newsletter", "utm_content": "hero"},
        "library": "analytics.js",
    }
    screen = mapped(call("screen", name="Home"))
    assert (screen.type, screen.channel) == ("page_view", "app")


@pytest.mark.parametrize(
    "context",
    [
        {"library": {"name": "analytics-ios", "version": "4.1"}},
        {"library": {"name": "analytics-android"}},
        {"library": {"name": "@segment/analytics-react-native"}},
        {"device": {"type": "ios", "model": "iPhone15,2"}},
        {"device": {"type": "Android"}},
    ],
)
def test_mobile_sdks_and_devices_are_channel_app(context: dict[str, Any]) -> None:
    assert mapped(call("track", event="Product Viewed", context=context)).channel == "app"


def test_server_side_library_is_channel_web() -> None:
    tp = mapped(
        call("track", event="Order Completed", context={"library": {"name": "analytics-python"}})
    )
    assert tp.channel == "web"


def test_identify_keeps_traits_and_lifts_the_ones_the_engine_uses() -> None:
    traits = {
        "email": "Ada@Example.com",
        "firstName": "Ada",
        "last_name": "Lovelace",
        "loyalty_id": 4242,
        "phone": "+44 20 7946 0000",
        "timezone": "Europe/London",
        "plan": "gold",
    }
    tp = mapped(call("identify", userId="c-7", traits=traits))
    assert tp.type == "identify"
    assert tp.customer_id == "c-7"
    assert tp.anonymous_id == "anon-1"
    assert tp.properties == {
        "traits": traits,
        "email": "Ada@Example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "loyalty_id": "4242",
        "phone": "+44 20 7946 0000",
        "timezone": "Europe/London",
    }
    # The lifted email and loyalty id are identity aliases for the ingest agent.
    assert contract.alias_ids(tp) == ["loyalty:4242", "email:ada@example.com"]


def test_identify_with_non_object_traits_is_rejected() -> None:
    with pytest.raises(InvalidTouchpoint, match="traits must be an object"):
        mapped(call("identify", userId="c-7", traits=["x"]))


def test_alias_links_previous_id_to_user_id() -> None:
    tp = mapped(call("alias", anonymousId=None, previousId="anon-9", userId="c-9"))
    assert tp.type == "alias"
    assert tp.customer_id == "c-9"
    assert tp.anonymous_id == "anon-9"
    assert tp.properties == {"previous_id": "anon-9"}
    assert tp.routing_key == "anon-9"


def test_alias_to_itself_has_no_anonymous_id() -> None:
    tp = mapped(call("alias", anonymousId=None, previousId="c-9", userId="c-9"))
    assert tp.anonymous_id is None
    assert tp.customer_id == "c-9"


@pytest.mark.parametrize(
    ("fields", "needs"),
    [({"userId": "c-1"}, "previousId"), ({"previousId": "anon-1"}, "userId")],
)
def test_alias_needs_both_ids(fields: dict[str, Any], needs: str) -> None:
    with pytest.raises(InvalidTouchpoint, match=needs):
        mapped(call("alias", anonymousId=None, **fields))


def test_group_is_kept_as_an_unknown_type() -> None:
    tp = mapped(call("group", userId="c-1", groupId=77, traits={"name": "Acme"}))
    assert tp.type == "group"
    assert not tp.known_type
    assert tp.properties == {"group_id": "77", "traits": {"name": "Acme"}}


def test_unknown_call_type_is_rejected() -> None:
    with pytest.raises(InvalidTouchpoint, match="type must be one of") as exc:
        mapped(call("purchase"))
    assert exc.value.field == "type"


def test_ecommerce_properties_are_normalised() -> None:
    props = {
        "orderId": 1001,
        "cart_id": " cart-5 ",
        "revenue": "59.90",
        "total": 64,
        "currency": "eur",
        "coupon": "SPRING",
        "products": [
            {"productId": 17, "sku": "SKU-17", "name": "Mug", "price": "9.95", "quantity": "2"},
            {"sku": 99, "name": 12, "price": 40, "quantity": 1.0},
        ],
    }
    tp = mapped(call("track", event="Order Completed", userId="c-1", properties=props))
    assert tp.properties == {
        "order_id": "1001",
        "cart_id": "cart-5",
        "revenue": 59.9,
        "total": 64,
        "currency": "EUR",
        "coupon": "SPRING",
        "products": [
            {"product_id": "17", "sku": "SKU-17", "name": "Mug", "price": 9.95, "quantity": 2},
            {"sku": "99", "name": "12", "price": 40, "quantity": 1},
        ],
    }


def test_single_product_event_properties_are_normalised() -> None:
    props = {"product_id": 5, "sku": "SKU-5", "price": "3.50", "quantity": "3", "value": None}
    tp = mapped(call("track", event="Product Added", properties=props))
    assert tp.properties == {"product_id": "5", "sku": "SKU-5", "price": 3.5, "quantity": 3}


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"price": "cheap"}, "properties.price must be a finite number"),
        ({"revenue": "NaN"}, "properties.revenue must be a finite number"),
        ({"quantity": -1}, "properties.quantity must be a non-negative integer"),
        ({"quantity": 1.5}, "properties.quantity must be a non-negative integer"),
        ({"quantity": True}, "properties.quantity must be a"),
        ({"products": {"sku": "x"}}, "properties.products must be an array"),
        ({"products": ["SKU-1"]}, r"properties.products\[0\] must be an object"),
        ({"products": [{"sku": "a"}, {"price": "?"}]}, r"properties.products\[1\].price"),
        ({"sku": ["a"]}, "properties.sku must be text or an integer"),
        ({"currency": 978}, "properties.currency must be an ISO 4217 code"),
    ],
)
def test_bad_ecommerce_values_are_rejected_with_a_reason(
    props: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidTouchpoint, match=reason):
        mapped(call("track", event="Product Added", properties=props))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": "2024-11-04T09:00:00Z"}, 1_730_710_800_000),
        ({"timestamp": "2024-11-04T09:00:00.123456+00:00"}, 1_730_710_800_123),
        ({"timestamp": "2024-11-04T04:00:00-05:00"}, 1_730_710_800_000),
        ({"timestamp": 1_730_710_800_500}, 1_730_710_800_500),
        ({"timestamp": None, "originalTimestamp": "2024-11-04T09:00:01Z"}, 1_730_710_801_000),
        # With sentAt, corrected for clock skew: receivedAt - (sentAt - originalTimestamp).
        (
            {"timestamp": None, "originalTimestamp": "2024-11-04T09:00:01Z", "sentAt": TS},
            RECEIVED_AT - (TS_MS - 1_730_710_801_000),
        ),
        ({"timestamp": None, "sentAt": "2024-11-04T09:00:02Z"}, RECEIVED_AT),
        ({"timestamp": None}, RECEIVED_AT),
    ],
)
def test_event_time_from_rfc3339_in_epoch_ms(fields: dict[str, Any], expected: int) -> None:
    assert mapped(call("track", event="Product Viewed", **fields)).timestamp == expected


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2024-11-04T09:00:00"}, "timestamp"),
        (
            {"timestamp": None, "originalTimestamp": "0001-01-01T00:00:00+01:00"},
            "originalTimestamp",
        ),
        ({"timestamp": 1_730_710_800}, "timestamp"),
    ],
)
def test_bad_event_time_names_the_segment_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTouchpoint) as exc:
        mapped(call("track", event="Product Viewed", **fields))
    assert exc.value.field == field
    assert exc.value.reason.startswith(f"{field}: ") or field in exc.value.reason


def test_missing_message_id_gets_a_stable_derived_id() -> None:
    first = call("track", messageId=None, event="Product Added", sentAt="2024-11-04T09:00:05Z")
    retry = dict(first, sentAt="2024-11-04T09:00:09Z", writeKey="k")
    other = dict(first, event="Product Removed")
    a, b, c = mapped(first), mapped(retry), mapped(other)
    assert a.event_id.startswith("segment:")
    assert a.event_id == b.event_id == derived_event_id(first, "web")
    assert c.event_id != a.event_id
    assert mapped(first, source="ios-app").event_id != a.event_id


def test_ids_may_be_numbers() -> None:
    tp = mapped(call("track", event="Product Viewed", userId=123, anonymousId=None, messageId=9))
    assert (tp.customer_id, tp.anonymous_id, tp.event_id) == ("123", None, "9")


def test_call_without_any_id_is_rejected_by_the_contract() -> None:
    with pytest.raises(InvalidTouchpoint, match="customer_id or anonymous_id is required"):
        mapped(call("track", event="Product Viewed", anonymousId=None))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"userId": ["c"]}, "userId"),
        ({"anonymousId": {"id": 1}}, "anonymousId"),
        ({"messageId": 1.5}, "messageId"),
        ({"context": "web"}, "context"),
        ({"properties": []}, "properties"),
    ],
)
def test_mistyped_fields_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidTouchpoint) as exc:
        mapped(call("track", event="Product Viewed", **fields))
    assert exc.value.field == field


def test_reserved_engine_types_cannot_be_sent() -> None:
    with pytest.raises(InvalidTouchpoint, match="reserved"):
        mapped(call("track", event="Merge"))


def test_touchpoint_round_trips_through_the_contract() -> None:
    tp = mapped(call("track", event="Product Added", properties={"sku": "S", "price": 2.5}))
    assert contract.loads(contract.dumps(tp)) == tp


def test_snake_case() -> None:
    assert snake_case("Order Completed") == "order_completed"
    assert snake_case("checkout-step_viewed") == "checkout_step_viewed"
    assert snake_case("userSignedUp2FA") == "user_signed_up2_fa"


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
segment_keys = st.sampled_from(
    [
        "type", "event", "messageId", "userId", "anonymousId", "previousId", "groupId",
        "timestamp", "originalTimestamp", "sentAt", "context", "properties", "traits", "name",
    ]
)  # fmt: skip
plausible_values = st.one_of(
    json_values,
    st.sampled_from(["track", "page", "screen", "identify", "alias", "group"]),
    st.sampled_from(list(EVENT_TYPES)),
    st.sampled_from(["2024-11-04T09:00:00Z", "9999-12-31T23:59:59-23:59", "0", "1e400"]),
    st.fixed_dictionaries(
        {},
        optional={
            "sku": json_values,
            "price": json_values,
            "quantity": json_values,
            "currency": json_values,
            "products": st.lists(
                st.dictionaries(st.sampled_from(["sku", "price", "quantity"]), json_values)
            ),
            "library": st.dictionaries(st.just("name"), json_values),
            "device": st.dictionaries(st.just("type"), json_values),
            "campaign": json_values,
            "email": json_values,
        },
    ),
)


valid_calls = st.sampled_from(
    [
        call("track", event="Product Added", properties={"sku": "S", "price": 1, "quantity": 1}),
        call("track", event="Order Completed", userId="c", properties={"products": [{"sku": "S"}]}),
        call("page", name="Home", context={"page": {"url": "https://x"}}),
        call("screen", name="Home"),
        call("identify", userId="c", traits={"email": "a@b.c"}),
        call("alias", previousId="anon-1", userId="c"),
        call("group", groupId="g", userId="c"),
    ]
)
perturbed_calls = st.builds(
    lambda base, changes: {**base, **changes},
    valid_calls,
    st.dictionaries(segment_keys, plausible_values, max_size=3),
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.dictionaries(st.text(max_size=12), json_values, max_size=8),
        st.dictionaries(segment_keys, plausible_values, max_size=10),
        perturbed_calls,
    )
)
def test_arbitrary_json_raises_only_invalid_touchpoint(message: dict[str, Any]) -> None:
    try:
        tp = mapped(message)
    except InvalidTouchpoint as exc:
        assert exc.reason
        return
    # Whatever got through is a valid, serialisable touchpoint.
    assert contract.loads(contract.dumps(tp)) == tp


@given(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
def test_non_object_calls_are_rejected(message: Any) -> None:
    with pytest.raises(InvalidTouchpoint, match="must be a JSON object"):
        mapped(message)
