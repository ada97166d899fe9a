"""The Faust application: topics, tables and agents wired from one Settings object.

This module is plumbing only. The rules live in pure modules
(``stream.contract``, ``stream.journey.*``); agents move data between topics,
tables and those functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from stream import security
from stream.settings import BrokerSettings, Settings

log = logging.getLogger(__name__)


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
    links: faust.TopicT


def advertised_host(bind_host: str) -> str:
    """The host other workers reach this one at (Faust routes table queries there)."""
    if bind_host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return bind_host


def broker_ssl_context(b: BrokerSettings) -> ssl.SSLContext | None:
    """TLS context for ``SSL`` and ``SASL_SSL`` (``ssl_cafile``, else the system's CAs)."""
    if b.security_protocol.upper() in ("SSL", "SASL_SSL"):
        return ssl.create_default_context(cafile=b.ssl_cafile or None)
    return None


def broker_credentials(b: BrokerSettings) -> faust.types.auth.CredentialsT | None:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    context = broker_ssl_context(b)
    if b.sasl_mechanism:
        return faust.SASLCredentials(
            username=b.sasl_username,
            password=b.sasl_password,
            mechanism=b.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app(
    settings: Settings, *, store: str | None = None, web_port: int | None = None
) -> faust.App:
    """A configured, empty Faust app (no agents)."""
    w = settings.worker
    b = settings.broker
    port = web_port if web_port is not None else w.web_port
    datadir = settings.path(w.data_dir)
    datadir.mkdir(parents=True, exist_ok=True)
    if not w.recovery_consistency_check:
        recover_to_fetched_end(b.bootstrap)
    flush_waits_for_buffer()
    consumer_fetch_max_wait(w.fetch_max_wait_ms)
    rocksdb_without_wal()
    seek_uncommitted_to_beginning()
    seek_with_flow_stopped()
    log_offset_gaps()
    app = faust.App(
        w.app_id,
        broker=",".join(f"kafka://{h}" for h in b.bootstrap.split(",")),
        broker_credentials=broker_credentials(b),
        store=store or w.store,
        datadir=str(datadir),
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        table_standby_replicas=w.standby_replicas,
        broker_session_timeout=b.session_timeout_s,
        broker_heartbeat_interval=b.heartbeat_interval_s,
        broker_rebalance_timeout=b.rebalance_timeout_s,
        producer_acks=-1,
        # Changelog writes, forwarded batches and transitions are many small
        # records: a few ms of linger and larger batches mean far fewer requests.
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        producer_compression_type=producer_compression(w.compression),
        key_serializer="raw",
        value_serializer="raw",
        web_host=w.web_host,
        web_port=port,
        web_in_thread=False,
        canonical_url=f"http://{advertised_host(w.web_host)}:{port}",
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=w.max_poll_records,
        stream_wait_empty=False,
        recovery_consistency_check=w.recovery_consistency_check,
        # Faust's own views would show table contents (/table) and assignments to
        # anyone; the engine's views are guarded by API tokens instead.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
    )
    app.web.web_app.middlewares.append(  # type: ignore[attr-defined]
        security.middleware(w.api_tokens)
    )
    return app


#: Codecs both Kafka clients here read with the installed libraries (aiokafka
#: through cramjam, kafka-python, which ``stream.topics.read_topic`` uses,
#: through zstandard and the standard library).
COMPRESSION_TYPES = ("zstd", "gzip", "none")


def producer_compression(name: str) -> str | None:
    """The producer's ``compression_type`` for ``worker.compression`` (None: off)."""
    if name not in COMPRESSION_TYPES:
        raise ValueError(f"worker.compression must be one of {COMPRESSION_TYPES}, not {name!r}")
    return None if name == "none" else name


async def fetched_end_offsets(bootstrap: str, ends: dict[Any, int]) -> dict[Any, int]:
    """End offsets as fetch responses report them (the high watermark), per partition.

    ``ends`` maps partitions to the end offsets ListOffsets gave; returns
    ``max(end, high watermark)`` for each, read from one record at ``end - 1``.
    Why: the embedded Tansu broker under-reports ListOffsets; its fetch
    responses carry the true end (docs/faust-internals.md, "Table recovery on
    the embedded broker").
    """
    from aiokafka import AIOKafkaConsumer

    wanted = {tp: end for tp, end in ends.items() if end > 0}
    if not wanted:
        return dict(ends)
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=1024,
    )
    await probe.start()
    try:
        probe.assign(list(wanted))
        for tp, end in wanted.items():
            probe.seek(tp, end - 1)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if all(probe.highwater(tp) is not None for tp in wanted):
                break
            await probe.getmany(timeout_ms=200, max_records=1)
        out = dict(ends)
        for tp, end in wanted.items():
            out[tp] = max(end, probe.highwater(tp) or end)
        return out
    finally:
        await probe.stop()


_recovery_patched: list[str] = []


def recover_to_fetched_end(bootstrap: str) -> None:
    """Make table recovery read changelogs to their fetched end (embedded broker only).

    Patches ``faust.tables.recovery.Recovery._build_highwaters`` to take each
    changelog's end from :func:`fetched_end_offsets`; applied only when
    ``worker.recovery_consistency_check`` is off, as the embedded stack sets it.
    Why: Faust stops at the ListOffsets end, which the embedded broker
    under-reports, so a new owner would miss the journeys written last.
    See docs/faust-internals.md, "Table recovery on the embedded broker".
    """
    if _recovery_patched:
        return
    from faust.tables.recovery import Recovery

    original = Recovery._build_highwaters

    async def _build_highwaters(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await original(self, consumer, tps, destination, title)
        # Faust keeps "last offset" (end - 1); -1 for an empty partition.
        ends = {tp: destination[tp] + 1 for tp in tps if destination.get(tp, -1) >= 0}
        fetched = await fetched_end_offsets(bootstrap, ends)
        for tp, end in fetched.items():
            if end - 1 != destination[tp]:
                log.info("changelog %s ends at %d, not %d", tp, end, destination[tp] + 1)
            destination[tp] = end - 1

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    _recovery_patched.append(bootstrap)


def consumer_fetch_max_wait(ms: int) -> None:
    """Give the worker's consumer ``fetch_max_wait_ms=ms`` (``worker.fetch_max_wait_ms``).

    Patches ``AIOKafkaConsumerThread._create_worker_consumer`` of Faust's
    aiokafka driver, which hard-codes 1,500 ms. Why: a broker that answers a
    waiting fetch only when the wait runs out (the embedded one) would deliver
    what ingest forwards to the journey agent that late. See
    docs/faust-internals.md, "Consumer fetch wait".
    """
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    original = getattr(create, "__wrapped__", create)

    @functools.wraps(original)
    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # Read by the consumer's start(), which builds its fetcher.
        consumer._fetch_max_wait_ms = ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


async def rewind_to_committed(consumer: Any, changelogs: Any) -> dict[Any, int | None]:
    """Seek an aiokafka consumer's partitions to their committed offsets, the
    uncommitted ones (but those of ``changelogs``) to their beginning.

    Returns the committed offsets, as aiokafka's ``seek_to_committed`` does.
    """
    committed: dict[Any, int | None] = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
        log.info("no committed offset; reading from the beginning: %s", sorted(fresh))
    return committed


def seek_uncommitted_to_beginning() -> None:
    """Make Faust's "seek to committed offsets" rewind partitions without a commit too.

    Patches ``seek_to_committed`` of Faust's ``AIOKafkaConsumerThread`` to run
    :func:`rewind_to_committed`: input partitions without a committed offset
    (or committed at 0) go to their beginning; changelog partitions are left
    to recovery. Why: Faust drops fetched records when a rebalance stops its
    flow and relies on this seek to re-read them, but aiokafka seeks only
    offsets above 0, so such a partition stayed past the dropped records.
    See docs/faust-internals.md, "Seek to committed offsets without a commit".
    """
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    if getattr(thread.seek_to_committed, "_rewinds_uncommitted", False):
        return

    async def seek_to_committed(self: Any) -> Any:
        changelogs = self.consumer.app.tables.changelog_topics
        return await self.call_thread(rewind_to_committed, self._ensure_consumer(), changelogs)

    seek_to_committed._rewinds_uncommitted = True  # type: ignore[attr-defined]
    thread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


#: Longest a seek waits for the fetch loop to stop handing out records.
PARK_TIMEOUT_S = 10.0


def seek_with_flow_stopped() -> None:
    """Make Faust's seek to committed offsets stop the fetch loop first.

    Patches ``faust.transport.consumer.Consumer.perform_seek`` (and
    ``_wait_next_records``, to see when the fetch loop is parked): a seek made
    while the flow runs stops it, clears the agents' queues, waits (at most
    ``PARK_TIMEOUT_S``) until the fetch loop waits for the flow, seeks, then
    resumes; a seek made with the flow stopped is unchanged. Why: after
    recovery the flow is already running, so a fetch made before the seek
    could be handed out after it and Faust would skip records as a hole.
    See docs/faust-internals.md, "Seek while the fetch loop runs".
    """
    from faust.transport.consumer import Consumer

    if getattr(Consumer.perform_seek, "_stops_flow", False):
        return
    original_seek = Consumer.perform_seek
    original_wait = Consumer._wait_next_records

    def parked(consumer: Any) -> asyncio.Event:
        event: asyncio.Event | None = consumer.__dict__.get("_journey_parked")
        if event is None:
            event = consumer.__dict__["_journey_parked"] = asyncio.Event()
        return event

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        # Entered with the flow stopped: the loop waits for the flow and holds no records.
        if not self.flow_active:
            parked(self).set()
        try:
            return await original_wait(self, timeout)
        finally:
            parked(self).clear()

    async def perform_seek(self: Any) -> None:
        app = self.app
        fetcher = app._fetcher
        if not self.flow_active or not fetcher.started or fetcher.should_stop:
            await original_seek(self)
            return
        self.stop_flow()
        app.flow_control.suspend()
        app.flow_control.clear()
        try:
            try:
                await asyncio.wait_for(parked(self).wait(), timeout=PARK_TIMEOUT_S)
            except TimeoutError:
                log.warning("fetch loop still busy after %.0f s; seeking anyway", PARK_TIMEOUT_S)
            await original_seek(self)
        finally:
            app.flow_control.resume()
            self.resume_flow()

    perform_seek._stops_flow = True  # type: ignore[attr-defined]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


def log_offset_gaps() -> None:
    """Log a warning when the worker's consumer meets a hole in a partition's offsets.

    Wraps ``faust.transport.consumer.Consumer._add_gap``; behaviour is
    unchanged. Why: Faust silently counts offsets it never received as done,
    and the engine's topics are neither compacted nor transactional, so a hole
    means skipped records. See docs/faust-internals.md, "Offset holes".
    """
    from faust.transport.consumer import Consumer

    original = Consumer._add_gap
    if getattr(original, "_logs", False):
        return

    @functools.wraps(original)
    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        log.warning("%s: offsets %d to %d skipped (never received)", tp, offset_from, offset_to - 1)
        await original(self, tp, offset_from, offset_to)

    _add_gap._logs = True  # type: ignore[attr-defined]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]


def rocksdb_without_wal() -> None:
    """Open table stores with RocksDB's write-ahead log off, as Kafka Streams does.

    Patches ``faust.stores.rocksdb.RocksDBOptions.open`` (rocksdict stores,
    read-write). Why: the changelog topic is the durable copy and the store
    keeps its changelog offset beside the values, so a killed worker loses
    both together and recovery replays from the earlier offset; the log only
    made every put slower. See docs/faust-internals.md, "RocksDB write-ahead log".
    """
    from faust.stores import rocksdb as driver

    open_ = driver.RocksDBOptions.open
    if getattr(open_, "_without_wal", False):
        return

    @functools.wraps(open_)
    def open_without_wal(self: Any, path: Any, *, read_only: bool = False) -> Any:
        db = open_(self, path, read_only=read_only)
        if self.use_rocksdict and not read_only:
            import rocksdict

            options = rocksdict.WriteOptions()
            # A property (rocksdict's stub calls it a method; calling it fails).
            options.disable_wal = True  # type: ignore[method-assign,assignment]
            db.set_write_options(options)
        return db

    open_without_wal._without_wal = True  # type: ignore[attr-defined]
    driver.RocksDBOptions.open = open_without_wal  # type: ignore[method-assign]


def flush_waits_for_buffer() -> None:
    """Make Faust's producer flush wait until its buffer is empty (before every commit).

    Patches ``faust.transport.producer.ProducerBuffer`` (``put``,
    ``_send_pending``, ``flush``): ``flush`` returns once every message queued
    before the call was handed to aiokafka, whose own flush then waits for
    delivery; it raises if the buffer stops with messages unsent. Why: Faust's
    flush gives up after 0.1 s without progress and the offset commit goes
    ahead, so a killed worker could lose state changes of committed input.
    See docs/faust-internals.md, "Producer flush before commit".
    """
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer, "_drains_on_flush", False):
        return
    original_flush = ProducerBuffer.flush
    original_put = ProducerBuffer.put
    original_send = ProducerBuffer._send_pending

    def put(self: Any, fut: Any) -> None:
        original_put(self, fut)
        self._queued += 1

    async def _send_pending(self: Any, fut: Any) -> None:
        await original_send(self, fut)
        self._handed += 1

    async def flush(self: Any) -> None:
        app = self.app
        if app is None or app.conf.producer_threaded or self.should_stop:
            # Threaded producers have their own queue; a stopping buffer sends no more.
            await original_flush(self)
            return
        target = self._queued
        started = time.monotonic()
        warned = False
        while (handed := self._handed) < target:
            if self.crashed or self.should_stop:
                unsent = target - handed
                raise RuntimeError(f"producer buffer stopped with {unsent} messages unsent")
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.5)
            if not warned and time.monotonic() - started > 10.0:
                warned = True
                log.warning("producer flush waiting for %d buffered messages", target - handed)

    # Messages put into and handed on by each buffer (class defaults, per instance once counted).
    ProducerBuffer._queued = 0  # type: ignore[attr-defined]
    ProducerBuffer._handed = 0  # type: ignore[attr-defined]
    ProducerBuffer.put = put  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]
    ProducerBuffer._drains_on_flush = True  # type: ignore[attr-defined]


class Handoff:
    """Decoded ``touchpoints.resolved`` values this process produced, by offset.

    The ingest agent packs and sends them; the journey agent, usually in the
    same worker, reads them back a moment later and takes the touchpoints from
    here instead of decoding the bytes again. An entry is used only if the
    bytes read are the bytes sent, so a wrong offset can cost a decode, never
    data. Bounded; stale entries (partitions another worker consumes) fall out.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[tuple[int, int], tuple[bytes, Any]] = {}
        self._bytes = 0

    def put(self, partition: int, offset: int, value: bytes, groups: Any) -> None:
        entries = self._entries
        entries[partition, offset] = (value, groups)
        self._bytes += len(value)
        while self._bytes > self.max_bytes and entries:
            old, _ = entries.pop(next(iter(entries)))
            self._bytes -= len(old)

    def take(self, partition: int, offset: int, value: bytes) -> Any:
        entry = self._entries.pop((partition, offset), None)
        if entry is None:
            return None
        self._bytes -= len(entry[0])
        return entry[1] if entry[0] == value else None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


async def send_direct(
    app: Any,
    topic: faust.TopicT,
    value: bytes,
    *,
    key: bytes | None = None,
    partition: int | None = None,
) -> asyncio.Future[Any]:
    """Hand one record straight to the producer; returns its delivery future.

    Faust's flush before each offset commit still waits for it (aiokafka's
    flush), so records go out before their input's offsets are committed;
    Faust's messages-sent sensor does not count it. Why: ``topic.send`` costs
    several times aiokafka's ``send`` per record (pending message, buffer,
    sensors). See docs/faust-internals.md, "Sends and table writes outside
    Faust's send path".
    """
    fut: asyncio.Future[Any] = await app.producer.send(
        topic.get_topic_name(), key, value, partition, None, None
    )
    return fut


def key_partitions(app: Any, topic: str, limit: int = 1_000_000) -> Callable[[str], int]:
    """The partition of ``topic`` a key hashes to (the producer's partitioner), cached.

    Holds at most ``limit`` keys (cleared when full). Why: aiokafka's murmur2
    is pure Python; sending with the partition from here skips it. See
    docs/faust-internals.md, "Sends and table writes outside Faust's send path".
    """
    cache: dict[str, int] = {}

    def partition(key: str) -> int:
        p = cache.get(key)
        if p is None:
            if len(cache) >= limit:
                cache.clear()
            p = cache[key] = int(app.producer.key_partition(topic, key.encode()).partition)
        return p

    return partition


def read_raw(table: Any, key: bytes) -> bytes | None:
    """A raw (bytes) table value, or None, read straight from the store.

    Same value as ``table.get(key)`` (the store reads the current event's
    partition either way), through the store's private ``_get`` where it has
    one. Why: it skips the per-read sensors, the separate "contains" lookup and
    the KeyError of a miss, and most hot-path reads are misses. See
    docs/faust-internals.md, "Sends and table writes outside Faust's send path".
    """
    get = getattr(table.data, "_get", None)  # stores that serialise (RocksDB)
    if get is None:
        value = table.get(key)
        return value if value is None or isinstance(value, bytes) else bytes(value)
    value = get(key)
    return value if value is None or isinstance(value, bytes) else bytes(value)


async def write_raw(
    app: Any, table: Any, key: bytes, value: bytes, partition: int
) -> asyncio.Future[Any]:
    """``table[key] = value`` for a raw (bytes) table, without Faust's per-record send path.

    The same two writes as a table write: the store (which writes to the
    current event's partition: ``partition`` must be it), then the changelog
    record on that partition through :func:`send_direct`. Pass the returned
    future (the last one per partition is enough: delivery is in order) to
    :func:`changelog_persisted`. Faust's table-set sensor does not count these
    writes. See docs/faust-internals.md, "Sends and table writes outside
    Faust's send path".
    """
    table.data[key] = value
    return await send_direct(app, table.changelog_topic, value, key=key, partition=partition)


def changelog_persisted(table: Any, fut: asyncio.Future[Any]) -> None:
    """When ``fut`` (a :func:`write_raw` record) is delivered, record its offset in the store.

    What Faust's ``Table._on_changelog_sent`` does at least once: recovery
    starts after this offset.
    """

    def persisted(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            # As with Faust's own changelog sends: logged, the offset not recorded.
            log.error("changelog send failed for table %s: %r", table.name, exc)
            return
        res = done.result()
        table.data.set_persisted_offset(res.topic_partition, res.offset)

    fut.add_done_callback(persisted)


def cached_labels_monitor(monitor: Any) -> Any:
    """Faust's Prometheus monitor with its per-record label lookups cached.

    Same metrics and values as ``faust.sensors.prometheus.PrometheusMonitor``.
    Why: it calls ``labels()`` (a lock and a lookup keyed by strings built per
    call) for every message, event, table operation and send. See
    docs/faust-internals.md, "Prometheus monitor label lookups".
    """
    from faust.sensors.monitor import Monitor
    from faust.sensors.prometheus import PrometheusMonitor

    class CachedLabelsMonitor(PrometheusMonitor):
        def __init__(self, metrics: Any) -> None:
            super().__init__(metrics=metrics)
            self._label_children: dict[Any, Any] = {}

        def _child(self, key: Any, make: Any) -> Any:
            child = self._label_children.get(key)
            if child is None:
                child = self._label_children[key] = make()
            return child

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            Monitor.on_message_in(self, tp, offset, message)
            mt = self._metrics
            mt.messages_received.inc()
            mt.active_messages.inc()
            self._child(
                ("in", tp.topic),
                lambda: mt.messages_received_per_topics.labels(topic=tp.topic),
            ).inc()
            self._child(
                ("inp", tp),
                lambda: mt.messages_received_per_topics_partition.labels(
                    topic=tp.topic, partition=tp.partition
                ),
            ).set(offset)

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
            state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
            mt = self._metrics
            mt.total_events.inc()
            mt.total_active_events.inc()
            self._child(
                ("stream", id(stream)),
                lambda: mt.total_events_per_stream.labels(
                    stream=f"stream.{self._stream_label(stream)}.events"
                ),
            ).inc()
            return state

        def on_table_get(self, table: Any, key: Any) -> None:
            Monitor.on_table_get(self, table, key)
            self._table_op(table, self.KEYS_RETRIEVED).inc()

        def on_table_set(self, table: Any, key: Any, value: Any) -> None:
            Monitor.on_table_set(self, table, key, value)
            self._table_op(table, self.KEYS_UPDATED).inc()

        def on_table_del(self, table: Any, key: Any) -> None:
            Monitor.on_table_del(self, table, key)
            self._table_op(table, self.KEYS_DELETED).inc()

        def _table_op(self, table: Any, op: str) -> Any:
            mt = self._metrics
            return self._child(
                (table.name, op),
                lambda: mt.table_operations.labels(table=f"table.{table.name}", operation=op),
            )

        def on_send_initiated(
            self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
        ) -> Any:
            mt = self._metrics
            self._child(
                ("sent", topic), lambda: mt.topic_messages_sent.labels(topic=f"topic.{topic}")
            ).inc()
            return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    return CachedLabelsMonitor(metrics=monitor._metrics)


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
    """The worker's Faust app with every agent of the pipeline registered."""
    from stream.ingest.agent import register_ingest
    from stream.journey.agent import register_journey

    app = faust_app(settings, **kwargs)
    topics = declare_topics(app, settings)
    shell = register_journey(app, settings, topics)
    register_ingest(app, settings, topics, shell)
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, name_prefix="faust")
    app.monitor = cached_labels_monitor(app.monitor)

    @app.page("/ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        """200 once the worker owns partitions and has recovered its tables."""
        owned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.assignor.assigned_actives())
        is_ready = bool(owned) and not app.rebalancing and not app.in_recovery
        body = {"ready": is_ready, "active_partitions": owned}
        return self.json(body, status=200 if is_ready else 503)

    return app
