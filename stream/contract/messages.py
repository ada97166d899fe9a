"""A ``touchpoints`` message in: touchpoints or rejections, and what a rejection carries.

:func:`decode_message` yields each element of a message (one object or an
array) as a :class:`~stream.contract.Touchpoint` or a :class:`Rejected` with
its own bytes, so valid neighbours of an invalid element still flow;
:func:`encode_rejected` and :func:`dead_letter` make the dead letter's value
whatever the input was.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from stream.contract.event_time import EventTimeWindow
from stream.contract.invalid import InvalidTouchpoint, reason_label
from stream.contract.limits import DEFAULT_LIMITS, INT64_MIN, Limits
from stream.contract.touchpoint import INTERNAL_SOURCE, Touchpoint, parse


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
