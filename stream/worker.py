"""The worker's composition root: its Faust app with every agent, table and view.

``journey worker`` builds the app here and nothing imports this module back:
the agents (``stream.ingest.agent``, ``stream.journey.agent``) know only the
settings, the topics and each other's small interfaces.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust

from stream import faust_ext
from stream.app import faust_app
from stream.faust_ext import monitor
from stream.settings import Settings

log = logging.getLogger(__name__)


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
    dispatch: faust.TopicT
    conversions: faust.TopicT
    visits: faust.TopicT
    alerts: faust.TopicT


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
        dispatch=topic(t.dispatch),
        conversions=topic(t.conversions),
        visits=topic(t.visits),
        alerts=topic(t.alerts),
    )


def build_worker_app(settings: Settings, **kwargs: Any) -> faust.App:
    """The worker's Faust app with every agent of the pipeline registered.

    Applies the worker's workarounds of Faust and aiokafka internals first
    (refusing upstream versions they were not checked against).
    """
    from stream.attribution.agent import register_attribution
    from stream.ingest.agent import register_ingest
    from stream.journey.agent import register_journey
    from stream.journeymap.agent import register_map
    from stream.journeymap.alerts import register_alerts
    from stream.journeymap.views import MapViews, register_map_views

    faust_ext.patch_all(faust_ext.WORKER)
    app = faust_app(settings, **kwargs)
    topics = declare_topics(app, settings)
    shell = register_journey(app, settings, topics)
    register_ingest(app, settings, topics, shell)
    register_attribution(app, settings, topics, shell.partition_of)
    journey_map = register_map(app, settings, topics, shell.model.all_stages)
    views = MapViews(
        app,
        journey_map,
        shell.model,
        lambda: [shell.marks.watermark(p) for p in shell.active_partitions()],
    )
    register_map_views(app, views, settings)
    register_alerts(app, settings, topics, views)
    monitor.install(app, name_prefix="faust")
    watch = StallWatch(settings, lambda: shell.marks.stalls(shell.active_partitions()))

    @app.timer(interval=STALL_CHECK_S)
    async def watch_stalls() -> None:
        if not (app.rebalancing or app.in_recovery):
            watch.check()

    @app.page("/live")
    async def live(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """503 while the worker is stuck (records waiting, or a frozen watermark)."""
        stalls = [str(s) for s in watch.stalls]
        return self.json({"live": not stalls, "stalls": stalls}, status=503 if stalls else 200)

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the worker owns partitions, has recovered its tables and is not stuck."""
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        stalls = [str(s) for s in watch.stalls]
        is_ready = bool(owned) and not app.rebalancing and not app.in_recovery and not stalls
        body = {"ready": is_ready, "active_partitions": owned, "stalls": stalls}
        return self.json(body, status=200 if is_ready else 503)

    return app


#: How often the worker looks for stalls (see ``stream.journey.liveness``).
STALL_CHECK_S = 5.0
#: Exit status of a worker that stopped itself after a long stall (for the supervisor).
EXIT_STALLED = 70


class StallWatch:
    """The worker's stalls, as ``/live`` and ``/ready`` report them.

    Logs each stall when it starts, naming the partition; with
    ``worker.exit_after_stall_s`` set, exits the process once stuck that long,
    so a supervisor that restarts exited processes (``restart:`` in compose,
    systemd) acts on it.
    """

    def __init__(self, settings: Settings, find: Callable[[], list[Any]]) -> None:
        self.find = find
        self.exit_after_s = settings.worker.exit_after_stall_s
        self.stalls: list[Any] = []
        self.since: float | None = None

    def check(self) -> None:
        stalls = self.find()
        known = {str(s) for s in self.stalls}
        for stall in stalls:
            if str(stall) not in known:
                log.error("worker stuck: %s", stall)
        if stalls and not self.stalls:
            self.since = time.monotonic()
        if not stalls and self.stalls:
            log.info("worker no longer stuck")
            self.since = None
        self.stalls = stalls
        stuck_s = time.monotonic() - self.since if self.since is not None else 0.0
        if stalls and self.exit_after_s and stuck_s >= self.exit_after_s:
            log.critical(
                "stuck for %.0f s (worker.exit_after_stall_s): exiting so the "
                "supervisor restarts this worker",
                stuck_s,
            )
            logging.shutdown()
            os._exit(EXIT_STALLED)
