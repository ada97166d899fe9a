"""The touchpoint: its schema, :func:`parse` (validation) and (de)serialisation.

:func:`parse` turns any decoded JSON value into a :class:`Touchpoint` or
raises :class:`~stream.contract.InvalidTouchpoint` naming the first problem;
:func:`dumps` and :func:`from_trusted` write and read what the engine itself
validated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from stream.contract.invalid import InvalidTouchpoint
from stream.contract.limits import DEFAULT_LIMITS, Limits, check_size

SCHEMA_VERSION = 1

CHANNELS = frozenset({"web", "app", "pos", "email", "support"})

KNOWN_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        "purchase",
        "store_visit",
        "pos_purchase",
        "return",
        "email_sent",
        "email_open",
        "email_click",
        "unsubscribe",
        "support_contact",
        "identify",
        "alias",
    }
)

#: Types the engine sends to itself (identity links and merges); never accepted
#: from producers.
INTERNAL_TYPES = frozenset({"link", "merge", "merge_in", "erase", "unlink"})
INTERNAL_SOURCE = "journey"

#: Event time outside this range is almost always a unit mistake (seconds vs ms).
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MAX_ID_LENGTH = 256


#: Commerce quantities and amounts beyond these are unit mistakes or abuse; below
#: them, carts and order totals summed over a journey stay exact and finite.
MAX_QUANTITY = 1_000_000
MAX_AMOUNT = 1e15


@dataclass(frozen=True, slots=True)
class Touchpoint:
    """One customer interaction, with event time in UTC epoch milliseconds."""

    event_id: str
    type: str
    channel: str
    timestamp: int
    customer_id: str | None = None
    anonymous_id: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    source: str | None = None

    @property
    def known_type(self) -> bool:
        return self.type in KNOWN_TYPES

    @property
    def routing_key(self) -> str:
        """The raw id the ``touchpoints`` topic is keyed by.

        The anonymous id wins when present so that a device's events before and
        after login stay in one partition (identity resolution keeps its table
        there); POS sales without a customer id are keyed by loyalty id or email.
        """
        if self.anonymous_id:
            return self.anonymous_id
        if self.customer_id:
            return self.customer_id
        alias = alias_ids(self)
        return alias[0] if alias else self.event_id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "channel": self.channel,
            "timestamp": self.timestamp,
            "schema_version": self.schema_version,
        }
        if self.customer_id is not None:
            out["customer_id"] = self.customer_id
        if self.anonymous_id is not None:
            out["anonymous_id"] = self.anonymous_id
        if self.properties:
            out["properties"] = dict(self.properties)
        if self.context:
            out["context"] = dict(self.context)
        if self.source is not None:
            out["source"] = self.source
        return out


def internal_touchpoint(
    type_: str,
    event_id: str,
    timestamp: int,
    *,
    anonymous_id: str,
    properties: Mapping[str, Any],
) -> Touchpoint:
    """A touchpoint the engine sends to itself (see ``INTERNAL_TYPES``)."""
    return Touchpoint(
        event_id=event_id,
        type=type_,
        channel="web",
        timestamp=timestamp,
        anonymous_id=anonymous_id,
        properties=properties,
        source=INTERNAL_SOURCE,
    )


def alias_ids(tp: Touchpoint) -> list[str]:
    """Secondary identifiers a touchpoint carries (``loyalty:…``, ``email:…``)."""
    props = tp.properties
    out = []
    loyalty = props.get("loyalty_id")
    if isinstance(loyalty, str) and loyalty:
        out.append(f"loyalty:{loyalty}")
    email = props.get("email")
    if isinstance(email, str) and "@" in email:
        out.append(f"email:{email.strip().lower()}")
    return out


def parse_timestamp(value: Any) -> int:
    """RFC 3339 string or epoch milliseconds (int/float) -> UTC epoch ms."""
    if isinstance(value, bool):
        raise InvalidTouchpoint(
            "timestamp must be RFC 3339 text or epoch milliseconds", "timestamp"
        )
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidTouchpoint("timestamp is not a finite number", "timestamp")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidTouchpoint(
                f"timestamp {value[:64]!r} is not RFC 3339", "timestamp"
            ) from None
        if dt.tzinfo is None:
            raise InvalidTouchpoint("timestamp has no UTC offset", "timestamp")
        try:
            # Exact integer arithmetic: float seconds * 1000 loses a millisecond now and then.
            ms = (dt - _EPOCH) // timedelta(milliseconds=1)
        except (OverflowError, ValueError):
            raise InvalidTouchpoint(
                f"timestamp {value[:64]!r} is out of range", "timestamp"
            ) from None
    else:
        raise InvalidTouchpoint(
            "timestamp must be RFC 3339 text or epoch milliseconds", "timestamp"
        )
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise InvalidTouchpoint(
            f"timestamp {ms} ms is outside 2000..2100 (seconds instead of milliseconds?)",
            "timestamp",
        )
    return ms


def format_timestamp(ms: int) -> str:
    """UTC epoch ms -> RFC 3339 with milliseconds and ``Z``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _optional_id(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidTouchpoint(f"{name} must be a string", name)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidTouchpoint(f"{name} is longer than {MAX_ID_LENGTH} characters", name)
    return value


def _mapping(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTouchpoint(f"{name} must be an object", name)
    return value


def parse(obj: Any, limits: Limits = DEFAULT_LIMITS, *, size: int | None = None) -> Touchpoint:
    """Validate a decoded JSON value and return a :class:`Touchpoint`.

    The whole object is held to ``limits`` first (:func:`check_value`, then
    its encoded size: ``size`` when the caller has the bytes, else measured),
    so whatever is accepted can be encoded, packed and stored. Raises
    :class:`InvalidTouchpoint` naming the first problem found. Never raises
    anything else, whatever the input.
    """
    if not isinstance(obj, dict):
        raise InvalidTouchpoint(f"a touchpoint must be a JSON object, got {type(obj).__name__}")
    check_size(obj, limits, size, "touchpoint")
    event_id = _optional_id(obj, "event_id")
    if not event_id:
        raise InvalidTouchpoint("event_id is required", "event_id")
    type_ = obj.get("type")
    if not isinstance(type_, str) or not type_.strip():
        raise InvalidTouchpoint("type is required and must be a non-empty string", "type")
    if len(type_) > 64:
        raise InvalidTouchpoint("type is longer than 64 characters", "type")
    channel = obj.get("channel")
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise InvalidTouchpoint(
            f"channel must be one of {', '.join(sorted(CHANNELS))}, got {str(channel)[:32]!r}",
            "channel",
        )
    if "timestamp" not in obj:
        raise InvalidTouchpoint("timestamp is required", "timestamp")
    timestamp = parse_timestamp(obj["timestamp"])
    customer_id = _optional_id(obj, "customer_id")
    anonymous_id = _optional_id(obj, "anonymous_id")
    properties = _mapping(obj, "properties")
    context = _mapping(obj, "context")
    if not customer_id and not anonymous_id:
        has_alias = isinstance(properties.get("loyalty_id"), str) and properties["loyalty_id"]
        email = properties.get("email")
        if not has_alias and not (isinstance(email, str) and "@" in email):
            raise InvalidTouchpoint(
                "customer_id or anonymous_id is required (or a loyalty_id/email property)",
                "customer_id",
            )
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidTouchpoint("schema_version must be a positive integer", "schema_version")
    if version > SCHEMA_VERSION:
        raise InvalidTouchpoint(
            f"schema_version {version} is newer than this engine understands ({SCHEMA_VERSION})",
            "schema_version",
        )
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise InvalidTouchpoint("source must be a string", "source")
    if type_ in INTERNAL_TYPES:
        _check_internal(type_, source, properties)
    _check_properties(properties)
    return Touchpoint(
        event_id=event_id,
        type=type_,
        channel=channel,
        timestamp=timestamp,
        customer_id=customer_id,
        anonymous_id=anonymous_id,
        properties=properties,
        context=context,
        schema_version=version,
        source=source,
    )


_INTERNAL_FIELDS: dict[str, tuple[str, ...]] = {
    "link": ("customer_id",),
    "merge": ("into", "alias"),
    "merge_in": ("alias",),
    "erase": (),
    "unlink": ("customer_id",),
}


def _check_internal(type_: str, source: Any, props: Mapping[str, Any]) -> None:
    if source != INTERNAL_SOURCE:
        raise InvalidTouchpoint(f"type {type_!r} is reserved for the engine", "type")
    for name in _INTERNAL_FIELDS[type_]:
        if not isinstance(props.get(name), str) or not props[name]:
            raise InvalidTouchpoint(f"{type_} needs properties.{name}", "properties")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


_AMOUNTS = ("price", "value", "revenue", "total")


def _check_properties(props: Mapping[str, Any]) -> None:
    _check_commerce(props, "properties", strict=True)
    items = props.get("products", props.get("items"))
    if items is not None and not isinstance(items, list):
        raise InvalidTouchpoint("properties.products must be an array", "properties")
    for i, item in enumerate(items or ()):
        if isinstance(item, dict):
            _check_commerce(item, f"properties.products[{i}]", strict=False)


def _check_commerce(props: Mapping[str, Any], where: str, *, strict: bool) -> None:
    """Amounts finite numbers within ``MAX_AMOUNT``, the quantity a non-negative integer
    within ``MAX_QUANTITY``; with ``strict`` False (line items, which the rules read
    leniently) only numbers are held to the bounds."""
    for name in _AMOUNTS:
        v: Any = props.get(name)
        if v is None:
            continue
        if not _is_number(v):
            if strict:
                raise InvalidTouchpoint(f"{where}.{name} must be a finite number", "properties")
        elif abs(v) > MAX_AMOUNT:
            raise InvalidTouchpoint(
                f"{where}.{name} is beyond {MAX_AMOUNT:g}", "properties", "number"
            )
    q = props.get("quantity")
    if q is None:
        return
    if isinstance(q, bool) or not isinstance(q, int) or q < 0:
        if strict:
            raise InvalidTouchpoint(
                f"{where}.quantity must be a non-negative integer", "properties"
            )
    elif q > MAX_QUANTITY:
        raise InvalidTouchpoint(
            f"{where}.quantity is beyond {MAX_QUANTITY}", "properties", "number"
        )


def dumps(tp: Touchpoint) -> bytes:
    return orjson.dumps(tp.to_dict())


def dumps_many(tps: Iterable[Touchpoint]) -> bytes:
    return orjson.dumps([tp.to_dict() for tp in tps])


def loads(raw: bytes) -> Touchpoint:
    """Decode one trusted touchpoint object (raises :class:`InvalidTouchpoint`)."""
    try:
        return parse(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidTouchpoint(f"not valid JSON: {exc}") from None


def from_trusted(obj: Mapping[str, Any]) -> Touchpoint:
    """Build a touchpoint from a dict produced by :meth:`Touchpoint.to_dict`.

    Skips validation: only for data this engine validated and wrote itself
    (``touchpoints.resolved``, table values).
    """
    return Touchpoint(
        event_id=obj["event_id"],
        type=obj["type"],
        channel=obj["channel"],
        timestamp=obj["timestamp"],
        customer_id=obj.get("customer_id"),
        anonymous_id=obj.get("anonymous_id"),
        properties=obj.get("properties") or {},
        context=obj.get("context") or {},
        schema_version=obj.get("schema_version", SCHEMA_VERSION),
        source=obj.get("source"),
    )
