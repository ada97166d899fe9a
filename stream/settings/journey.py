"""The worker, the journey rules and follow-up playbook, and the journey map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerSettings:
    """The Faust worker."""

    app_id: str = "journey"
    #: ``rocksdb://`` in production and the demo; ``memory://`` only where a test says so.
    store: str = "rocksdb://"
    data_dir: str = "var/worker"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Event ids remembered per process for exact-duplicate dropping.
    dedupe_capacity: int = 200_000
    standby_replicas: int = 0
    #: Messages the ingest agent takes per batch; their events are forwarded
    #: packed, one message per destination partition (up to 512 KB each).
    #: Larger batches mean fewer journey writes per session (see README "Throughput").
    forward_batch: int = 2000
    #: Decoded journey states kept in memory per worker (owned partitions only).
    state_cache: int = 20_000
    #: Longest the worker's consumer waits for a fetch to fill. Faust fixes it at
    #: 1,500 ms; a broker that does not answer a waiting fetch when records arrive
    #: (the embedded Tansu broker) then delivers what ingest forwarded to the
    #: journey agent up to that late. Kafka answers at once either way; a shorter
    #: wait only means more (cheap) empty fetches on an idle topic.
    fetch_max_wait_ms: int = 100
    #: Records the worker's consumer hands to Faust per poll. Faust delivers them
    #: one at a time into each agent's stream buffer and waits while that buffer
    #: is full, so a large poll lets ingest's full buffer (under a backlog) hold
    #: back the journey agent's and the links agent's records behind it.
    max_poll_records: int = 500
    #: Compression of every record the worker produces (``touchpoints.resolved``,
    #: changelogs, transitions, triggers): ``zstd`` (default), ``gzip`` or
    #: ``none``. Journey states are repetitive JSON: zstd shrank a batch of them
    #: 21x in a probe and about halved the broker's work (see README "Throughput").
    compression: str = "zstd"
    #: Bearer tokens of the HTTP API: token -> role (``read``: the funnel and the
    #: journey map; ``admin``: also one customer's journey, export and erasure).
    #: Health, readiness and metrics need none. Empty: only those are served.
    api_tokens: Mapping[str, str] = field(default_factory=dict)
    #: Liveness (``/live``, ``/ready``): an input partition with records waiting
    #: whose position has not moved for this long means the worker is stuck.
    stall_s: float = 120.0
    #: Also stuck: every input read to its end while a journey partition's
    #: watermark lags the clock by more than this (once inputs are idle it trails
    #: the clock by the allowed lateness). 0: the allowed lateness plus 300 s.
    max_watermark_lag_s: float = 0.0
    #: Exit the process once stuck this long (0: never), for a supervisor that
    #: restarts exited processes (compose's ``restart:``, systemd).
    exit_after_stall_s: float = 0.0
    #: Faust's check that a table's persisted offset is not past the changelog's end.
    #: Keep it on with Kafka; the embedded Tansu broker under-reports end offsets
    #: after batched writes, so the embedded stack turns it off.
    recovery_consistency_check: bool = True


#: The shipped abandonment rules (see ``[[journey.abandonment]]`` in config/journey.toml).
DEFAULT_ABANDONMENT: tuple[Mapping[str, Any], ...] = (
    {
        "name": "cart",
        "requires": "cart",
        "start": ["add_to_cart"],
        "restart": ["add_to_cart", "remove_from_cart"],
        "cancel": ["checkout_started", "purchase", "pos_purchase"],
        "wait_s": 1800,
        "template": "cart_abandoned",
        "holdout": 0.1,
    },
    {
        "name": "checkout",
        "requires": "checkout",
        "start": ["checkout_started"],
        "cancel": ["purchase", "pos_purchase"],
        "wait_s": 900,
        "template": "checkout_abandoned",
        "holdout": 0.1,
    },
    {
        "name": "browse",
        "requires": "session_views",
        "start": ["product_view"],
        "restart": ["product_view"],
        "min_count": 3,
        "cancel": ["add_to_cart", "checkout_started", "purchase", "pos_purchase"],
        "wait_s": 3600,
        "template": "browse_abandoned",
        "holdout": 0.1,
    },
)
DEFAULT_FOLLOWUPS: tuple[Mapping[str, Any], ...] = (
    {
        "name": "welcome",
        "to_stage": "$purchase",
        "template": "welcome",
        "first_time": True,
        "holdout": 0.0,
    },
    {
        "name": "thank_you",
        "to_stage": "$loyalty",
        "template": "thank_you",
        "first_time": True,
        "holdout": 0.0,
    },
)


@dataclass(frozen=True)
class JourneySettings:
    #: A stage model's name (looked up in ``stages_dir``, then among the packaged
    #: ``five-stage`` and ``see-think-do-care``) or the path of a ``.toml`` file.
    stage_model: str = "five-stage"
    #: A folder of the user's own stage models ("": the packaged ones only).
    stages_dir: str = ""
    #: Events up to this much older than the newest one seen are still placed in
    #: order; stages settle (and transitions are emitted) once the watermark passes.
    allowed_lateness_s: float = 600.0
    #: A caught-up partition idle this long lets its watermark follow the wall clock.
    #: Keep it above the consumer's fetch wait (1.5 s in Faust) so the worker's own
    #: messages in flight (identity merges) show in the end offsets first.
    idle_s: float = 3.0
    #: Abandonment rules: start/cancel/restart event types, a wait and a template.
    abandonment: tuple[Mapping[str, Any], ...] = DEFAULT_ABANDONMENT
    #: Follow-ups on entering a stage (``$purchase``/``$loyalty`` name the model's).
    followups: tuple[Mapping[str, Any], ...] = DEFAULT_FOLLOWUPS
    #: Inactivity that ends a browsing session (events without a session id).
    session_gap_s: float = 1800.0
    #: A purchase this soon after an abandonment counts as a recovery.
    recovery_within_s: float = 7 * 86_400.0
    #: Event time accepted ahead of the receive time (clock skew already corrected
    #: with Segment's ``sentAt``); later events are dead-lettered before they can
    #: move a watermark, and no source's mark runs further ahead of the wall clock.
    max_future_s: float = 300.0
    #: Event time accepted behind the receive time (0: no limit). Old events never
    #: move a watermark forward; a limit only guards against unit mistakes, and
    #: legitimate backfills (POS exports, historical imports) can be months old.
    max_past_s: float = 0.0


@dataclass(frozen=True)
class AnalyticsSettings:
    """The journey map: stage visits, touchpoint impact, segments and alerts.

    Times are event time. See :mod:`stream.journey.visits` (what a visit is),
    :mod:`stream.analytics.aggregate` (what is kept) and
    :mod:`stream.analytics.report` (what is reported).
    """

    #: A visit not advanced to a later stage this long after it began ends dropped.
    visit_window_s: float = 7 * 86400.0
    #: A property that refines a touchpoint type into named touchpoints
    #: (``page_type``: ``page_view:pricing``); "" for types only.
    touchpoint_property: str = "page_type"
    #: Distinct (touchpoint, channel) pairs one visit remembers.
    max_visit_touchpoints: int = 32
    #: The dimension the map can be cut by: ``context.<key>``, ``properties.<key>``,
    #: ``channel`` or ``source`` ("" for none). A visit takes the value on the
    #: touchpoint that began it, else the latest one its journey carried before.
    segment: str = "context.platform"
    #: Segment values a report names (the most visited); the rest add up as ``other``.
    #: An aggregate keeps 4x as many per bucket before folding values into ``other``.
    max_segment_values: int = 10
    #: Distinct (touchpoint, channel) pairs an aggregate keeps per bucket, segment and stage.
    max_touchpoints: int = 256
    #: A touchpoint seen in fewer closed visits than this (or missing from fewer) is
    #: ``insufficient`` rather than a moment of truth or a pain point.
    min_visits: int = 20
    #: Counts are kept per bucket of event time (UTC): one day by default.
    bucket_s: int = 86400
    #: Alerts compare the last ``alert_window_s`` with the ``baseline_s`` before it
    #: (both whole buckets), by a one-sided two-proportion test at ``alert_level``,
    #: when each window holds at least ``alert_min_count`` closed visits.
    alert_window_s: int = 86400
    baseline_s: int = 14 * 86400
    alert_level: float = 0.001
    alert_min_count: int = 20
    #: Buckets older than this many days behind the newest one are forgotten.
    retention_days: int = 90


@dataclass(frozen=True)
class AttributionSettings:
    """Conversion attribution of decided follow-ups (``sent`` and ``held_out``).

    Event time throughout. See :mod:`stream.analytics.attribution` (windows,
    last touch, records) and :mod:`stream.analytics.followups` (uplift, verdicts).
    """

    #: A decided follow-up's conversion window from its trigger's deadline; a rule
    #: sets its own with ``attribution_window_s`` in its ``[[journey.*]]`` table.
    window_s: float = 7 * 86400.0
    #: How long after its trigger's deadline a decision may arrive (quiet hours,
    #: dispatcher lag); a window's record is emitted this long after it ends.
    decision_grace_s: float = 86400.0
    #: A rule with fewer decided triggers than this in either arm is ``insufficient``.
    min_per_arm: int = 100
    #: Purchases kept per customer, and triggers or decisions waiting for each other.
    max_purchases: int = 100
    max_waiting: int = 256
    #: Follow-up counts are kept per bucket of decision time (UTC), for this many days.
    bucket_s: int = 86400
    retention_days: int = 400
