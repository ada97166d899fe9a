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

# -- POS producer ----------------------------------------------------------------
POS_ROWS = Counter(
    "journey_pos_rows_total",
    "POS export rows handled by the POS producer, by outcome (published, rejected).",
    ["outcome"],
)

# -- ingest ----------------------------------------------------------------
INGESTED = Counter(
    "journey_events_ingested_total",
    "Valid touchpoints ingested, by channel and type (unknown types as 'other').",
    ["channel", "type"],
)
DLQ = Counter(
    "journey_events_dead_lettered_total",
    "Events sent to the dead-letter topic, by reason: malformed, invalid_<field>, "
    "limit_<limit> (depth, string, key, keys, items, number, type, event_size, message_size, "
    "event_time, state_size), error (an unexpected exception).",
    ["reason"],
)
AGENT_ERRORS = Counter(
    "journey_agent_errors_total",
    "Records (or journeys of a packed record) an agent failed on unexpectedly; each was "
    "dead-lettered with the exception as its reason and the agent went on.",
    ["agent"],
)
DUPLICATES = Counter(
    "journey_events_duplicate_total",
    "Exact duplicates (same event_id) dropped.",
)
REROUTED = Counter(
    "journey_events_rerouted_total",
    "Events of a packed touchpoints message sent on to the partition their raw id hashes to.",
)
IDENTITY_LINKS = Counter(
    "journey_identity_links_total",
    "Aliases (anonymous ids, loyalty ids, emails) linked to customers.",
)
IDENTITY_LINKS_UNANSWERED = Counter(
    "journey_identity_links_unanswered_total",
    "Identity links a journey stopped waiting for (no answer within the link timeout); "
    "it settled without them.",
)
IDENTITY_MERGES = Counter(
    "journey_identity_merges_total", "Orphan journeys merged into a customer's journey."
)
IDENTITY_UNLINKS = Counter(
    "journey_identity_unlinks_total", "Identity records erased with their customer's journey."
)
ERASURES = Counter(
    "journey_erasures_total", "Journeys erased on request (journey forget, DELETE /customers)."
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
STATE_WRITES = Counter(
    "journey_state_writes_total",
    "Journey states written to the table (RocksDB + changelog): at most one per journey per batch.",
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
TIME_IN_STAGE = Histogram(
    "journey_time_in_stage_seconds",
    "Time (event time) journeys spent in a stage, observed when they leave it.",
    ["stage"],
    buckets=(60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400),
)


def type_label(tp: Touchpoint) -> str:
    """Bounded label for a touchpoint type: unknown types count as 'other'."""
    return tp.type if tp.type in KNOWN_TYPES else "other"


CONSUMER_LAG = Gauge(
    "journey_consumer_lag_messages",
    "Messages not yet processed (end offset - next offset), per topic-partition this worker owns.",
    ["topic", "partition"],
)
WATERMARK_LAG = Gauge(
    "journey_watermark_lag_seconds",
    "Wall clock minus the event-time watermark, per partition this worker owns.",
    ["partition"],
)

# -- triggers ----------------------------------------------------------------
ABANDONMENTS = Counter(
    "journey_abandonments_total",
    "Abandonments detected (a wait passed without the cancelling event), by kind.",
    ["kind"],
)
RECOVERIES = Counter(
    "journey_abandonment_recoveries_total",
    "Purchases by customers after an abandonment of this kind was detected.",
    ["kind"],
)
TRIGGERS = Counter(
    "journey_triggers_total",
    "Follow-up triggers emitted to journey.triggers, by rule.",
    ["rule"],
)
DEADLINE_FIRE_DELAY = Histogram(
    "journey_deadline_fire_delay_seconds",
    "Wall time from the watermark passing a deadline to the trigger being emitted.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
EVENT_TO_TRIGGER = Histogram(
    "journey_event_to_trigger_seconds",
    "Wall time of trigger emission minus the event time of the touchpoint that caused it "
    "(for abandonments this includes the configured wait).",
    buckets=(0.1, 0.5, 1, 5, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
)

# -- attribution (worker) ----------------------------------------------------------
FOLLOWUP_DECIDED = Counter(
    "journey_followup_decided_total",
    "Decided follow-ups whose conversion window opened, by rule and arm (treated: sent, "
    "control: held out).",
    ["rule", "arm"],
)
FOLLOWUP_CLOSED = Counter(
    "journey_followup_windows_closed_total",
    "Conversion windows closed, one record each on journey.conversions, by rule, arm and "
    "whether the customer bought inside (converted: true/false).",
    ["rule", "arm", "converted"],
)
FOLLOWUP_REVENUE = Counter(
    "journey_followup_revenue_total",
    "Revenue of the orders credited to closed windows (last touch), by rule, arm and currency.",
    ["rule", "arm", "currency"],
)
FOLLOWUP_OPEN = Gauge(
    "journey_followup_open_windows",
    "Conversion windows open, per partition this worker owns.",
    ["partition"],
)

# -- dispatcher ----------------------------------------------------------------
DISPATCH_OUTCOMES = Counter(
    "journey_dispatch_outcomes_total",
    "Dispatcher decisions per trigger: sent, deduplicated, suppressed_consent, capped, "
    "delayed_quiet_hours, cancelled_purchased, unreachable, failed, erased, held_out "
    "(in the rule's control group: every check passed, not sent).",
    ["rule", "outcome"],
)
DISPATCH_ERRORS = Counter(
    "journey_dispatch_errors_total",
    "Errors while dispatching (each retry counts), by stage (redis, smtp, render).",
    ["stage"],
)
TRIGGER_TO_SEND = Histogram(
    "journey_trigger_to_send_seconds",
    "Wall time from trigger emission to the email being accepted by the SMTP server "
    "(includes quiet-hours delays).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 43200),
)
DISPATCH_IN_FLIGHT = Gauge(
    "journey_dispatch_in_flight",
    "Triggers being decided at once (at most dispatch.max_in_flight), waiting for their "
    "customer's earlier trigger included.",
)
DISPATCH_SCHEDULED = Gauge(
    "journey_dispatch_scheduled",
    "Follow-ups waiting in the quiet-hours schedule (Redis sorted set).",
)
WEBHOOK_REQUESTS = Counter(
    "journey_webhook_requests_total",
    "Webhook requests by endpoint and result: ok, client_error, server_error, "
    "rate_limited, timeout, connection_error.",
    ["endpoint", "result"],
)
WEBHOOK_DELIVERIES = Counter(
    "journey_webhook_deliveries_total",
    "Webhook deliveries finished, by endpoint and result: delivered, dead_lettered.",
    ["endpoint", "result"],
)
WEBHOOK_BREAKER = Gauge(
    "journey_webhook_breaker_state",
    "Circuit breaker of each webhook endpoint: 0 closed, 1 half-open, 2 open.",
    ["endpoint"],
)
WEBHOOK_PENDING = Gauge(
    "journey_webhook_pending",
    "Webhook deliveries queued in Redis per endpoint (due or waiting for a retry).",
    ["endpoint"],
)

# -- journey map ----------------------------------------------------------------
MAP_VISITS = Counter(
    "journey_map_visits_total",
    "Stage visits counted by the analytics agent, by stage and outcome (opened, "
    "advanced, dropped, merged); each visit effect once, however often it is delivered.",
    ["stage", "outcome"],
)
MAP_TOUCHPOINT_VISITS = Gauge(
    "journey_map_touchpoint_visits",
    "Touchpoint impact counts of the whole journey map (any channel): closed visits of "
    "a stage with or without the touchpoint (group), and of those the ones that advanced "
    "(advanced = yes/no). Reported by one worker (the alert evaluator).",
    ["stage", "touchpoint", "group", "advanced"],
)
MAP_TOUCHPOINT_LIFT = Gauge(
    "journey_map_touchpoint_lift",
    "Advance rate of a stage's visits with the touchpoint over those without it, with "
    "its verdict (moment_of_truth, pain_point, neutral, insufficient).",
    ["stage", "touchpoint", "verdict"],
)
MAP_ALERTS_OPEN = Gauge(
    "journey_map_alerts_open",
    "Journey-map alerts open now (1 per alert), by kind, stage and touchpoint.",
    ["kind", "stage", "touchpoint"],
)
MAP_ALERT_CHANGES = Counter(
    "journey_map_alert_changes_total",
    "Journey-map alerts published to journey.alerts, by kind and event (opened, closed).",
    ["kind", "event"],
)
MAP_RECORDS = Counter(
    "journey_map_records_total",
    "journey.visits records handled by the analytics agent, by outcome (counted, "
    "duplicate: every effect already counted, dead_letter).",
    ["outcome"],
)
