"""What one collector request becomes on the topics: touchpoint records and dead letters.

No I/O: a request's accepted touchpoints become ``touchpoints`` records (packed
per partition when the partition count is known, else grouped per routing
key); each rejected call becomes a dead letter carrying its original JSON and
the reason in headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream import contract
from stream.contract import InvalidTouchpoint, Touchpoint
from stream.producers.publisher import Record, packed_records

DLQ_SOURCE = b"collector"
#: Kafka's default message.max.bytes is ~1 MB; a routing key's events are split
#: into several records (same key, so still in order) well below it.
MAX_RECORD_BYTES = 512 * 1024

#: A record with headers (topic, key, value, headers): what the dead-letter topic takes.
HeaderRecord = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass(frozen=True, slots=True)
class RejectedCall:
    """A call that did not become a touchpoint, with the JSON it arrived as."""

    reason: str
    raw: bytes
    index: int | None = None
    message_id: str | int | None = None
    #: Bounded metrics label (``contract.reason_label``).
    label: str = "malformed"

    @classmethod
    def of(
        cls, exc: InvalidTouchpoint, raw: bytes, index: int | None, message: Any
    ) -> RejectedCall:
        label = contract.reason_label(exc.field, exc.limit)
        return cls(contract.reason_text(exc.reason), raw, index, message_id_of(message), label)


def message_id_of(message: Any) -> str | int | None:
    """A call's ``messageId`` to echo in answers and logs: text (cut) or an integer only."""
    value = message.get("messageId") if isinstance(message, dict) else None
    if isinstance(value, str):
        return value[: contract.DEFAULT_LIMITS.max_key_chars]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if contract.INT64_MIN <= value <= contract.INT64_MAX else None
    return None


def touchpoint_records(
    topic: str, tps: Sequence[Touchpoint], partitions: int | None = None
) -> list[Record]:
    """The records of one request's touchpoints.

    With the topic's partition count known: one record per destination
    partition (``packed_records``; a batch of many shoppers costs consumers
    one message per partition). Otherwise one record per routing key
    (first-seen order): an object, or an array for several. Events keep their
    order within a key; a record is split only past ``MAX_RECORD_BYTES``.
    """
    if partitions:
        return packed_records(topic, tps, partitions, MAX_RECORD_BYTES)
    groups: dict[str, list[Touchpoint]] = {}
    for tp in tps:
        groups.setdefault(tp.routing_key, []).append(tp)
    return [
        (topic, key.encode(), value) for key, group in groups.items() for value in _values(group)
    ]


def _values(group: Sequence[Touchpoint]) -> list[bytes]:
    if len(group) == 1:
        return [contract.dumps(group[0])]
    value = contract.dumps_many(group)
    if len(value) <= MAX_RECORD_BYTES:
        return [value]
    mid = len(group) // 2
    return _values(group[:mid]) + _values(group[mid:])


def dead_letter(topic: str, rejected: RejectedCall, max_bytes: int) -> HeaderRecord:
    """The dead-letter record of a rejected call: its original JSON (a prefix past
    ``max_bytes``, see ``contract.dead_letter``), the reason in headers."""
    value, extra = contract.dead_letter(rejected.raw, max_bytes)
    headers = [
        ("reason", contract.reason_text(rejected.reason).encode()),
        ("source", DLQ_SOURCE),
        ("stage", DLQ_SOURCE),
    ]
    if rejected.index is not None:
        headers.append(("index", str(rejected.index).encode()))
    headers.extend(extra.items())
    return (topic, None, value, headers)
