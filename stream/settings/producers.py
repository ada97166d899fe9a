"""What the producers take in: the collector, the input limits, the POS producer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CollectorSettings:
    """The Segment-compatible HTTP collector."""

    host: str = "127.0.0.1"
    port: int = 8088
    #: write key -> source name; an empty mapping accepts no request.
    write_keys: Mapping[str, str] = field(default_factory=lambda: {"demo-write-key": "web"})
    #: 32 KB per call (Segment's and RudderStack's limit) and 4 MB per batch request
    #: (RudderStack's). rudder-sdk-python stops filling a batch once it passes 4 MiB,
    #: so its batches run up to one call past that: 64 KiB of room on top.
    max_call_bytes: int = 32 * 1024
    max_batch_bytes: int = 4 * 1024 * 1024 + 64 * 1024
    #: How long a request waits for the broker's acknowledgement before 503.
    ack_timeout_s: float = 10.0
    #: Segment E-commerce spec v2 event names -> touchpoint types.
    event_types: Mapping[str, str] = field(
        default_factory=lambda: {
            "Products Searched": "search",
            "Product Viewed": "product_view",
            "Product Added": "add_to_cart",
            "Product Removed": "remove_from_cart",
            "Checkout Started": "checkout_started",
            "Order Completed": "purchase",
            "Order Refunded": "return",
            "Email Opened": "email_open",
            "Email Link Clicked": "email_click",
            "Unsubscribed": "unsubscribe",
        }
    )
    metrics_port: int = 0


@dataclass(frozen=True)
class LimitsSettings:
    """Bounds on every input, checked by ``stream.contract`` where input enters
    (collector, POS producer, ingest) and before anything is produced.

    An event over a limit is refused (400 at HTTP) or dead-lettered with the
    reason; nothing else happens to it. The event sizes follow Segment's
    Tracking API (32 KB per call), which every SDK already respects.
    """

    #: Nesting of objects and arrays in one event (the event object is level 1).
    max_depth: int = 32
    #: Characters in one string value, and in one object key.
    max_string_chars: int = 8192
    max_key_chars: int = 256
    #: Keys in one object, items in one array.
    max_keys: int = 256
    max_items: int = 1000
    #: One event (a touchpoint, a Segment call) encoded as JSON.
    max_event_bytes: int = 32 * 1024
    #: One ``touchpoints`` record; Kafka's default ``message.max.bytes`` is about 1 MB.
    max_message_bytes: int = 1024 * 1024
    #: A dead letter holds at most this much of what was rejected (a prefix
    #: beyond it, with the original's size and SHA-256 in headers).
    dead_letter_bytes: int = 64 * 1024
    #: One journey's state (one changelog record), below the producer's 1 MB
    #: request limit: events that would grow it past this are dead-lettered.
    max_state_bytes: int = 768 * 1024


@dataclass(frozen=True)
class PosSettings:
    checkpoint: str = "var/pos/checkpoint.json"
    rejects: str = "var/pos/rejects.jsonl"
    default_currency: str = "EUR"
    #: ``GET /metrics`` for Prometheus on this port (0: not served).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
