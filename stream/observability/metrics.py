"""Prometheus metrics, defined once for every service.

Counters are per process; Prometheus sums them over workers (``sum by``), so
several workers sharing the partitions never double count. Gauges of state
(customers per stage) are reported per partition and only for partitions the
worker actively owns, so the sum over workers is the population.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from stream.contract import KNOWN_TYPES, Touchpoint

# -- collector ----------------------------------------------------------------
COLLECTOR_REQUESTS = Counter(
    "journey_collector_requests_total",
    "HTTP requests to the collector by endpoint and status code.",
    ["endpoint", "status"],
)
COLLECTOR_EVENTS = Counter(
    "journey_collector_events_total",
    "Touchpoints accepted by the collector, by type.",
    ["type"],
)

# -- ingest ----------------------------------------------------------------
INGESTED = Counter(
    "journey_events_ingested_total",
    "Valid touchpoints ingested, by channel and type (unknown types as 'other').",
    ["channel", "type"],
)
DLQ = Counter(
    "journey_events_dead_lettered_total",
    "Events sent to the dead-letter topic, by reason.",
    ["reason"],
)
DUPLICATES = Counter(
    "journey_events_duplicate_total",
    "Exact duplicates (same event_id) dropped.",
)
IDENTITY_LINKS = Counter(
    "journey_identity_links_total",
    "Aliases (anonymous ids, loyalty ids, emails) linked to customers.",
)
IDENTITY_MERGES = Counter(
    "journey_identity_merges_total", "Orphan journeys merged into a customer's journey."
)
EVENT_TIME_LAG = Histogram(
    "journey_event_time_lag_seconds",
    "Processing time minus event time at ingest.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
)

# -- journey ----------------------------------------------------------------
LATE_EVENTS = Counter(
    "journey_events_late_total",
    "Events older than the journey's settled watermark (applied without rewriting history).",
)
TRANSITIONS = Counter(
    "journey_stage_transitions_total",
    "Stage transitions, by from and to stage ('none' when a journey starts).",
    ["from_stage", "to_stage"],
)
EVENTS_APPLIED = Counter(
    "journey_events_applied_total", "Touchpoints taken into journey state by the journey agent."
)
FIRST_APPLIED = Gauge(
    "journey_first_event_applied_timestamp_seconds",
    "Wall-clock time the journey agent took in its first touchpoint (process start = 0).",
)
LAST_APPLIED = Gauge(
    "journey_last_event_applied_timestamp_seconds",
    "Wall-clock time the journey agent last took in a touchpoint.",
)
STAGE_CUSTOMERS = Gauge(
    "journey_stage_customers",
    "Journeys currently in each stage, per partition this worker actively owns.",
    ["stage", "partition"],
)


def type_label(tp: Touchpoint) -> str:
    """Bounded label for a touchpoint type: unknown types count as 'other'."""
    return tp.type if tp.type in KNOWN_TYPES else "other"
