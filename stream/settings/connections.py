"""Where the services connect: the broker, the topics, Redis, the SMTP relay."""

from __future__ import annotations

from dataclasses import dataclass


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
    #: One conversion record per decided follow-up (``stream.analytics.attribution``).
    conversions: str = "journey.conversions"
    #: Stage visits (co-partitioned with ``resolved``: the analytics agent counts a
    #: journey's visits on its partition) and journey-map alerts opening and closing.
    visits: str = "journey.visits"
    alerts: str = "journey.alerts"
    partitions: int = 4
    replication_factor: int = 1
    #: How long the broker keeps the records of the topics above (``retention.ms``
    #: when ``journey topics`` creates them): raw events, identity links, triggers
    #: and outcomes hold personal data, and an erased customer's stay until it
    #: passes. The tables' changelogs are compacted instead (see docs/operations.md).
    retention_hours: float = 168.0
