"""Many touchpoints in one message: packed per journey key, and cut below a size.

The engine packs what it sends to itself (``touchpoints.resolved``,
transitions, timer checks) into JSON arrays of at most
:data:`MAX_PACKED_BYTES`, so consumers pay the per-message cost once for many
events and no batch passes the broker's message limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from stream.contract.touchpoint import Touchpoint, from_trusted

#: Values the engine packs (resolved groups, transitions, timer checks) stay
#: below this: the producer's request limit and Kafka's default
#: message.max.bytes are about 1 MB.
MAX_PACKED_BYTES = 512 * 1024


_T = TypeVar("_T")


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


def loads_groups(raw: bytes) -> list[tuple[str, list[Touchpoint]]]:
    """Inverse of :func:`dumps_groups` (trusted input written by the engine)."""
    return [(key, [from_trusted(d) for d in tps]) for key, tps in orjson.loads(raw)]
