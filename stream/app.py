"""The Faust application: topics, tables and agents wired from one Settings object.

This module is plumbing only. The rules live in pure modules
(``stream.contract``, ``stream.journey.*``); agents move data between topics,
tables and those functions.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from stream.settings import Settings


class OrjsonCodec(codecs.Codec):
    """Faust codec backed by orjson (registered as ``"orjson"``)."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("orjson", OrjsonCodec())


@dataclass
class Topics:
    touchpoints: faust.TopicT
    resolved: faust.TopicT
    dlq: faust.TopicT
    transitions: faust.TopicT
    timers: faust.TopicT
    triggers: faust.TopicT


def advertised_host(bind_host: str) -> str:
    """The host other workers reach this one at (Faust routes table queries there)."""
    if bind_host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return bind_host


def faust_app(
    settings: Settings, *, store: str | None = None, web_port: int | None = None
) -> faust.App:
    """A configured, empty Faust app (no agents)."""
    w = settings.worker
    b = settings.broker
    port = web_port if web_port is not None else w.web_port
    datadir = settings.path(w.data_dir)
    datadir.mkdir(parents=True, exist_ok=True)
    broker_credentials = None
    if b.sasl_mechanism:
        import ssl

        broker_credentials = faust.SASLCredentials(
            username=b.sasl_username,
            password=b.sasl_password,
            mechanism=b.sasl_mechanism,
            ssl_context=ssl.create_default_context(cafile=b.ssl_cafile or None)
            if b.security_protocol.startswith("SASL_SSL")
            else None,
        )
    return faust.App(
        w.app_id,
        broker=",".join(f"kafka://{h}" for h in b.bootstrap.split(",")),
        broker_credentials=broker_credentials,
        store=store or w.store,
        datadir=str(datadir),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        table_standby_replicas=w.standby_replicas,
        broker_session_timeout=b.session_timeout_s,
        broker_heartbeat_interval=b.heartbeat_interval_s,
        broker_rebalance_timeout=b.rebalance_timeout_s,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        web_host=w.web_host,
        web_port=port,
        web_in_thread=False,
        canonical_url=f"http://{advertised_host(w.web_host)}:{port}",
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        recovery_consistency_check=w.recovery_consistency_check,
    )


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    t = settings.topics
    n = t.partitions

    def topic(name: str, values: str = "raw") -> faust.TopicT:
        return app.topic(name, partitions=n, key_serializer="raw", value_serializer=values)

    return Topics(
        touchpoints=topic(t.touchpoints),
        resolved=topic(t.resolved),
        dlq=topic(t.dlq),
        # Engine-made JSON goes through the registered orjson codec.
        transitions=topic(t.transitions, "orjson"),
        timers=topic(t.timers, "orjson"),
        triggers=topic(t.triggers),
    )


def all_topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic the engine uses, with its partition count (for creation)."""
    t = settings.topics
    names = [
        t.touchpoints,
        t.resolved,
        t.dlq,
        t.transitions,
        t.triggers,
        t.timers,
        t.dispatch,
        t.dispatch_dlq,
    ]
    return {name: t.partitions for name in names}


def build_worker_app(settings: Settings, **kwargs: Any) -> faust.App:
    """The worker's Faust app with every agent of the pipeline registered."""
    from stream.ingest.agent import register_ingest
    from stream.journey.agent import register_journey

    app = faust_app(settings, **kwargs)
    topics = declare_topics(app, settings)
    shell = register_journey(app, settings, topics)
    register_ingest(app, settings, topics, shell.processed)
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, name_prefix="faust")

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the worker owns partitions and has recovered its tables."""
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        is_ready = bool(owned) and not app.rebalancing and not app.in_recovery
        body = {"ready": is_ready, "active_partitions": owned}
        return self.json(body, status=200 if is_ready else 503)

    return app
