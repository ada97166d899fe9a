"""The collector's request handlers: authenticate, read, map, publish, answer.

:class:`Collector` serves the Segment calls (one call or a ``/v1/batch``),
``/health`` and ``/metrics``. A request is answered 200 only once the broker
acknowledged its touchpoints; invalid calls are answered 400 with their
reasons and dead-lettered, while the valid calls of the same batch are
published. It is also the :class:`~stream.producers.http.TouchpointPublisher`
the email tracking endpoints publish through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream import contract
from stream.contract import EventTimeWindow, InvalidTouchpoint, Touchpoint
from stream.observability import metrics
from stream.producers import segment
from stream.producers.collector.body import decode, read_body
from stream.producers.collector.connection import BrokerConnection
from stream.producers.collector.records import RejectedCall, dead_letter, touchpoint_records
from stream.producers.http import Refusal, json_response
from stream.producers.publisher import PublishError
from stream.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PROBE_TIMEOUT_S = 1.0


class Collector:
    """The request handlers, sharing settings and the broker connection."""

    def __init__(self, settings: Settings, connection: BrokerConnection) -> None:
        self.settings = settings
        self.config = settings.collector
        self.connection = connection
        j = settings.journey
        self.window = EventTimeWindow.of_seconds(j.max_future_s, j.max_past_s)

    def call_handler(self, call: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await self.accept(request, call)

        return handle

    async def batch(self, request: web.Request) -> web.Response:
        return await self.accept(request, None)

    async def accept(self, request: web.Request, call: str | None) -> web.Response:
        """Authenticate, read, map, publish and answer one request (``call`` None: a batch).

        Each call is held to the input limits and the event-time window
        (``stream.contract``); a call that fails, or that mapping fails on in
        any other way, is answered 400 and dead-lettered with the reason,
        while the other calls of a batch are published. A body that holds no
        calls (not JSON, not an object, no batch array) is answered 400 alone.
        """
        call_limit = self.config.max_call_bytes
        limit = call_limit if call else self.config.max_batch_bytes
        source = self._header_source(request)
        body = await read_body(request, limit)
        received_at_ms = int(time.time() * 1000)
        data = decode(body, authenticated=source is not None)
        if source is None:
            source = self._body_source(data)
        calls: list[tuple[int | None, Any, bytes]]
        if call is not None:
            calls = [(None, {**data, "type": call}, body)]
        else:
            calls = self._batch_calls(data)
        accepted: list[Touchpoint] = []
        rejected: list[RejectedCall] = []
        for index, message, raw in calls:
            try:
                if len(raw) > call_limit:
                    raise InvalidTouchpoint(
                        f"call is {len(raw)} bytes, over the {call_limit}-byte limit",
                        None,
                        "event_size",
                    )
                tp = segment.to_touchpoint(
                    message,
                    source=source,
                    event_types=self.config.event_types,
                    received_at_ms=received_at_ms,
                    limits=self.settings.limits,
                    window=self.window,
                    size=len(raw),
                )
            except InvalidTouchpoint as exc:
                rejected.append(RejectedCall.of(exc, raw, index, message))
                continue
            except Exception as exc:
                # A bug, not the caller's fault, but retrying cannot help: kept for replay.
                log.exception("mapping a call from source %s failed (index %s)", source, index)
                reason = f"call could not be processed: {type(exc).__name__}: {exc}"
                failed = InvalidTouchpoint(reason)
                rejected.append(
                    replace(RejectedCall.of(failed, raw, index, message), label="error")
                )
                continue
            accepted.append(tp)
        await self._publish(accepted, rejected)
        for tp in accepted:
            metrics.COLLECTOR_EVENTS.labels(type=metrics.type_label(tp)).inc()
        if rejected:
            for r in rejected:
                log.warning(
                    "rejected a call from source %s (index %s, messageId %r): %s",
                    source,
                    r.index,
                    r.message_id,
                    r.reason,
                )
            if call is not None:
                raise Refusal(400, "invalid_message", rejected[0].reason)
            raise Refusal(
                400,
                "invalid_message",
                f"{len(rejected)} of {len(calls)} calls rejected",
                accepted=len(accepted),
                rejected=[
                    {"index": r.index, "messageId": r.message_id, "reason": r.reason}
                    for r in rejected
                ],
            )
        return json_response(200, {"success": True})

    def _header_source(self, request: web.Request) -> str | None:
        """The source of the Basic-auth write key; None when no Authorization header."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise Refusal(
                401, "unauthorized", "Authorization must be HTTP Basic, write key as user"
            )
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Refusal(401, "unauthorized", "malformed HTTP Basic credentials") from None
        return self._source(decoded.partition(":")[0])

    def _body_source(self, data: Mapping[str, Any]) -> str:
        key = data.get("writeKey")
        if not isinstance(key, str):
            raise Refusal(
                401, "unauthorized", "missing write key (HTTP Basic user or writeKey field)"
            )
        return self._source(key)

    def _source(self, write_key: str) -> str:
        if not write_key:
            raise Refusal(401, "unauthorized", "missing write key (HTTP Basic user)")
        source = self.config.write_keys.get(write_key)
        if source is None:
            raise Refusal(401, "unauthorized", "unknown write key")
        return source

    def _batch_calls(self, data: Mapping[str, Any]) -> list[tuple[int | None, Any, bytes]]:
        """(index, call with the batch's context and sentAt under its own, its bytes).

        A call's bytes are its JSON re-encoded (``contract.encode_rejected``:
        a call too deep for JSON encoders is cut at the depth limit).
        """
        batch = data.get("batch")
        if not isinstance(batch, list):
            raise Refusal(400, "invalid_request", "batch must be an array of calls")
        shared = data.get("context")
        if shared is not None and not isinstance(shared, dict):
            raise Refusal(400, "invalid_request", "context must be an object")
        # Segment's SDKs send the clock at sending once per batch (skew correction).
        sent_at = data.get("sentAt")
        calls: list[tuple[int | None, Any, bytes]] = []
        for index, item in enumerate(batch):
            raw = contract.encode_rejected(item, self.settings.limits)
            if isinstance(item, dict):
                own = item.get("context")
                if shared and (own is None or isinstance(own, dict)):
                    item = {**item, "context": {**shared, **(own or {})}}
                if sent_at is not None and item.get("sentAt") is None:
                    item = {**item, "sentAt": sent_at}
            calls.append((index, item, raw))
        return calls

    async def publish(self, touchpoints: Sequence[Touchpoint]) -> None:
        """Publish ``touchpoints``; return once acknowledged, else raise a 503 Refusal."""
        await self._publish(touchpoints, [])

    async def _publish(
        self, accepted: Sequence[Touchpoint], rejected: Sequence[RejectedCall]
    ) -> None:
        topics = self.settings.topics
        partitions = await self.connection.partition_count(topics.touchpoints) if accepted else None
        records = touchpoint_records(topics.touchpoints, accepted, partitions)
        dead = [
            dead_letter(topics.dlq, r, self.settings.limits.dead_letter_bytes) for r in rejected
        ]
        if not records and not dead:
            return
        try:
            await self.connection.publish(records, dead)
        except PublishError as exc:
            log.error("answering 503: %s", exc)
            raise Refusal(503, "broker_unavailable", str(exc)) from None
        for r in rejected:
            metrics.DLQ.labels(reason=r.label).inc()

    async def health(self, request: web.Request) -> web.Response:
        broker = self.connection.status()
        broker["reachable"] = await _reachable(self.connection.bootstrap)
        ok = broker["connected"] and broker["reachable"]
        return json_response(200, {"status": "ok" if ok else "degraded", "broker": broker})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204)


async def _reachable(bootstrap: str) -> bool:
    """Whether any bootstrap server accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), HEALTH_PROBE_TIMEOUT_S
            )
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
    return False
