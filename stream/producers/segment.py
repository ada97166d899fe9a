"""Segment HTTP Tracking API calls -> touchpoints. Pure: no I/O, no clock reads.

Where a web or app event enters the engine: the collector decodes each Segment
call (``track``, ``page``, ``screen``, ``identify``, ``alias``, ``group``) and
hands it to :func:`to_touchpoint`, which maps Segment's names onto the
touchpoint contract and lets :func:`stream.contract.parse` decide validity.

- ``track``: the event name becomes the type through ``event_types`` (Segment's
  E-commerce spec v2 names); an unmapped name becomes its snake_case form and
  is kept, so new events flow before anyone configures them.
- ``page`` and ``screen``: ``page_view`` (a ``screen`` is always channel ``app``).
- ``identify``: ``identify``; the traits (``traits``, and ``context.traits`` where
  RudderStack's SDKs put them) are kept and the ones the engine uses (email,
  names, loyalty id, phone, timezone) are lifted into properties.
- ``alias``: ``alias``; ``previousId`` is kept and doubles as the anonymous id,
  so the link lands where that id's events already are.
- ``group``: ``group``, a type the engine does not know but keeps.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from stream import contract
from stream.contract import DEFAULT_LIMITS, EventTimeWindow, InvalidTouchpoint, Limits, Touchpoint

CALLS = ("track", "page", "screen", "identify", "alias", "group")
CALL_TYPES = {
    "page": "page_view",
    "screen": "page_view",
    "identify": "identify",
    "alias": "alias",
    "group": "group",
}

#: ``context.library.name`` fragments of Segment's mobile SDKs.
MOBILE_LIBRARIES = ("ios", "android", "react-native", "flutter", "swift")
MOBILE_DEVICES = frozenset({"ios", "android"})

#: identify traits lifted to top-level properties: property -> accepted trait names.
LIFTED_TRAITS = {
    "email": ("email",),
    "first_name": ("first_name", "firstName"),
    "last_name": ("last_name", "lastName"),
    "loyalty_id": ("loyalty_id", "loyaltyId"),
    "phone": ("phone",),
    "timezone": ("timezone",),
}

#: Segment context fields kept on the touchpoint: Segment name -> contract name.
CONTEXT_FIELDS = {"userAgent": "user_agent", "ip": "ip", "locale": "locale", "timezone": "timezone"}
PAGE_FIELDS = {"url": "page_url", "referrer": "page_referrer"}

#: E-commerce identifiers: always text, whatever number type a tracker sent.
COMMERCE_IDS = ("product_id", "sku", "cart_id", "order_id")
COMMERCE_AMOUNTS = ("revenue", "total", "value", "price")
#: camelCase spellings some trackers use -> the spec's names.
COMMERCE_ALIASES = {"productId": "product_id", "cartId": "cart_id", "orderId": "order_id"}

#: Fields that differ between retries of one call; left out of a derived event id.
VOLATILE_FIELDS = frozenset({"messageId", "sentAt", "receivedAt", "writeKey"})

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\W_]+")
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def to_touchpoint(
    message: Mapping[str, Any],
    *,
    source: str,
    event_types: Mapping[str, str],
    received_at_ms: int,
    limits: Limits = DEFAULT_LIMITS,
    window: EventTimeWindow | None = None,
    size: int | None = None,
) -> Touchpoint:
    """Map one decoded Segment call to a validated :class:`Touchpoint`.

    ``message["type"]`` names the call; ``source`` is the source name of the
    write key the call came with; ``received_at_ms`` is when the collector
    received it (see :func:`event_time`). The call is held to ``limits``
    (``size``: the bytes it arrived as, if known) before anything else reads
    it, and its event time to ``window`` when given. Raises
    :class:`InvalidTouchpoint` with a precise reason, and nothing else,
    whatever ``message`` holds.
    """
    if not isinstance(message, dict):
        raise InvalidTouchpoint(
            f"a Segment call must be a JSON object, got {type(message).__name__}"
        )
    contract.check_size(message, limits, size, "call")
    call = message.get("type")
    if not isinstance(call, str) or call not in CALLS:
        raise InvalidTouchpoint(
            f"type must be one of {', '.join(CALLS)}, got {_preview(call)}", "type"
        )
    context = _object(message, "context")
    type_ = _track_type(message.get("event"), event_types) if call == "track" else CALL_TYPES[call]
    customer_id = _segment_id(message, "userId")
    anonymous_id = _segment_id(message, "anonymousId")
    if call == "identify":
        # RudderStack's SDKs send identify traits in context.traits: read them like
        # traits (which win where both name a trait), as RudderStack's server does.
        shared = context.get("traits")
        traits = {**(shared if isinstance(shared, dict) else {}), **_object(message, "traits")}
        properties = _identify_properties(traits)
    elif call == "alias":
        previous_id = _segment_id(message, "previousId")
        if previous_id is None:
            raise InvalidTouchpoint("an alias call needs previousId", "previousId")
        if customer_id is None:
            raise InvalidTouchpoint("an alias call needs userId", "userId")
        properties = {"previous_id": previous_id}
        if previous_id != customer_id:
            anonymous_id = previous_id
    elif call == "group":
        group_id = _segment_id(message, "groupId")
        if group_id is None:
            raise InvalidTouchpoint("a group call needs groupId", "groupId")
        properties = {"group_id": group_id, "traits": _object(message, "traits")}
    else:
        properties = normalise_commerce(_object(message, "properties"))
        if call in ("page", "screen"):
            for name in ("name", "category"):
                value = message.get(name)
                if isinstance(value, str) and value and name not in properties:
                    properties[name] = value
    timestamp = event_time(message, received_at_ms)
    if window is not None:
        window.check(timestamp, received_at_ms)
    tp = contract.parse(
        {
            "event_id": _event_id(message, source),
            "type": type_,
            "channel": _channel(call, context),
            "timestamp": timestamp,
            "customer_id": customer_id,
            "anonymous_id": anonymous_id,
            "properties": properties,
            "context": _context(context),
            "source": source,
        },
        limits,
    )
    return tp


def snake_case(name: str) -> str:
    """``"Products Searched"`` -> ``products_searched``, ``"videoPlayed"`` -> ``video_played``."""
    spaced = _CAMEL_BOUNDARY.sub("_", name.strip())
    return _SEPARATORS.sub("_", spaced.lower()).strip("_")


def derived_event_id(message: Mapping[str, Any], source: str) -> str:
    """A stable id for a call without ``messageId``: a hash of its canonical JSON.

    A retry of the same call (a different ``sentAt``) gets the same id, so the
    ingest dedupe drops it.
    """
    stable = {k: v for k, v in message.items() if k not in VOLATILE_FIELDS}
    try:
        canonical = orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise InvalidTouchpoint(f"the call holds a value JSON cannot carry: {exc}") from None
    digest = hashlib.sha256(source.encode() + b"\n" + canonical).hexdigest()
    return f"segment:{digest[:32]}"


def normalise_commerce(properties: Mapping[str, Any]) -> dict[str, Any]:
    """E-commerce spec v2 properties with ids as text, amounts and quantities as numbers.

    Everything else is kept as given. Raises :class:`InvalidTouchpoint` for a
    value that cannot be what its name says (``price: "cheap"``).
    """
    out = dict(properties)
    for alias, name in COMMERCE_ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    _normalise_item(out, "properties")
    currency = out.get("currency")
    if currency is None:
        out.pop("currency", None)
    elif isinstance(currency, str):
        out["currency"] = currency.strip().upper()
    else:
        raise InvalidTouchpoint("properties.currency must be an ISO 4217 code", "properties")
    products = out.get("products")
    if products is None:
        out.pop("products", None)
    elif not isinstance(products, list):
        raise InvalidTouchpoint("properties.products must be an array", "properties")
    else:
        out["products"] = [_product(item, i) for i, item in enumerate(products)]
    return out


def _product(item: Any, index: int) -> dict[str, Any]:
    where = f"properties.products[{index}]"
    if not isinstance(item, dict):
        raise InvalidTouchpoint(f"{where} must be an object", "properties")
    out = dict(item)
    if "productId" in out and "product_id" not in out:
        out["product_id"] = out.pop("productId")
    _normalise_item(out, where)
    name = out.get("name")
    if isinstance(name, int | float) and not isinstance(name, bool):
        out["name"] = str(name)
    return out


def _normalise_item(out: dict[str, Any], where: str) -> None:
    """Ids, amounts and quantity of a product or of an event's own properties, in place."""
    for name in COMMERCE_IDS:
        if name in out:
            _set_or_drop(out, name, _text_id(out[name], f"{where}.{name}"))
    for name in COMMERCE_AMOUNTS:
        if name in out:
            _set_or_drop(out, name, _amount(out[name], f"{where}.{name}"))
    if "quantity" in out:
        _set_or_drop(out, "quantity", _quantity(out["quantity"], f"{where}.quantity"))


def _set_or_drop(out: dict[str, Any], name: str, value: Any) -> None:
    if value is None:
        del out[name]
    else:
        out[name] = value


def _text_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidTouchpoint(
        f"{where} must be text or an integer, got {_preview(value)}", "properties"
    )


def _amount(value: Any, where: str) -> int | float | None:
    if value is None:
        return None
    number: int | float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        number = value
    elif isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise InvalidTouchpoint(
            f"{where} must be a finite number, got {_preview(value)}", "properties"
        )
    return number


def _quantity(value: Any, where: str) -> int | None:
    if value is None:
        return None
    number = _amount(value, where)
    if number is None or number < 0 or number != int(number):
        raise InvalidTouchpoint(
            f"{where} must be a non-negative integer, got {_preview(value)}", "properties"
        )
    return int(number)


def _track_type(event: Any, event_types: Mapping[str, str]) -> str:
    if not isinstance(event, str) or not event.strip():
        raise InvalidTouchpoint("a track call needs an event name", "event")
    mapped = event_types.get(event)
    if mapped:
        return mapped
    type_ = snake_case(event)
    if not type_:
        raise InvalidTouchpoint(f"event name {_preview(event)} has no letters or digits", "event")
    return type_


def _identify_properties(traits: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {"traits": traits}
    for name, spellings in LIFTED_TRAITS.items():
        for spelling in spellings:
            value = traits.get(spelling)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if isinstance(value, str) and value.strip():
                properties[name] = value.strip()
                break
    return properties


def _event_id(message: Mapping[str, Any], source: str) -> str:
    value = message.get("messageId")
    if value is None or value == "":
        return derived_event_id(message, source)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidTouchpoint("messageId must be a string", "messageId")
    return value


def event_time(message: Mapping[str, Any], received_at_ms: int) -> int:
    """The call's event time, corrected for the client's clock skew as Segment does.

    The time the client gave (``timestamp``, else ``originalTimestamp``: Segment's
    ``originalTimestamp``); with ``sentAt`` (the client's clock when it sent
    the call, or the batch), ``receivedAt - (sentAt - originalTimestamp)``,
    where ``receivedAt`` is ``received_at_ms``: a device clock set a year
    ahead moves both by a year and the difference stays. Without a time,
    ``received_at_ms``.
    """
    original = _client_time(message, "timestamp")
    if original is None:
        original = _client_time(message, "originalTimestamp")
    if original is None:
        return received_at_ms
    sent_at = _client_time(message, "sentAt")
    if sent_at is None:
        return original
    return received_at_ms - (sent_at - original)


def _client_time(message: Mapping[str, Any], name: str) -> int | None:
    value = message.get(name)
    if value is None or value == "":
        return None
    try:
        return contract.parse_timestamp(value)
    except InvalidTouchpoint as exc:
        raise InvalidTouchpoint(f"{name}: {exc.reason}", name) from None
    except OverflowError:
        # datetime cannot shift year 1 or 9999 by a UTC offset.
        raise InvalidTouchpoint(f"{name} is outside 2000..2100", name) from None


def _segment_id(message: Mapping[str, Any], name: str) -> str | None:
    """Segment ids may be text or numbers; the contract wants text."""
    value = message.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not value.is_integer():
            raise InvalidTouchpoint(f"{name} must be text or an integer", name)
        return str(int(value))
    if not isinstance(value, str):
        raise InvalidTouchpoint(f"{name} must be text or an integer, got {_preview(value)}", name)
    return value


def _channel(call: str, context: Mapping[str, Any]) -> str:
    if call == "screen":
        return "app"
    library = context.get("library")
    if isinstance(library, dict):
        name = library.get("name")
        if isinstance(name, str) and any(m in name.lower() for m in MOBILE_LIBRARIES):
            return "app"
    device = context.get("device")
    if isinstance(device, dict):
        kind = device.get("type")
        if isinstance(kind, str) and kind.lower() in MOBILE_DEVICES:
            return "app"
    return "web"


def _context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of Segment's context the engine uses, with snake_case names."""
    out: dict[str, Any] = {}
    for name, target in CONTEXT_FIELDS.items():
        value = context.get(name)
        if isinstance(value, str) and value:
            out[target] = value
    page = context.get("page")
    if isinstance(page, dict):
        for name, target in PAGE_FIELDS.items():
            value = page.get(name)
            if isinstance(value, str) and value:
                out[target] = value
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        kept = {
            snake_case(k): v
            for k, v in campaign.items()
            if isinstance(k, str)
            and isinstance(v, str | int | float)
            and not isinstance(v, bool)
            and snake_case(k)
        }
        if kept:
            out["campaign"] = kept
    library = context.get("library")
    if isinstance(library, dict) and isinstance(library.get("name"), str):
        out["library"] = library["name"]
    return out


def _object(message: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTouchpoint(f"{name} must be an object, got {_preview(value)}", name)
    return value


def _preview(value: Any) -> str:
    """A short rendering of a bad value for a reason text."""
    if isinstance(value, dict | list):
        return type(value).__name__
    return repr(value)[:40]
