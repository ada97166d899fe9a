"""The one settings object: every section, in order, and the checks on secrets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from stream.defaults import (
    ConfigFile,
)
from stream.settings.connections import BrokerSettings, RedisSettings, SmtpSettings, TopicSettings
from stream.settings.dispatch import DispatchSettings, WebhookSettings
from stream.settings.journey import (
    AnalyticsSettings,
    AttributionSettings,
    JourneySettings,
    WorkerSettings,
)
from stream.settings.producers import CollectorSettings, LimitsSettings, PosSettings


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
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
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
