"""POS export rows -> touchpoints: the pure row mapping (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import contract
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.producers.pos.rows import pos_event_id, row_to_touchpoint


def sale(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "store_id": "berlin-01",
        "register": "2",
        "receipt_id": "B1-000103",
        "timestamp": "2024-11-04T09:41:57+01:00",
        "customer_id": "cust-1001",
        "loyalty_id": "",
        "email": "",
        "items": "SKU-MUG:2:8.50:Stoneware mug;SKU-TEA:1:6.90",
        "total": "",
        "currency": "",
        "kind": "",
    }
    row.update(overrides)
    return row


def to_tp(row: dict[str, Any], currency: str = "EUR") -> Touchpoint:
    return row_to_touchpoint(row, default_currency=currency)


def reason(row: dict[str, Any]) -> str:
    with pytest.raises(InvalidTouchpoint) as err:
        to_tp(row)
    return err.value.reason


def test_sale_becomes_pos_purchase_with_products_and_summed_value() -> None:
    tp = to_tp(sale())
    assert tp.type == "pos_purchase"
    assert tp.channel == "pos"
    assert tp.event_id == "pos:berlin-01:2:B1-000103:sale"
    assert tp.timestamp == 1_730_709_717_000
    assert tp.customer_id == "cust-1001"
    assert tp.routing_key == "cust-1001"
    assert dict(tp.properties) == {
        "store_id": "berlin-01",
        "register": "2",
        "order_id": "B1-000103",
        "products": [
            {"sku": "SKU-MUG", "name": "Stoneware mug", "price": 8.5, "quantity": 2},
            {"sku": "SKU-TEA", "name": "SKU-TEA", "price": 6.9, "quantity": 1},
        ],
        "value": 23.9,
        "currency": "EUR",
    }


def test_refund_becomes_return_with_positive_amounts() -> None:
    tp = to_tp(sale(kind="refund", items="SKU-MUG:-1:8.50", total="-8.50"))
    assert tp.type == "return"
    assert tp.event_id == "pos:berlin-01:2:B1-000103:refund"
    assert tp.properties["products"] == [
        {"sku": "SKU-MUG", "name": "SKU-MUG", "price": 8.5, "quantity": 1}
    ]
    assert tp.properties["value"] == 8.5


def test_type_column_and_case_are_accepted_for_the_kind() -> None:
    assert to_tp({**sale(), "kind": None, "type": "Refund"}).type == "return"
    assert to_tp({**sale(), "kind": "SALE"}).type == "pos_purchase"


def test_sale_and_refund_of_one_receipt_have_distinct_ids() -> None:
    assert to_tp(sale()).event_id != to_tp(sale(kind="refund")).event_id


def test_event_id_is_deterministic_so_resends_deduplicate() -> None:
    first = to_tp(sale())
    again = to_tp(sale(customer_id="cust-1001", total="23.90"))
    assert first.event_id == again.event_id
    assert contract.dumps(first) == contract.dumps(to_tp(sale()))


def test_event_id_escapes_colons_inside_ids() -> None:
    assert pos_event_id("a:b", "c", "d", "sale") != pos_event_id("a", "b:c", "d", "sale")
    assert to_tp(sale(store_id="a:b")).event_id == "pos:a%3Ab:2:B1-000103:sale"


def test_json_items_from_json_lines() -> None:
    items = [
        {"sku": "LAMP", "name": "Desk lamp", "price": 39.9, "quantity": 1},
        {"sku": "BULB", "name": "LED bulb", "price": 4.5, "quantity": 2},
    ]
    tp = to_tp(sale(items=items, total=None, timestamp=1_730_709_717_000))
    assert tp.properties["products"] == items
    assert tp.properties["value"] == 48.9


def test_json_array_text_in_a_csv_cell() -> None:
    tp = to_tp(sale(items='[{"sku": "LAMP", "price": "39.90", "quantity": "1"}]'))
    assert tp.properties["products"] == [
        {"sku": "LAMP", "name": "LAMP", "price": 39.9, "quantity": 1}
    ]


def test_total_wins_over_the_sum_of_items() -> None:
    tp = to_tp(sale(total="20.00"))  # a discount: items sum to 23.90
    assert tp.properties["value"] == 20.0


def test_total_alone_without_items() -> None:
    tp = to_tp(sale(items="", total="12.5"))
    assert tp.properties["products"] == []
    assert tp.properties["value"] == 12.5


def test_aliases_order_id_and_loyalty_card() -> None:
    row = sale(receipt_id=None, customer_id="", loyalty_id=None)
    row.update(order_id="O-77", loyalty_card="LC-9")
    tp = to_tp(row)
    assert tp.event_id == "pos:berlin-01:2:O-77:sale"
    assert tp.properties["order_id"] == "O-77"
    assert tp.properties["loyalty_id"] == "LC-9"
    assert tp.customer_id is None
    assert tp.routing_key == "loyalty:LC-9"


def test_email_only_is_lowercased_and_keys_the_event() -> None:
    tp = to_tp(sale(customer_id="", email=" Anna.Schmidt@Example.com "))
    assert tp.properties["email"] == "anna.schmidt@example.com"
    assert tp.routing_key == "email:anna.schmidt@example.com"


def test_epoch_milliseconds_as_text_and_number() -> None:
    assert to_tp(sale(timestamp="1730710800000")).timestamp == 1_730_710_800_000
    assert to_tp(sale(timestamp=1_730_710_800_000)).timestamp == 1_730_710_800_000


def test_currency_default_and_normalisation() -> None:
    assert to_tp(sale(), currency="GBP").properties["currency"] == "GBP"
    assert to_tp(sale(currency="usd")).properties["currency"] == "USD"


def test_column_names_are_matched_case_insensitively() -> None:
    row = {k.upper(): v for k, v in sale().items()}
    assert to_tp(row).event_id == "pos:berlin-01:2:B1-000103:sale"


def test_integer_ids_from_json_become_text() -> None:
    tp = to_tp(sale(store_id=12, register=3, receipt_id=991, customer_id=42))
    assert tp.event_id == "pos:12:3:991:sale"
    assert tp.customer_id == "42"


def test_result_passes_the_contract() -> None:
    tp = to_tp(sale(email="a@b.c", loyalty_id="L1"))
    assert contract.loads(contract.dumps(tp)) == tp


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (sale(store_id=""), "store_id is required"),
        (sale(register=None), "register is required"),
        (sale(receipt_id=""), "receipt_id (or order_id) is required"),
        (sale(timestamp=""), "timestamp is required"),
        (sale(timestamp="yesterday"), "timestamp 'yesterday' is not RFC 3339"),
        (sale(timestamp="2024-11-04T09:41:57"), "timestamp has no UTC offset"),
        (sale(timestamp="1730710800"), "outside 2000..2100 (seconds instead of milliseconds?)"),
        (
            sale(customer_id="", loyalty_id="", email=""),
            "no customer identifier: one of customer_id, loyalty_id (loyalty_card) or email",
        ),
        (sale(email="not-an-email"), "email 'not-an-email' is not an email address"),
        (sale(items="SKU-MUG:2"), "items[0] 'SKU-MUG:2' is not SKU:QTY:PRICE[:NAME]"),
        (sale(items="A:1:2;B:two:3"), "items[1] (B) quantity 'two' is not a whole number"),
        (sale(items="A:1.5:2"), "items[0] (A) quantity '1.5' is not a whole number"),
        (sale(items="A:1:cheap"), "items[0] (A) price 'cheap' is not a number"),
        (sale(items="A:0:2"), "items[0] (A) quantity must be positive, got 0"),
        (sale(items="A:1:-2"), "items[0] (A) price must not be negative"),
        (sale(items=":1:2"), "items[0] has no sku"),
        (sale(items='[{"sku": "A", "price": 1'), "items is not a valid JSON array"),
        (sale(items='["A"]'), "items[0] must be an object"),
        (sale(items=[{"sku": "A"}]), "items[0] (A) has no price"),
        (sale(items={"sku": "A"}), "items must be an array"),
        (sale(total="lots"), "total 'lots' is not a number"),
        (sale(total="-5"), "total must not be negative for a sale (use kind=refund)"),
        (sale(items="", total=""), "total is required when there are no items"),
        (sale(kind="exchange"), "kind must be sale or refund, got 'exchange'"),
        (sale(currency="EURO"), "currency 'EURO' is not a 3-letter code like EUR"),
    ],
)
def test_malformed_rows_name_the_problem(row: dict[str, Any], expected: str) -> None:
    assert expected in reason(row)


def test_the_first_problem_is_reported() -> None:
    assert reason(sale(store_id="", timestamp="bad")) == "store_id is required"


ROW_FIELDS = (
    "store_id",
    "register",
    "receipt_id",
    "order_id",
    "timestamp",
    "customer_id",
    "loyalty_id",
    "email",
    "items",
    "total",
    "currency",
    "kind",
)
_cells = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", "2024-01-01T00:00:00Z", "1730710800000", "A:1:2", "a@b.c", "refund"]),
    st.integers(),
    st.floats(),
    st.lists(st.dictionaries(st.sampled_from(["sku", "price", "quantity", "name"]), st.text())),
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={name: _cells for name in ROW_FIELDS},
    )
)
def test_any_row_maps_or_fails_with_a_reason(row: dict[str, Any]) -> None:
    try:
        tp = to_tp(row)
    except InvalidTouchpoint as exc:
        assert exc.reason
    else:
        assert tp.event_id.startswith("pos:")
        assert contract.parse(orjson.loads(contract.dumps(tp))) == tp
