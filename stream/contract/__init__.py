"""The touchpoint event contract: schema, validation and (de)serialisation.

Every producer, agent, the load generator and the tests import this package
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

Pure (no Faust, Kafka, Redis or HTTP), one module per job:
:mod:`.touchpoint` (the schema, :func:`parse`, (de)serialisation),
:mod:`.limits` (the input limits and their walk), :mod:`.event_time` (the
event-time window), :mod:`.invalid` (:class:`InvalidTouchpoint`, its label and
text), :mod:`.messages` (decoding a message, dead letters), :mod:`.packing`
(many touchpoints per message) and :mod:`.marks` (event-time marks). Import
the names from here.
"""

from stream.contract.event_time import EventTimeWindow
from stream.contract.invalid import (
    LIMITS,
    MAX_REASON_CHARS,
    InvalidTouchpoint,
    reason_label,
    reason_text,
)
from stream.contract.limits import (
    DEFAULT_LIMITS,
    DEPTH_CEILING,
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_BYTES,
    Limits,
    check_size,
    check_value,
)
from stream.contract.marks import (
    LINKS_MARK,
    NEVER,
    SOURCE_MARK,
    Mark,
    dumps_mark,
    loads_mark,
)
from stream.contract.messages import Rejected, dead_letter, decode_message, encode_rejected
from stream.contract.packing import (
    MAX_PACKED_BYTES,
    dumps_groups,
    loads_groups,
    pack_arrays,
    pack_groups,
    pack_groups_with,
)
from stream.contract.touchpoint import (
    CHANNELS,
    INTERNAL_SOURCE,
    INTERNAL_TYPES,
    KNOWN_TYPES,
    MAX_AMOUNT,
    MAX_ID_LENGTH,
    MAX_QUANTITY,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    SCHEMA_VERSION,
    Touchpoint,
    alias_ids,
    dumps,
    dumps_many,
    format_timestamp,
    from_trusted,
    internal_touchpoint,
    loads,
    parse,
    parse_timestamp,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_LIMITS",
    "DEPTH_CEILING",
    "INT64_MAX",
    "INT64_MIN",
    "INTERNAL_SOURCE",
    "INTERNAL_TYPES",
    "KNOWN_TYPES",
    "LIMITS",
    "LINKS_MARK",
    "MAX_AMOUNT",
    "MAX_EVENT_BYTES",
    "MAX_ID_LENGTH",
    "MAX_PACKED_BYTES",
    "MAX_QUANTITY",
    "MAX_REASON_CHARS",
    "MAX_TIMESTAMP_MS",
    "MIN_TIMESTAMP_MS",
    "NEVER",
    "SCHEMA_VERSION",
    "SOURCE_MARK",
    "EventTimeWindow",
    "InvalidTouchpoint",
    "Limits",
    "Mark",
    "Rejected",
    "Touchpoint",
    "alias_ids",
    "check_size",
    "check_value",
    "dead_letter",
    "decode_message",
    "dumps",
    "dumps_groups",
    "dumps_many",
    "dumps_mark",
    "encode_rejected",
    "format_timestamp",
    "from_trusted",
    "internal_touchpoint",
    "loads",
    "loads_groups",
    "loads_mark",
    "pack_arrays",
    "pack_groups",
    "pack_groups_with",
    "parse",
    "parse_timestamp",
    "reason_label",
    "reason_text",
]
