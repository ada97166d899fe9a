"""The web collector: a Segment-compatible HTTP service -> ``touchpoints``.

Where a web or app event enters the engine. Segment's and RudderStack's SDKs
post to ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``,
``/v1/alias``, ``/v1/group`` and ``/v1/batch`` with the write key as the HTTP
Basic user (or, from browsers, as a ``writeKey`` body field). Each call is
mapped by :func:`stream.producers.segment.to_touchpoint`; the touchpoints of a
request are grouped by routing key, one Kafka record (an object, or an array
for several) per key, and the request is answered 200 only once the broker
acknowledged them. Invalid calls are answered 400 with their reasons and their
original JSON goes to the dead-letter topic; valid calls of the same batch are
still published. A broker that does not acknowledge in time means 503, which
the SDKs retry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import signal
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream import contract
from stream.contract import EventTimeWindow, InvalidTouchpoint, Touchpoint
from stream.observability import metrics
from stream.producers import segment
from stream.producers.publisher import Publisher, PublishError, Record, packed_records
from stream.settings import BrokerSettings, Settings

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

DLQ_SOURCE = b"collector"
#: Kafka's default message.max.bytes is ~1 MB; a routing key's events are split
#: into several records (same key, so still in order) well below it.
MAX_RECORD_BYTES = 512 * 1024
READ_CHUNK_BYTES = 64 * 1024
#: Sent with 503: Segment's SDKs then hold the batch and retry without using up
#: their retry count, which suits a broker outage.
RETRY_AFTER_S = 5
HEALTH_PROBE_TIMEOUT_S = 1.0
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}

HeaderRecord = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


class Refusal(Exception):
    """A request answered with an error status and a JSON reason."""

    def __init__(self, status: int, code: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.extra = extra

    def response(self) -> web.Response:
        # "code" and "message" are what Segment's SDKs read from an error body.
        body = {"success": False, "error": self.reason, "code": self.code, "message": self.reason}
        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else None
        return _json(self.status, {**body, **self.extra}, headers)


@dataclass(frozen=True, slots=True)
class RejectedCall:
    """A call that did not become a touchpoint, with the JSON it arrived as."""

    reason: str
    raw: bytes
    index: int | None = None
    message_id: str | int | None = None
    #: Bounded metrics label (``contract.reason_label``).
    label: str = "malformed"

    @classmethod
    def of(
        cls, exc: InvalidTouchpoint, raw: bytes, index: int | None, message: Any
    ) -> RejectedCall:
        label = contract.reason_label(exc.field, exc.limit)
        return cls(contract.reason_text(exc.reason), raw, index, message_id_of(message), label)


def message_id_of(message: Any) -> str | int | None:
    """A call's ``messageId`` to echo in answers and logs: text (cut) or an integer only."""
    value = message.get("messageId") if isinstance(message, dict) else None
    if isinstance(value, str):
        return value[: contract.DEFAULT_LIMITS.max_key_chars]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if contract.INT64_MIN <= value <= contract.INT64_MAX else None
    return None


class BrokerConnection:
    """The collector's :class:`Publisher`, connected in the background.

    kafka-python's producer bootstraps in its constructor, blocking for up to
    30 s and raising when no broker answers. Creating it on a thread lets the
    collector start, answer 503 and report its state while Kafka is down, and
    begin publishing as soon as Kafka is up.
    """

    def __init__(
        self, broker: BrokerSettings, ack_timeout_s: float, publisher: Publisher | None = None
    ) -> None:
        self.bootstrap = broker.bootstrap
        self.ack_timeout_s = ack_timeout_s
        # Publisher.publish may wait for metadata, the flush and each future in
        # turn; past this the request is answered 503 whatever the thread does.
        self.deadline_s = 2 * ack_timeout_s + 1
        self._broker = broker
        self._publisher = publisher
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_ack_at: float | None = None
        self._partitions: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    def start(self) -> None:
        """Begin connecting on a daemon thread (a no-op once connected)."""
        if self._publisher is not None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._connect, name="collector-connect", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        delay = 0.5
        while not self._closed.is_set():
            try:
                publisher = Publisher(self._broker, self.ack_timeout_s)
            except Exception as exc:  # any failure to bootstrap: keep trying
                self.last_error = f"cannot connect to the broker at {self.bootstrap}: {exc!r}"
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            with self._lock:
                if self._closed.is_set():
                    publisher.close()
                    return
                self._publisher = publisher
            log.info("connected to the broker at %s", self.bootstrap)
            return

    async def publish(
        self, records: Sequence[Record], dead_letters: Sequence[HeaderRecord]
    ) -> None:
        """Publish ``records`` and ``dead_letters``; return once the broker acknowledged all.

        Raises :class:`PublishError` when not connected, on a broker error, or
        past ``deadline_s``.
        """
        publisher = self._publisher
        if publisher is None:
            raise PublishError(
                f"not connected to the broker at {self.bootstrap}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        loop = asyncio.get_running_loop()
        sends: list[asyncio.Future[Any]] = []
        if records:
            sends.append(asyncio.ensure_future(publisher.publish(records)))
        if dead_letters:
            sends.append(
                loop.run_in_executor(None, self._send_with_headers, publisher, dead_letters)
            )
        try:
            await asyncio.wait_for(asyncio.gather(*sends), timeout=self.deadline_s)
        except TimeoutError:
            self.last_error = f"broker did not acknowledge within {self.deadline_s:g}s"
            raise PublishError(self.last_error) from None
        except PublishError as exc:
            self.last_error = str(exc)
            raise
        self.last_ack_at = time.time()

    async def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic`` (cached), or None while unknown (not connected)."""
        count = self._partitions.get(topic)
        publisher = self._publisher
        if count is None and publisher is not None:
            loop = asyncio.get_running_loop()
            try:
                count = await asyncio.wait_for(
                    loop.run_in_executor(None, publisher.partition_count, topic),
                    timeout=self.deadline_s,
                )
            except (PublishError, KafkaError, TimeoutError) as exc:
                log.warning("partitions of %s unknown (%r): one record per shopper", topic, exc)
                return None
            self._partitions[topic] = count
        return count

    def _send_with_headers(self, publisher: Publisher, records: Sequence[HeaderRecord]) -> None:
        # Publisher's Record has no headers and the dead-letter topic needs them,
        # so these go straight to its producer, with the same acknowledgement rules.
        producer = publisher._producer
        try:
            futures = [
                producer.send(topic, key=key, value=value, headers=headers)
                for topic, key, value, headers in records
            ]
            producer.flush(timeout=self.ack_timeout_s)
            for fut in futures:
                fut.get(timeout=self.ack_timeout_s)
        except KafkaError as exc:
            raise PublishError(f"broker did not acknowledge: {exc!r}") from exc

    def status(self) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "connected": self.connected,
            "last_ack_at": self.last_ack_at,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        """Stop connecting and close the publisher (blocks up to ``ack_timeout_s``)."""
        with self._lock:
            self._closed.set()
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()


def touchpoint_records(
    topic: str, tps: Sequence[Touchpoint], partitions: int | None = None
) -> list[Record]:
    """The records of one request's touchpoints.

    With the topic's partition count known: one record per destination
    partition (``packed_records``; a batch of many shoppers costs consumers
    one message per partition). Otherwise one record per routing key
    (first-seen order): an object, or an array for several. Events keep their
    order within a key; a record is split only past ``MAX_RECORD_BYTES``.
    """
    if partitions:
        return packed_records(topic, tps, partitions, MAX_RECORD_BYTES)
    groups: dict[str, list[Touchpoint]] = {}
    for tp in tps:
        groups.setdefault(tp.routing_key, []).append(tp)
    return [
        (topic, key.encode(), value) for key, group in groups.items() for value in _values(group)
    ]


def _values(group: Sequence[Touchpoint]) -> list[bytes]:
    if len(group) == 1:
        return [contract.dumps(group[0])]
    value = contract.dumps_many(group)
    if len(value) <= MAX_RECORD_BYTES:
        return [value]
    mid = len(group) // 2
    return _values(group[:mid]) + _values(group[mid:])


def dead_letter(topic: str, rejected: RejectedCall, max_bytes: int) -> HeaderRecord:
    """The dead-letter record of a rejected call: its original JSON (a prefix past
    ``max_bytes``, see ``contract.dead_letter``), the reason in headers."""
    value, extra = contract.dead_letter(rejected.raw, max_bytes)
    headers = [
        ("reason", contract.reason_text(rejected.reason).encode()),
        ("source", DLQ_SOURCE),
        ("stage", DLQ_SOURCE),
    ]
    if rejected.index is not None:
        headers.append(("index", str(rejected.index).encode()))
    headers.extend(extra.items())
    return (topic, None, value, headers)


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
        data = _decode(body, authenticated=source is not None)
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
        return _json(200, {"success": True})

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
        return _json(200, {"status": "ok" if ok else "degraded", "broker": broker})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204)


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
    # The body is decompressed here, so the size limit applies to what it inflates to.
    app = web.Application(middlewares=[_json_errors], handler_args={"auto_decompress": False})
    for path, call in CALL_PATHS.items():
        resource = app.router.add_resource(path)
        resource.add_route("POST", collector.call_handler(call))
        resource.add_route("OPTIONS", collector.preflight)
    batch = app.router.add_resource(BATCH_PATH)
    batch.add_route("POST", collector.batch)
    batch.add_route("OPTIONS", collector.preflight)
    app.router.add_get(HEALTH_PATH, collector.health)
    app.router.add_get(METRICS_PATH, collector.metrics)
    from stream.producers import email_tracking

    email_tracking.add_routes(app, collector)
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


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes after gzip decompression, else 413."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise Refusal(415, "unsupported_encoding", f"Content-Encoding {encoding!r} not supported")
    body = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    if encoding != "gzip":
        return bytes(body)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(bytes(body), limit + 1)
    except zlib.error as exc:
        raise Refusal(400, "invalid_request", f"body is not valid gzip: {exc}") from None
    if len(data) > limit:
        raise _too_large(len(data), limit, "decompressed ")
    if not inflater.eof or inflater.unused_data:
        raise Refusal(400, "invalid_request", "gzip body is truncated or has trailing data")
    return data


def _too_large(size: int, limit: int, what: str = "") -> Refusal:
    return Refusal(
        413, "payload_too_large", f"{what}body is over the {limit}-byte limit ({size}+ bytes)"
    )


def _decode(body: bytes, *, authenticated: bool) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        problem = f"body is not valid JSON: {exc}"
    else:
        if isinstance(data, dict):
            return data
        problem = f"body must be a JSON object, got {type(data).__name__}"
    if not authenticated:
        # Without a Basic header the write key can only be in the body.
        raise Refusal(
            401, "unauthorized", f"missing write key: no Authorization header and {problem}"
        )
    raise Refusal(400, "invalid_request", problem)


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


def _endpoint_label(request: web.Request) -> str:
    """A bounded metrics label: the route, or ``other`` for paths the collector lacks."""
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    return request.path if request.path in KNOWN_PATHS else "other"


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer as JSON (404 and 405 included), counted by endpoint and status."""
    endpoint = _endpoint_label(request)
    response: web.StreamResponse
    try:
        response = await handler(request)
    except Refusal as exc:
        response = exc.response()
    except web.HTTPException as exc:
        response = Refusal(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason).response()
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = Refusal(500, "internal_error", "internal error").response()
    metrics.COLLECTOR_REQUESTS.labels(endpoint=endpoint, status=str(response.status)).inc()
    if request.path.startswith("/v1/"):
        response.headers.update(CORS_HEADERS)
    return response
