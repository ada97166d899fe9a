"""The worker's composition root: its Faust app with every agent, table and view.

``journey worker`` builds the app here and nothing imports this module back:
the agents (``stream.ingest.agent``, ``stream.journey.agent``) know only the
settings, the topics and each other's small interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from stream import faust_ext
from stream.app import faust_app
from stream.faust_ext import monitor
from stream.settings import Settings


@dataclass
class Topics:
    """The worker's topics, declared once on its app."""

    touchpoints: faust.TopicT
    resolved: faust.TopicT
    dlq: faust.TopicT
    transitions: faust.TopicT
    timers: faust.TopicT
    triggers: faust.TopicT
    links: faust.TopicT


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
        links=topic(t.links),
    )


def build_worker_app(settings: Settings, **kwargs: Any) -> faust.App:
    """The worker's Faust app with every agent of the pipeline registered.

    Applies the worker's workarounds of Faust and aiokafka internals first
    (refusing upstream versions they were not checked against).
    """
    from stream.ingest.agent import register_ingest
    from stream.journey.agent import register_journey

    faust_ext.patch_all(faust_ext.WORKER)
    app = faust_app(settings, **kwargs)
    topics = declare_topics(app, settings)
    shell = register_journey(app, settings, topics)
    register_ingest(app, settings, topics, shell)
    monitor.install(app, name_prefix="faust")

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the worker owns partitions and has recovered its tables."""
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        is_ready = bool(owned) and not app.rebalancing and not app.in_recovery
        body = {"ready": is_ready, "active_partitions": owned}
        return self.json(body, status=200 if is_ready else 503)

    return app
