"""The web collector: a Segment-compatible HTTP service -> ``touchpoints``.

Where a web or app event enters the engine. Segment's and RudderStack's SDKs
post to ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``,
``/v1/alias``, ``/v1/group`` and ``/v1/batch`` with the write key as the HTTP
Basic user (or, from browsers, as a ``writeKey`` body field). Each call is
mapped by :func:`stream.producers.segment.to_touchpoint`; the touchpoints of a
request are packed per partition (or grouped per routing key), and the
request is answered 200 only once the broker acknowledged them. Invalid calls
are answered 400 with their reasons and their original JSON goes to the
dead-letter topic; valid calls of the same batch are still published. A
broker that does not acknowledge in time means 503, which the SDKs retry.

One module per job: :mod:`.app` (routes, serving), :mod:`.handlers` (each
request, from write key to answer), :mod:`.body` (reading and decoding the
body), :mod:`.records` (touchpoint records and dead letters),
:mod:`.connection` (the broker connection and its deadline). The JSON error
answers it shares with email tracking are in :mod:`stream.producers.http`.
"""

from stream.producers.collector.app import (
    BATCH_PATH,
    CALL_PATHS,
    CORS_HEADERS,
    HEALTH_PATH,
    KNOWN_PATHS,
    METRICS_PATH,
    create_app,
    run,
    serve,
)
from stream.producers.collector.body import READ_CHUNK_BYTES, read_body
from stream.producers.collector.connection import BrokerConnection
from stream.producers.collector.handlers import HEALTH_PROBE_TIMEOUT_S, Collector
from stream.producers.collector.records import (
    DLQ_SOURCE,
    MAX_RECORD_BYTES,
    HeaderRecord,
    RejectedCall,
    dead_letter,
    message_id_of,
    touchpoint_records,
)
from stream.producers.http import RETRY_AFTER_S, Refusal

__all__ = [
    "BATCH_PATH",
    "CALL_PATHS",
    "CORS_HEADERS",
    "DLQ_SOURCE",
    "HEALTH_PATH",
    "HEALTH_PROBE_TIMEOUT_S",
    "KNOWN_PATHS",
    "MAX_RECORD_BYTES",
    "METRICS_PATH",
    "READ_CHUNK_BYTES",
    "RETRY_AFTER_S",
    "BrokerConnection",
    "Collector",
    "HeaderRecord",
    "Refusal",
    "RejectedCall",
    "create_app",
    "dead_letter",
    "message_id_of",
    "read_body",
    "run",
    "serve",
    "touchpoint_records",
]
