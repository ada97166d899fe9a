"""The follow-up dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
class WebhookSettings:
    """Webhook endpoints follow-up rules post to (``channels = ["webhook"]``); see
    :mod:`stream.dispatch.webhooks` and docs/operations.md "Webhooks"."""

    #: One table per endpoint: ``name``, ``url``, and optionally ``secret``,
    #: ``timeout_s``, ``headers``, ``max_attempts``, ``concurrency`` (defaults below).
    endpoints: tuple[Mapping[str, Any], ...] = ()
    #: Endpoint name -> signing secret (``JOURNEY_WEBHOOKS_SECRETS="crm=...,sms=..."``);
    #: wins over an endpoint's own ``secret``.
    secrets: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    max_attempts: int = 8
    #: Requests in flight per endpoint and dispatcher process.
    concurrency: int = 4
    #: Full-jitter backoff: wait uniform in [0, min(max, backoff * 2**(attempt-1))].
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 300.0
    #: The longest ``Retry-After`` honoured.
    retry_after_max_s: float = 3600.0
    #: Consecutive failed requests that open an endpoint's circuit breaker, and how
    #: long it stays open before one probe request.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    #: How often the outbox is polled for due deliveries.
    poll_s: float = 0.5
