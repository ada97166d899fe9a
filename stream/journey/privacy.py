"""Erase and export one customer (GDPR articles 17 and 15), on the worker's HTTP API.

``DELETE /customers/{id}`` puts an erase request on ``touchpoints.resolved``,
in the journey's partition, where the journey agent erases the journey
(``stream.journey.linking.erase``: state, identity records, orphan journeys)
and the dispatcher its Redis data (``stream.dispatch.erase``), each in order
with the journey's other touchpoints. ``GET /customers/{id}/export`` is routed
to the worker owning the journey and returns what the engine holds on it. Both
need the admin token (``stream.security``); ``id`` is the journey key, as in
``GET /customers/{id}/journey``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import faust
import orjson
import redis.asyncio as aioredis
from faust.web import Request, Response, View

from stream import contract
from stream.dispatch.erase import Eraser
from stream.dispatch.guards import Keys
from stream.faust_ext.fastpath import send_direct
from stream.journey import linking
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.journey.agent import JourneyShell


def erase_message(key: str, at: int) -> bytes:
    """The packed ``touchpoints.resolved`` message that erases journey ``key``."""
    return contract.dumps_groups([(key, [linking.erase_request(key, at)])])


def valid_key(key: str, settings: Settings) -> str | None:
    """Why ``key`` cannot name a journey, or None."""
    if not key or len(key) > settings.limits.max_key_chars:
        return f"a customer id has 1 to {settings.limits.max_key_chars} characters"
    if not key.isprintable():
        return "a customer id has printable characters only"
    return None


def export_of(shell: JourneyShell, key: str) -> dict[str, Any] | None:
    """The journey's full record and the aliases linked to it (None: no journey)."""
    state = shell.load(key)
    if state is None:
        return None
    return {
        "journey": orjson.loads(state.dumps()),
        "aliases": linking.aliases_of(state),
    }


def register_privacy_views(app: faust.App, shell: JourneyShell, settings: Settings) -> None:
    keys = Keys(settings.dispatch.key_prefix)
    retention_ms = int(settings.dispatch.sent_retention_s * 1000)
    redis_client: list[aioredis.Redis] = []

    def eraser() -> Eraser:
        if not redis_client:
            redis_client.append(
                aioredis.Redis.from_url(
                    settings.redis.url, socket_timeout=5, socket_connect_timeout=5
                )
            )
        return Eraser(redis_client[0], keys, retention_ms)

    @app.page("/customers/{customer_id}")
    class Customer(View):
        async def delete(self, request: Request, customer_id: str) -> Response:
            problem = valid_key(customer_id, settings)
            if problem:
                return self.json({"error": problem}, status=400)
            at = int(time.time() * 1000)
            partition = shell.resolved_partition(customer_id)
            fut = await send_direct(
                app, shell.topics.resolved, erase_message(customer_id, at), partition=partition
            )
            await fut
            return self.json(
                {"customer_id": customer_id, "erase_requested_at": at, "partition": partition},
                status=202,
            )

    @app.page("/customers/{customer_id}/export")
    @app.table_route(table=shell.table, match_info="customer_id")
    async def export(self: View, request: Request, customer_id: str) -> Response:
        problem = valid_key(customer_id, settings)
        if problem:
            return self.json({"error": problem}, status=400)
        held = export_of(shell, customer_id)
        emails = list(held["journey"].get("emails", [])) if held else []
        dispatcher = await eraser().export(customer_id, emails)
        return self.json(
            {
                "customer_id": customer_id,
                "exported_at": int(time.time() * 1000),
                "journey": held["journey"] if held else None,
                "aliases": held["aliases"] if held else [],
                "dispatcher": dispatcher,
            }
        )

    async def close_redis(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for client in redis_client:
            await client.aclose()

    app.on_before_shutdown.connect(close_redis)
