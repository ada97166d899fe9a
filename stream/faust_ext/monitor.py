"""Faust's Prometheus monitor with its label lookups cached, and the /metrics page.

Upstream: ``faust.sensors.prometheus.PrometheusMonitor`` (faust-streaming
0.15.3) calls ``labels()`` (a lock, and a lookup keyed by strings built per
call) for every message, event, table operation and send: a visible share of
a busy worker's time. :class:`CachedLabelsMonitor` is a subclass that keeps
each label child once; same metrics, same values. It is installed as the app's
monitor (Faust's extension point for sensors), not patched in.

Test: tests/integration/test_faust_ext.py::test_cached_monitor_counts_as_faust_does.
Remove when Faust caches label children.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from aiohttp.web import Response
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class CachedLabelsMonitor(PrometheusMonitor):
    """:class:`PrometheusMonitor` whose per-record label children are looked up once."""

    def __init__(self, metrics: FaustMetrics) -> None:
        super().__init__(metrics=metrics)
        self._label_children: dict[Any, Any] = {}

    def _child(self, key: Any, make: Callable[[], Any]) -> Any:
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
            ("in", tp.topic), lambda: mt.messages_received_per_topics.labels(topic=tp.topic)
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


_METRICS: dict[tuple[int, str], FaustMetrics] = {}


def install(
    app: faust.App, name_prefix: str, registry: CollectorRegistry = REGISTRY
) -> CachedLabelsMonitor:
    """Install the monitor on ``app`` and serve ``GET /metrics`` (what
    ``setup_prometheus_sensors`` does, with the cached monitor)."""
    key = (id(registry), name_prefix)
    metrics = _METRICS.get(key)
    if metrics is None:  # a collector registers its names once per registry
        metrics = _METRICS[key] = FaustMetrics.create(registry, name_prefix)
    monitor = CachedLabelsMonitor(metrics)
    app.monitor = monitor

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        return Response(body=generate_latest(registry), headers=headers, status=200)  # type: ignore[return-value]

    return monitor
