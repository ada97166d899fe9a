"""The Faust app factory: one configured, empty Faust app from the settings.

The worker (``stream.worker``) and the dispatcher (``stream.dispatch.app``)
build theirs here and register their own agents; the workarounds of Faust and
aiokafka internals are applied by them, explicitly (``stream.faust_ext``).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from stream import security
from stream.faust_ext import ExtOptions
from stream.faust_ext import store as faust_ext_store
from stream.settings import BrokerSettings, Settings

log = logging.getLogger(__name__)


class OrjsonCodec(codecs.Codec):
    """Faust codec backed by orjson (registered as ``"orjson"``)."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("orjson", OrjsonCodec())


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
    faust_ext_store.register()
    app = faust.App(
        w.app_id,
        broker=",".join(f"kafka://{h}" for h in b.bootstrap.split(",")),
        broker_credentials=broker_credentials(b),
        store=table_store(store or w.store),
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
    # What the patches of stream.faust_ext read for this app (none applied here).
    app.journey_ext = ExtOptions(  # type: ignore[attr-defined]
        fetch_max_wait_ms=w.fetch_max_wait_ms,
        fetched_end_bootstrap=None if w.recovery_consistency_check else b.bootstrap,
    )
    return app


def table_store(url: str) -> str:
    """The store URL Faust gets: ``rocksdb://`` is the engine's RocksDB store."""
    scheme, sep, rest = url.partition("://")
    return f"{faust_ext_store.SCHEME}://{rest}" if sep and scheme == "rocksdb" else url


#: Codecs both Kafka clients here read with the installed libraries (aiokafka
#: through cramjam, kafka-python, which ``stream.topics.read_topic`` uses,
#: through zstandard and the standard library).
COMPRESSION_TYPES = ("zstd", "gzip", "none")


def producer_compression(name: str) -> str | None:
    """The producer's ``compression_type`` for ``worker.compression`` (None: off)."""
    if name not in COMPRESSION_TYPES:
        raise ValueError(f"worker.compression must be one of {COMPRESSION_TYPES}, not {name!r}")
    return None if name == "none" else name


def batch_agent(
    app: faust.App,
    name: str,
    topics: tuple[str, ...],
    on_batch: Callable[[list[faust.EventT]], Awaitable[Any]],
    *,
    size: int,
    within_s: float,
) -> None:
    """An agent ``name`` reading ``topics`` as raw bytes and handing ``on_batch`` up to
    ``size`` events at a time (or what came within ``within_s``).

    Acks come after ``on_batch`` returns, so after the writes it made reached the
    producer: a crash re-reads the batch instead of losing it.
    """
    source = app.topic(*topics, schema=faust.Schema(key_serializer="raw", value_serializer="raw"))

    async def run(stream: faust.StreamT) -> None:
        batches = stream.take_events(size, within=within_s)  # type: ignore[attr-defined]
        async for events in batches:
            await on_batch(events)

    app.agent(source, name=name)(run)
