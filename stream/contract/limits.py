"""The input limits and the walk that holds a decoded JSON value to them.

Whatever passes :func:`check_value` (nesting, string and key lengths, keys and
items per container, 64-bit integers, finite floats, valid Unicode) and
:func:`check_size` can be encoded, packed and stored; a value that does not is
an :class:`~stream.contract.InvalidTouchpoint` naming the limit passed.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from stream.contract.invalid import InvalidTouchpoint
from stream.settings import LimitsSettings as Limits

#: The input limits in force when a caller passes none (``[limits]`` defaults).
DEFAULT_LIMITS = Limits()
MAX_EVENT_BYTES = DEFAULT_LIMITS.max_event_bytes

#: Integers JSON carries between every client here (orjson, Kafka clients, Java).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


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
