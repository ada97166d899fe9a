"""One settings object for every service, built once from TOML and the environment.

Precedence (lowest first): the defaults below (also written out, with comments,
in the packaged ``stream/defaults/journey.toml``), the settings file named by
``JOURNEY_CONFIG`` (or ``journey --config``), then ``JOURNEY_<SECTION>_<FIELD>``
environment variables (``JOURNEY_BROKER_URL``, ``JOURNEY_REDIS_URL``,
``JOURNEY_COLLECTOR_PORT``, ``JOURNEY_TOPICS_PARTITIONS`` ...). Relative paths
are relative to the working directory. Nothing else in the package reads
``os.environ``; the settings object is passed down.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from stream.defaults import (
    ConfigError,
    ConfigFile,
    settings_file,
    stage_model_file,
    template_files,
)

ENV_PREFIX = "JOURNEY_"


@dataclass(frozen=True)
class BrokerSettings:
    """Kafka connection. ``url`` empty means: start the embedded broker."""

    url: str = ""
    #: Extra librdkafka/Java-style client settings passed through (SASL, TLS).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    #: Consumer group timeouts; Faust's defaults make a new group take ~30 s to form.
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 6.0

    @property
    def bootstrap(self) -> str:
        """``host:port[,host:port]`` without the ``kafka://`` scheme."""
        return ",".join(u.split("://", 1)[-1] for u in self.url.split(","))


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 1025
    starttls: bool = False
    ssl: bool = False
    username: str = ""
    password: str = ""
    sender: str = "Journey <journey@example.com>"


@dataclass(frozen=True)
class TopicSettings:
    """Topic names and partition counts. Co-partitioned topics share ``partitions``."""

    touchpoints: str = "touchpoints"
    resolved: str = "touchpoints.resolved"
    dlq: str = "journey.dlq"
    transitions: str = "journey.transitions"
    triggers: str = "journey.triggers"
    timers: str = "journey.timers"
    dispatch: str = "journey.dispatch"
    dispatch_dlq: str = "journey.dispatch.dlq"
    #: Identity links for aliases another partition owns (co-partitioned with touchpoints,
    #: read by an agent of their own, so a link never waits behind a touchpoints backlog),
    #: and the sources' event-time marks that follow them, relayed once they are handled.
    links: str = "journey.links"
    partitions: int = 4
    replication_factor: int = 1
    #: How long the broker keeps the records of the topics above (``retention.ms``
    #: when ``journey topics`` creates them): raw events, identity links, triggers
    #: and outcomes hold personal data, and an erased customer's stay until it
    #: passes. The tables' changelogs are compacted instead (see docs/operations.md).
    retention_hours: float = 168.0


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
class PosSettings:
    checkpoint: str = "var/pos/checkpoint.json"
    rejects: str = "var/pos/rejects.jsonl"
    default_currency: str = "EUR"
    #: ``GET /metrics`` for Prometheus on this port (0: not served).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class DispatchSettings:
    """The follow-up dispatcher (``journey dispatcher``): Redis guards, rendering, tracking."""

    #: The dispatcher's HTTP port: GET /metrics and GET /ready.
    web_host: str = "127.0.0.1"
    web_port: int = 6067
    #: Prefix of every Redis key the dispatcher and ``journey suppress`` use.
    key_prefix: str = "journey:dispatch:"
    #: How long an in-flight idempotency claim lives; must outlast all send attempts.
    claim_ttl_s: float = 120.0
    #: This dispatcher's identity, unique among running dispatchers ("": the host
    #: name, unique per container). A restarted process of the same instance takes
    #: over its dead predecessor's claims at once instead of waiting ``claim_ttl_s``.
    instance_id: str = ""
    #: The instance's lease in Redis: one live process per instance id. A killed
    #: process's lease lapses after this long; a restart waits at most twice that.
    instance_lease_s: float = 10.0
    #: How long a sent (or otherwise decided) trigger id is remembered.
    sent_retention_s: float = 30 * 86400.0
    #: Frequency cap: at most ``cap_max`` follow-ups per customer per ``cap_window_s``.
    cap_max: int = 2
    cap_window_s: float = 86400.0
    #: Quiet hours in the customer's local time, "HH:MM" or "HH:MM:SS"; equal = none.
    quiet_start: str = "21:00"
    quiet_end: str = "08:00"
    #: IANA zone used when a trigger carries none.
    default_timezone: str = "UTC"
    #: How long a send waits for the signal consumer to reach the resolved topic's end.
    signal_wait_s: float = 5.0
    #: Re-check delay when signals lag or another dispatcher holds the claim.
    recheck_delay_s: float = 5.0
    #: Attempts per trigger on SMTP/Redis errors, with exponential backoff, then the DLQ.
    max_attempts: int = 5
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    #: How often due quiet-hours entries are released, and how long a taken one is leased.
    schedule_poll_s: float = 1.0
    schedule_lease_s: float = 120.0
    #: Links in emails point here (only this host is a valid click-redirect target).
    shop_base_url: str = "https://shop.example.com"
    #: Public base URL of the collector's /e/ tracking endpoints.
    tracking_base_url: str = "http://127.0.0.1:8088"
    #: HMAC key for tracking tokens (open, click, unsubscribe links). Change it.
    tracking_secret: str = "change-me"
    #: A folder of the user's own templates, each overriding the packaged one of
    #: the same name ("": the packaged templates only).
    templates_dir: str = ""
    smtp_timeout_s: float = 10.0
    #: Triggers decided at once, 1 to 10,000 (one journey key's still one after
    #: another, in order); input offsets are committed only below the oldest one
    #: undecided. As many SMTP connections are kept open.
    max_in_flight: int = 32
    #: Salt of the control-group hash (a rule's ``holdout``): the same salt keeps
    #: every customer on the same side; a new one draws a new split.
    holdout_salt: str = "journey-holdout"


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
class SecuritySettings:
    """Checks on secrets at start (see :mod:`stream.security`)."""

    #: Accept empty or packaged default secrets (tracking key, Redis password, write
    #: keys). Only the embedded stack, the demo and the tests set it.
    allow_default_secrets: bool = False


@dataclass(frozen=True)
class Settings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    collector: CollectorSettings = field(default_factory=CollectorSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    journey: JourneySettings = field(default_factory=JourneySettings)
    pos: PosSettings = field(default_factory=PosSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    #: The settings file these were loaded from (None: built in code).
    source: ConfigFile | None = field(default=None, compare=False)

    def with_broker(self, url: str) -> Settings:
        """A copy pointing at ``url`` (used once the embedded broker is up)."""
        return replace(self, broker=replace(self.broker, url=url))

    def path(self, value: str) -> Path:
        """A configured path, absolute (relative ones from the working directory)."""
        return Path(value).expanduser().absolute()


#: The sections of :class:`Settings` (``[broker]``, ``[redis]`` ...), in order.
SECTIONS = tuple(f.name for f in fields(Settings) if f.name != "source")


def _coerce(value: Any, annotation: Any) -> Any:
    target = typing.get_origin(annotation) or annotation
    if target is tuple:
        # Lists of tables (abandonment rules); JSON in the environment.
        return tuple(orjson.loads(value) if isinstance(value, str) else value)
    if isinstance(target, type) and issubclass(target, Mapping):
        if isinstance(value, str):
            # "k1=v1,k2=v2" from the environment.
            return dict(item.split("=", 1) for item in value.split(",") if item)
        return dict(value)
    if target is bool and isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if target in (int, float) and isinstance(value, str | int | float):
        return target(value)
    if target is types.UnionType:
        return value
    return value if target is Any else target(value)


def _merge(section: Any, values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in fields(section)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    changes = {}
    for k, v in values.items():
        try:
            changes[k] = _coerce(v, hints[k])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {k} = {v!r} is not valid: {exc}") from None
    return replace(section, **changes)


def load_settings(
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file and ``JOURNEY_*`` variables.

    ``overrides`` (section -> field -> value) win over everything; tests and the
    CLI use them.
    """
    env = dict(os.environ if environ is None else environ)
    source = settings_file(
        config_file or env.get("JOURNEY_CONFIG"),
        "--config" if config_file else "JOURNEY_CONFIG",
    )
    path = source.location
    try:
        data: dict[str, Any] = tomllib.loads(source.read_bytes().decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings file {path!r} is not valid TOML: {exc}") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(sorted(unknown))}")
    settings = Settings(source=source)
    for name in SECTIONS:
        section = getattr(settings, name)
        file_values = data.get(name, {})
        env_values = {}
        for f in fields(section):
            var = f"{ENV_PREFIX}{name}_{f.name}".upper()
            if var in env:
                env_values[f.name] = env[var]
        section = _merge(section, file_values, f"{path}:[{name}]")
        section = _merge(section, env_values, "environment")
        if overrides and name in overrides:
            section = _merge(section, overrides[name], "overrides")
        settings = replace(settings, **{name: section})
    return settings


def with_environ(settings: Settings, environ: Mapping[str, str], where: str) -> Settings:
    """``settings`` with the ``JOURNEY_<SECTION>_<FIELD>`` values of ``environ`` applied."""
    for name in SECTIONS:
        section = getattr(settings, name)
        values = {}
        for f in fields(section):
            var = f"{ENV_PREFIX}{name}_{f.name}".upper()
            if var in environ:
                values[f.name] = environ[var]
        if values:
            settings = replace(settings, **{name: _merge(section, values, where)})
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain-data view, for ``journey config`` and logs (secrets masked)."""
    out = {name: dataclasses.asdict(getattr(settings, name)) for name in SECTIONS}
    for section in out.values():
        for key, value in section.items():
            if ("password" in key or "secret" in key) and value:
                section[key] = "***"
            elif key == "api_tokens" and value:
                section[key] = {f"***{i}": role for i, role in enumerate(value.values(), 1)}
            elif key == "url" and isinstance(value, str):
                section[key] = mask_url(value)
    return out


def redis_password(url: str) -> str | None:
    """The password in a ``redis://[user]:password@host`` URL, or None."""
    return urlsplit(url).password


def mask_url(url: str) -> str:
    """``url`` with the password of its user info (``redis://:pw@host``) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def to_environ(settings: Settings) -> dict[str, str]:
    """``JOURNEY_*`` variables that rebuild ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name in SECTIONS:
        values = getattr(settings, name)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, tuple):
                text = orjson.dumps(value).decode()
            elif isinstance(value, Mapping):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{name}_{f.name}".upper()] = text
    return env


def templates_in_use(settings: Settings) -> list[str]:
    """The template names the configured abandonment rules and follow-ups send."""
    rules = (*settings.journey.abandonment, *settings.journey.followups)
    return sorted({str(rule["template"]) for rule in rules if rule.get("template")})


def files_in_use(settings: Settings) -> list[ConfigFile]:
    """Every file the services read at run time, with where it comes from.

    Raises :class:`ConfigError` naming a configured file or folder that is missing.
    """
    out = [settings.source or settings_file(None)]
    out.append(stage_model_file(settings.journey.stage_model, settings.journey.stages_dir))
    out.extend(template_files(templates_in_use(settings), settings.dispatch.templates_dir))
    return out
