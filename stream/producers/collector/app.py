"""The collector's aiohttp app: its routes, and running it until a signal.

:func:`create_app` routes the Segment endpoints to :class:`Collector` and
mounts the email tracking endpoints with the collector as their publisher;
:func:`serve` runs it and closes the broker connection after the last answer.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from stream.producers import email_tracking
from stream.producers.collector.connection import BrokerConnection
from stream.producers.collector.handlers import Collector
from stream.producers.http import json_errors
from stream.producers.publisher import Publisher
from stream.settings import Settings

log = logging.getLogger(__name__)

CALL_PATHS = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/alias": "alias",
    "/v1/group": "group",
}
BATCH_PATH = "/v1/batch"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
KNOWN_PATHS = frozenset({*CALL_PATHS, BATCH_PATH, HEALTH_PATH, METRICS_PATH})
#: Answers under this prefix (the Segment endpoints) carry ``CORS_HEADERS``.
CORS_PREFIX = "/v1/"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}


def create_app(settings: Settings, publisher: Publisher | BrokerConnection) -> web.Application:
    """The collector's aiohttp application, publishing through ``publisher``.

    A :class:`BrokerConnection` that is not connected yet is started here; the
    caller keeps ownership of either and closes it after the app stopped.
    """
    if isinstance(publisher, BrokerConnection):
        connection = publisher
        connection.start()
    else:
        connection = BrokerConnection(settings.broker, publisher.ack_timeout_s, publisher)
    collector = Collector(settings, connection)
    errors = json_errors(KNOWN_PATHS, CORS_HEADERS, CORS_PREFIX)
    # The body is decompressed here, so the size limit applies to what it inflates to.
    app = web.Application(middlewares=[errors], handler_args={"auto_decompress": False})
    for path, call in CALL_PATHS.items():
        resource = app.router.add_resource(path)
        resource.add_route("POST", collector.call_handler(call))
        resource.add_route("OPTIONS", collector.preflight)
    batch = app.router.add_resource(BATCH_PATH)
    batch.add_route("POST", collector.batch)
    batch.add_route("OPTIONS", collector.preflight)
    app.router.add_get(HEALTH_PATH, collector.health)
    app.router.add_get(METRICS_PATH, collector.metrics)
    email_tracking.add_routes(app, collector, settings.dispatch)
    return app


async def serve(settings: Settings) -> None:
    """Run the collector until SIGINT or SIGTERM, then stop and close cleanly."""
    cfg = settings.collector
    connection = BrokerConnection(settings.broker, cfg.ack_timeout_s)
    app = create_app(settings, connection)
    runner = web.AppRunner(app, shutdown_timeout=connection.deadline_s + 1)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        log.info(
            "collector listening on http://%s:%s, publishing to %s at %s",
            cfg.host,
            cfg.port,
            settings.topics.touchpoints,
            connection.bootstrap,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping the collector")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await loop.run_in_executor(None, connection.close)


def run(settings: Settings) -> None:
    """Blocking entry point for ``journey collector``."""
    asyncio.run(serve(settings))
