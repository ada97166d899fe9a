"""The touchpoint event contract: schema, validation and (de)serialisation.

Every producer, agent, the load generator and the tests import this module
instead of re-stating field names. A message on the ``touchpoints`` topic is
either one touchpoint (a JSON object) or a JSON array of touchpoints. The
array's routing keys (:attr:`Touchpoint.routing_key`) must all hash to the
message's partition (Kafka's default murmur2 partitioner), and the message is
keyed by the first one's: one raw id's events (as a Segment ``/v1/batch`` call
carries them), or a producer batch of many raw ids packed per destination
partition (``stream.producers.publisher.packed_records``), so consumers pay
the per-message cost once for many events. Each element is validated on its
own: an invalid one goes to the dead-letter topic with its reason and its own
bytes, its neighbours pass; a valid one whose raw id hashes elsewhere is
re-routed by the ingest agent. Inside the pipeline the ``touchpoints.resolved``
topic carries packed arrays of one partition (:func:`dumps_groups`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import orjson

from stream.settings import LimitsSettings as Limits

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
INTERNAL_TYPES = frozenset({"link", "merge", "merge_in"})
INTERNAL_SOURCE = "journey"

#: Event time outside this range is almost always a unit mistake (seconds vs ms).
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01
MAX_TIMESTAMP_MS = 4_102_444_800_000  # 2100-01-01

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MAX_ID_LENGTH = 256
#: Values the engine packs (resolved groups, transitions, timer checks) stay
#: below this: the producer's request limit and Kafka's default
#: message.max.bytes are about 1 MB.
MAX_PACKED_BYTES = 512 * 1024

#: The input limits in force when a caller passes none (``[limits]`` defaults).
DEFAULT_LIMITS = Limits()
MAX_EVENT_BYTES = DEFAULT_LIMITS.max_event_bytes

#: Integers JSON carries between every client here (orjson, Kafka clients, Java).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: Commerce quantities and amounts beyond these are unit mistakes or abuse; below
#: them, carts and order totals summed over a journey stay exact and finite.
MAX_QUANTITY = 1_000_000
MAX_AMOUNT = 1e15
#: Reasons are cut to this length wherever they are carried (headers, HTTP answers).
MAX_REASON_CHARS = 1000

#: What :attr:`InvalidTouchpoint.limit` may name (a bounded metrics label).
LIMITS = frozenset(
    {
        "depth",
        "string",
        "key",
        "keys",
        "items",
        "number",
        "type",
        "event_size",
        "message_size",
        "event_time",
        "state_size",
    }
)

_T = TypeVar("_T")


class InvalidTouchpoint(ValueError):
    """Raised by :func:`parse` with a precise, human-readable reason.

    ``field`` names the offending field when there is one; ``limit`` (one of
    :data:`LIMITS`) says which input limit was passed, if that is the problem.
    """

    def __init__(
        self, reason: str, field_name: str | None = None, limit: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field_name
        self.limit = limit


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


_INTERNAL_FIELDS = {"link": ("customer_id",), "merge": ("into", "alias"), "merge_in": ("alias",)}


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


def check_size(
    value: Any, limits: Limits = DEFAULT_LIMITS, size: int | None = None, what: str = "event"
) -> None:
    """Hold one event (a touchpoint, a Segment call) to ``limits``, size included.

    :func:`check_value`, then the encoded size: ``size`` if given (the bytes it
    arrived as), else measured only when the walk's upper bound passes
    ``limits.max_event_bytes`` (rarely: the bound is six bytes per character).
    """
    bound = check_value(value, limits)
    if size is None and bound > limits.max_event_bytes:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as exc:
            raise InvalidTouchpoint(f"the {what} cannot be encoded as JSON: {exc}") from None
    if size is not None and size > limits.max_event_bytes:
        raise InvalidTouchpoint(
            f"the {what} is {size} bytes, over the {limits.max_event_bytes}-byte limit",
            None,
            "event_size",
        )


#: Nesting ``check_value`` follows at most, whatever ``max_depth`` says: below
#: orjson's own encoding limit (254) and far from Python's recursion limit.
DEPTH_CEILING = 128


def check_value(value: Any, limits: Limits = DEFAULT_LIMITS, where: str | None = None) -> int:
    """Hold a decoded JSON value to ``limits``; return an upper bound of its JSON size.

    Checks nesting depth (``value`` itself is level 1), string and key lengths,
    keys per object and items per array, integers within signed 64 bits,
    finite floats, text that UTF-8 can carry and nothing but JSON types.
    Raises :class:`InvalidTouchpoint` for the first limit passed, its
    ``field`` the top-level key the problem is under (or ``where``). The walk
    recurses once per level and stops at ``max_depth`` (at most
    :data:`DEPTH_CEILING`), so no input can exhaust the stack; it measured
    about twice as fast as an explicit stack.
    """
    walk = _Walk(limits)
    return walk.value(value, 1, where)


class _Walk:
    """:func:`check_value`'s limits, read once per call."""

    __slots__ = ("chars", "depth", "items", "key", "keys")

    def __init__(self, limits: Limits) -> None:
        self.depth = min(limits.max_depth, DEPTH_CEILING)
        self.chars = limits.max_string_chars
        self.key = limits.max_key_chars
        self.keys = limits.max_keys
        self.items = limits.max_items

    def value(self, item: Any, depth: int, name: str | None) -> int:
        kind = type(item)
        if kind is dict:
            return self.object(item, depth, name)
        if kind is list:
            return self.array(item, depth, name)
        return self.other(item, depth, name)

    def object(self, item: dict[Any, Any], depth: int, name: str | None) -> int:
        if depth > self.depth:
            raise _over(name, "depth", f"nested deeper than {self.depth} levels")
        if len(item) > self.keys:
            raise _over(name, "keys", f"an object has more than {self.keys} keys")
        size = 2 + 2 * len(item)
        max_chars, max_key = self.chars, self.key
        for key, child in item.items():
            if type(key) is not str:
                raise _over(name, "type", "an object key is not text")
            if len(key) > max_key:
                raise _over(name, "key", f"an object key is longer than {max_key} characters")
            if not key.isascii():
                _utf8(key, name)
            size += 6 * len(key) + 2
            # The common scalars inline: most of an event is strings and numbers.
            kind = type(child)
            if kind is str:
                if len(child) > max_chars:
                    raise _over(
                        name or key, "string", f"a string is longer than {max_chars} characters"
                    )
                if not child.isascii():
                    _utf8(child, name or key)
                size += 6 * len(child) + 2
            elif kind is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    raise _over(name or key, "number", _OUT_OF_RANGE)
                size += 20
            elif kind is float:
                if not math.isfinite(child):
                    raise _over(name or key, "number", _NOT_FINITE)
                size += 24
            elif child is None or kind is bool:
                size += 5
            else:
                size += self.value(child, depth + 1, name or key)
        return size

    def array(self, item: list[Any], depth: int, name: str | None) -> int:
        if depth > self.depth:
            raise _over(name, "depth", f"nested deeper than {self.depth} levels")
        if len(item) > self.items:
            raise _over(name, "items", f"an array has more than {self.items} items")
        size = 2 + len(item)
        for child in item:
            kind = type(child)
            if kind is dict:
                size += self.object(child, depth + 1, name)
            elif kind is list:
                size += self.array(child, depth + 1, name)
            else:
                size += self.other(child, depth + 1, name)
        return size

    def other(self, item: Any, depth: int, name: str | None) -> int:
        """A scalar, or a subclass of a JSON type (a str enum, an OrderedDict, a tuple)."""
        if isinstance(item, str):
            if len(item) > self.chars:
                raise _over(name, "string", f"a string is longer than {self.chars} characters")
            if not item.isascii():
                _utf8(item, name)
            return 6 * len(item) + 2
        if item is None or isinstance(item, bool):
            return 5
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise _over(name, "number", _OUT_OF_RANGE)
            return 20
        if isinstance(item, float):
            if not math.isfinite(item):
                raise _over(name, "number", _NOT_FINITE)
            return 24
        if isinstance(item, dict):
            return self.object(dict(item), depth, name)
        if isinstance(item, list | tuple):
            return self.array(list(item), depth, name)
        raise _over(name, "type", f"a {type(item).__name__} value cannot be carried in JSON")


_OUT_OF_RANGE = "an integer is outside the signed 64-bit range"
_NOT_FINITE = "a number is NaN or infinite"


def _utf8(text: str, name: str | None) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _over(name, "type", "text holds a lone surrogate (not valid Unicode)") from None


def _over(name: str | None, limit: str, problem: str) -> InvalidTouchpoint:
    return InvalidTouchpoint(f"{name}: {problem}" if name else problem, name, limit)


@dataclass(frozen=True, slots=True)
class EventTimeWindow:
    """Event times accepted around the time an event was received (epoch ms).

    An event more than ``max_future_ms`` ahead of its receive time would move
    its partition's watermark past every open deadline; one more than
    ``max_past_ms`` behind (when set; 0 means no limit) is a unit mistake.
    """

    max_future_ms: int
    max_past_ms: int = 0

    @classmethod
    def of_seconds(cls, max_future_s: float, max_past_s: float = 0.0) -> EventTimeWindow:
        return cls(int(max_future_s * 1000), int(max_past_s * 1000))

    def check(self, timestamp: int, received_ms: int) -> None:
        """Raise :class:`InvalidTouchpoint` if ``timestamp`` is outside the window."""
        ahead = timestamp - received_ms
        if ahead > self.max_future_ms:
            raise InvalidTouchpoint(
                f"timestamp is {ahead / 1000:.0f} s ahead of the time it was received "
                f"(at most {self.max_future_ms / 1000:g} s)",
                "timestamp",
                "event_time",
            )
        if self.max_past_ms and -ahead > self.max_past_ms:
            raise InvalidTouchpoint(
                f"timestamp is {-ahead / 1000:.0f} s before the time it was received "
                f"(at most {self.max_past_ms / 1000:g} s)",
                "timestamp",
                "event_time",
            )


@dataclass(frozen=True, slots=True)
class Rejected:
    """An element of a message that failed validation, with its original bytes."""

    reason: str
    raw: bytes
    index: int | None = None
    #: The offending field, or None when the bytes were not a JSON touchpoint at all.
    field: str | None = None
    #: The input limit passed (see :data:`LIMITS`), if that is why.
    limit: str | None = None

    @classmethod
    def of(cls, exc: InvalidTouchpoint, raw: bytes, index: int | None = None) -> Rejected:
        return cls(exc.reason, raw, index, exc.field, exc.limit)

    @property
    def kind(self) -> str:
        """A low-cardinality reason label for metrics."""
        return reason_label(self.field, self.limit)


def reason_label(field_name: str | None, limit: str | None) -> str:
    """The bounded metrics label of a rejection: ``limit_<limit>``, ``invalid_<field>``
    (fields are named by the code, never by the input) or ``malformed``."""
    if limit is not None:
        return f"limit_{limit}" if limit in LIMITS else "limit_other"
    return f"invalid_{field_name}" if field_name else "malformed"


def decode_message(
    raw: bytes,
    limits: Limits = DEFAULT_LIMITS,
    *,
    received_ms: int | None = None,
    window: EventTimeWindow | None = None,
) -> Iterator[Touchpoint | Rejected]:
    """Decode one ``touchpoints`` message (object or array) into results.

    A message over ``limits.max_message_bytes`` or undecodable bytes yield one
    :class:`Rejected` carrying the whole message; an invalid element of an
    array yields a :class:`Rejected` with its index and that element
    re-encoded (:func:`encode_rejected`), so valid neighbours still flow. With
    ``window`` and ``received_ms`` (when the message was received), events
    outside the window are rejected too (not the engine's own, which were
    checked where they came from). Yields nothing but these two types.
    """
    if len(raw) > limits.max_message_bytes:
        yield Rejected(
            f"message is {len(raw)} bytes, over the {limits.max_message_bytes}-byte limit",
            raw,
            limit="message_size",
        )
        return
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        yield Rejected(f"not valid JSON: {exc}", raw)
        return
    timed = window if received_ms is not None else None
    if isinstance(value, list):
        if not value:
            yield Rejected("empty batch", raw)
        for i, item in enumerate(value):
            try:
                yield _checked(parse(item, limits), timed, received_ms)
            except InvalidTouchpoint as exc:
                yield Rejected.of(exc, encode_rejected(item, limits), i)
        return
    try:
        yield _checked(parse(value, limits, size=len(raw)), timed, received_ms)
    except InvalidTouchpoint as exc:
        yield Rejected.of(exc, raw)


def _checked(tp: Touchpoint, window: EventTimeWindow | None, received_ms: Any) -> Touchpoint:
    if window is not None and tp.source != INTERNAL_SOURCE:
        window.check(tp.timestamp, received_ms)
    return tp


def encode_rejected(value: Any, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """JSON bytes of a rejected value, for its dead letter.

    The value as it came when JSON can carry it; otherwise (nested too deep
    to encode, an integer beyond 64 bits, a lone surrogate) a copy with what
    is below ``limits.max_depth`` replaced by ``"..."`` and what JSON cannot
    carry by its text.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.dumps(_carried(value, limits.max_depth))


def _carried(value: Any, max_depth: int) -> Any:
    """:func:`encode_rejected`'s copy, made without recursion."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]
    while stack:
        item, into, at, depth = stack.pop()
        if isinstance(item, dict | list | tuple) and depth > max_depth:
            into[at] = "..."
        elif isinstance(item, dict):
            copy: Any = dict.fromkeys(str(k) for k in item)
            into[at] = copy
            stack.extend((v, copy, str(k), depth + 1) for k, v in item.items())
        elif isinstance(item, list | tuple):
            copy = [None] * len(item)
            into[at] = copy
            stack.extend((v, copy, i, depth + 1) for i, v in enumerate(item))
        elif isinstance(item, str):
            into[at] = item.encode("utf-8", "replace").decode()
        elif _carries(item):
            into[at] = item
        else:
            into[at] = repr(item)[:64]
    return root[0]


def _carries(item: Any) -> bool:
    """Whether orjson encodes this scalar as it is."""
    if item is None or isinstance(item, bool):
        return True
    if isinstance(item, int):
        return INT64_MIN <= item <= 2**64 - 1
    return isinstance(item, float) and math.isfinite(item)


def dead_letter(raw: bytes, max_bytes: int) -> tuple[bytes, dict[str, bytes]]:
    """A dead letter's value for ``raw`` and the headers saying what it holds.

    ``raw`` itself when it fits in ``max_bytes``; else its first ``max_bytes``
    bytes, with ``original_bytes`` (the size), ``original_sha256`` (hex) and
    ``truncated`` headers, so a dead letter can never be too large to send.
    """
    if len(raw) <= max_bytes:
        return raw, {}
    return raw[:max_bytes], {
        "truncated": b"prefix",
        "original_bytes": str(len(raw)).encode(),
        "original_sha256": hashlib.sha256(raw).hexdigest().encode(),
    }


def reason_text(reason: str) -> str:
    """A reason cut to :data:`MAX_REASON_CHARS` (headers, logs, HTTP answers)."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def dumps(tp: Touchpoint) -> bytes:
    return orjson.dumps(tp.to_dict())


def dumps_many(tps: Iterable[Touchpoint]) -> bytes:
    return orjson.dumps([tp.to_dict() for tp in tps])


def dumps_groups(groups: Iterable[tuple[str, Iterable[Touchpoint]]]) -> bytes:
    """Pack touchpoints of several journey keys into one ``touchpoints.resolved`` value.

    The format is ``[[journey_key, [touchpoint, ...]], ...]``; every key must
    hash to the partition the message is sent to. Touchpoints are written by
    orjson straight from the dataclass (every field, None included), which
    :func:`from_trusted` reads like :meth:`Touchpoint.to_dict` output.
    """
    return orjson.dumps([[key, list(tps)] for key, tps in groups], default=_plain)


def _plain(obj: Any) -> Any:
    """orjson fallback: a non-dict Mapping (properties, context) as a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def pack_groups(
    groups: Iterable[tuple[str, Sequence[Touchpoint]]], max_bytes: int
) -> Iterator[bytes]:
    """:func:`dumps_groups` values of at most ``max_bytes`` each (about; one key's
    touchpoints are split over several values only when they alone are larger)."""
    for value, _ in pack_groups_with(groups, max_bytes):
        yield value


def pack_groups_with(
    groups: Iterable[tuple[str, Sequence[Touchpoint]]], max_bytes: int
) -> Iterator[tuple[bytes, list[tuple[str, list[Touchpoint]]]]]:
    """:func:`pack_groups`, each value with the groups it holds (what
    :func:`loads_groups` of it returns)."""
    parts = (
        (part, (key, chunk))
        for key, tps in groups
        for part, chunk in _group_parts(key, list(tps), max_bytes)
    )
    return _pack(parts, max_bytes)


def _pack(items: Iterable[tuple[bytes, _T]], max_bytes: int) -> Iterator[tuple[bytes, list[_T]]]:
    """JSON arrays of the encoded items, in order, each at most ``max_bytes``
    (an item larger on its own goes alone), each with what its items carry."""
    parts: list[bytes] = []
    held: list[_T] = []
    size = 2
    for part, payload in items:
        if parts and size + len(part) + 1 > max_bytes:
            yield b"[" + b",".join(parts) + b"]", held
            parts, held, size = [], [], 2
        parts.append(part)
        held.append(payload)
        size += len(part) + 1
    if parts:
        yield b"[" + b",".join(parts) + b"]", held


def _group_parts(
    key: str, tps: list[Touchpoint], max_bytes: int
) -> list[tuple[bytes, list[Touchpoint]]]:
    part = orjson.dumps([key, tps], default=_plain)
    if len(part) + 2 <= max_bytes or len(tps) <= 1:
        return [(part, tps)]
    mid = len(tps) // 2
    return _group_parts(key, tps[:mid], max_bytes) + _group_parts(key, tps[mid:], max_bytes)


def pack_arrays(items: Iterable[bytes], max_bytes: int = MAX_PACKED_BYTES) -> Iterator[bytes]:
    """JSON arrays of the encoded ``items``, in order, each at most ``max_bytes``.

    An item larger than ``max_bytes`` on its own goes alone. For what the
    engine publishes per batch (transitions, timer checks): a large batch's
    output in one message would pass the producer's request limit and stop
    the agent.
    """
    for value, _ in _pack(((item, None) for item in items), max_bytes):
        yield value


#: Kinds of event-time marks (see ``stream.journey.clock.MergedClock``).
SOURCE_MARK = "source"
LINKS_MARK = "links"


class Mark(NamedTuple):
    """Event-time progress of one input of the journey partitions.

    ``kind`` ``"source"``: ``touchpoints`` partition ``partition`` forwarded
    its events up to ``at``. ``"links"``: the ``journey.links`` partition
    ``partition`` handled the identity links every source sent it up to ``at``
    (the smallest of the source marks it read after them).
    """

    kind: str
    partition: int
    at: int


def dumps_mark(partition: int, at: int, kind: str = SOURCE_MARK) -> bytes:
    """A mark (a JSON object) for ``touchpoints.resolved`` or ``journey.links``.

    Both topics otherwise carry touchpoints (JSON arrays, and on
    ``journey.links`` also single objects); :func:`loads_mark` tells them apart.
    """
    return orjson.dumps({kind: partition, "mark": at})


def loads_mark(raw: bytes) -> Mark | None:
    """The :class:`Mark` in ``raw``, or None if ``raw`` is anything else."""
    if raw[:1] != b"{":
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "mark" not in body or "event_id" in body:
        return None
    for kind in (SOURCE_MARK, LINKS_MARK):
        if kind in body:
            partition, at = body[kind], body["mark"]
            if isinstance(partition, int) and isinstance(at, int):
                return Mark(kind, partition, at)
    return None


def loads_groups(raw: bytes) -> list[tuple[str, list[Touchpoint]]]:
    """Inverse of :func:`dumps_groups` (trusted input written by the engine)."""
    return [(key, [from_trusted(d) for d in tps]) for key, tps in orjson.loads(raw)]


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
