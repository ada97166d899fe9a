"""POS export rows -> touchpoints: the pure mapping of one row.

One export row (a mapping of column -> value, from CSV or JSON Lines) becomes
one validated :class:`~stream.contract.Touchpoint`, or raises
:class:`~stream.contract.InvalidTouchpoint` naming the first problem. No I/O:
what a till wrote and what the engine accepts of it is decided here alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from stream import contract
from stream.contract import DEFAULT_LIMITS, InvalidTouchpoint, Limits, Touchpoint

CHANNEL = "pos"
SOURCE = "pos"
KIND_TYPES = {"sale": "pos_purchase", "refund": "return"}
KIND_ALIASES = {"sale": "sale", "refund": "refund", "return": "refund"}

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


def row_to_touchpoint(
    row: Mapping[str, Any], *, default_currency: str, limits: Limits = DEFAULT_LIMITS
) -> Touchpoint:
    """Map one POS export row to a validated touchpoint, held to ``limits``.

    Column names are matched case-insensitively; empty values count as
    missing. Raises :class:`InvalidTouchpoint` naming the first problem.
    """
    fields = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    store_id = _required_id(fields, "store_id")
    register = _required_id(fields, "register")
    receipt_id = _required_id(fields, "receipt_id", "order_id")
    kind = _kind(fields)
    timestamp = _timestamp(fields)
    customer_id = _optional_id(fields, "customer_id")
    loyalty_id = _optional_id(fields, "loyalty_id", "loyalty_card")
    email = _email(fields)
    if not (customer_id or loyalty_id or email):
        raise InvalidTouchpoint(
            "no customer identifier: one of customer_id, loyalty_id (loyalty_card) "
            "or email is required",
            "customer_id",
        )
    refund = kind == "refund"
    products = _items(_first(fields, "items", "products"), refund=refund)
    value = _total(fields, products, refund=refund)
    currency = _currency(_first(fields, "currency"), default_currency)
    properties: dict[str, Any] = {
        "store_id": store_id,
        "register": register,
        "order_id": receipt_id,
        "products": products,
        "value": value,
        "currency": currency,
    }
    if loyalty_id:
        properties["loyalty_id"] = loyalty_id
    if email:
        properties["email"] = email
    return contract.parse(
        {
            "event_id": pos_event_id(store_id, register, receipt_id, kind),
            "type": KIND_TYPES[kind],
            "channel": CHANNEL,
            "timestamp": timestamp,
            "customer_id": customer_id,
            "properties": properties,
            "source": SOURCE,
        },
        limits,
    )


def pos_event_id(store_id: str, register: str, receipt_id: str, kind: str) -> str:
    """``pos:{store}:{register}:{receipt}:{kind}``; ``%`` and ``:`` inside ids are escaped."""
    parts = (p.replace("%", "%25").replace(":", "%3A") for p in (store_id, register, receipt_id))
    return ":".join(("pos", *parts, kind))


def _first(fields: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = fields.get(name)
        if isinstance(value, str):
            value = value.strip()
        if value is not None and value != "":
            return value
    return None


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} (or {', '.join(names[1:])})"


def _optional_id(fields: Mapping[str, Any], *names: str) -> str | None:
    value = _first(fields, *names)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidTouchpoint(
            f"{_names(names)} must be text, got {type(value).__name__}", names[0]
        )
    return value


def _required_id(fields: Mapping[str, Any], *names: str) -> str:
    value = _optional_id(fields, *names)
    if value is None:
        raise InvalidTouchpoint(f"{_names(names)} is required", names[0])
    return value


def _kind(fields: Mapping[str, Any]) -> str:
    value = _first(fields, "kind", "type")
    if value is None:
        return "sale"
    kind = KIND_ALIASES.get(str(value).lower()) if isinstance(value, str) else None
    if kind is None:
        raise InvalidTouchpoint(f"kind must be sale or refund, got {str(value)[:32]!r}", "kind")
    return kind


def _timestamp(fields: Mapping[str, Any]) -> int:
    value = _first(fields, "timestamp")
    if value is None:
        raise InvalidTouchpoint("timestamp is required", "timestamp")
    if isinstance(value, str) and _NUMBER.match(value):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    return contract.parse_timestamp(value)


def _email(fields: Mapping[str, Any]) -> str | None:
    value = _first(fields, "email")
    if value is None:
        return None
    if not isinstance(value, str) or not _EMAIL.match(value):
        raise InvalidTouchpoint(f"email {str(value)[:64]!r} is not an email address", "email")
    return value.lower()


def _currency(value: Any, default: str) -> str:
    code = default if value is None else value
    if not isinstance(code, str) or not _CURRENCY.match(code):
        raise InvalidTouchpoint(
            f"currency {str(code)[:16]!r} is not a 3-letter code like EUR", "currency"
        )
    return code.upper()


def _number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.match(text):
            return None
        value = float(text)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _items(value: Any, *, refund: bool) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        if value.startswith("["):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise InvalidTouchpoint(
                    f"items is not a valid JSON array: {exc}", "items"
                ) from None
        else:
            return [_compact_item(i, seg, refund) for i, seg in enumerate(_segments(value))]
    if not isinstance(value, list):
        raise InvalidTouchpoint(
            "items must be an array of {sku, name, price, quantity} or SKU:QTY:PRICE[:NAME] text",
            "items",
        )
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidTouchpoint(f"items[{i}] must be an object", "items")
        quantity = item.get("quantity", item.get("qty", 1))
        out.append(_item(i, item.get("sku"), item.get("name"), item.get("price"), quantity, refund))
    return out


def _segments(text: str) -> list[str]:
    return [seg.strip() for seg in text.split(";") if seg.strip()]


def _compact_item(i: int, segment: str, refund: bool) -> dict[str, Any]:
    parts = [p.strip() for p in segment.split(":", 3)]
    if len(parts) < 3:
        raise InvalidTouchpoint(f"items[{i}] {segment[:64]!r} is not SKU:QTY:PRICE[:NAME]", "items")
    name = parts[3] if len(parts) == 4 else None
    return _item(i, parts[0], name, parts[2], parts[1], refund)


def _item(i: int, sku: Any, name: Any, price: Any, quantity: Any, refund: bool) -> dict[str, Any]:
    if isinstance(sku, int) and not isinstance(sku, bool):
        sku = str(sku)
    if not isinstance(sku, str) or not sku.strip():
        raise InvalidTouchpoint(f"items[{i}] has no sku", "items")
    sku = sku.strip()
    qty = _number(quantity)
    if qty is None or not qty.is_integer():
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) quantity {str(quantity)[:32]!r} is not a whole number", "items"
        )
    if price is None or price == "":
        raise InvalidTouchpoint(f"items[{i}] ({sku}) has no price", "items")
    unit = _number(price)
    if unit is None:
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) price {str(price)[:32]!r} is not a number", "items"
        )
    if refund:
        qty, unit = abs(qty), abs(unit)
    if qty <= 0:
        raise InvalidTouchpoint(
            f"items[{i}] ({sku}) quantity must be positive, got {qty:g}", "items"
        )
    if unit < 0:
        raise InvalidTouchpoint(f"items[{i}] ({sku}) price must not be negative", "items")
    if name is not None and not isinstance(name, str):
        raise InvalidTouchpoint(f"items[{i}] ({sku}) name must be text", "items")
    return {"sku": sku, "name": (name or "").strip() or sku, "price": unit, "quantity": int(qty)}


def _total(fields: Mapping[str, Any], products: list[dict[str, Any]], *, refund: bool) -> float:
    value = _first(fields, "total")
    if value is None:
        if not products:
            raise InvalidTouchpoint("total is required when there are no items", "total")
        return round(sum(p["price"] * p["quantity"] for p in products), 2)
    total = _number(value)
    if total is None:
        raise InvalidTouchpoint(f"total {str(value)[:32]!r} is not a number", "total")
    if refund:
        return abs(total)
    if total < 0:
        raise InvalidTouchpoint("total must not be negative for a sale (use kind=refund)", "total")
    return total
