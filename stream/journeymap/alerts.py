"""Journey-map alerts to ``journey.alerts``, and the map's gauges, from one worker.

Alerts are about all customers, so one worker evaluates them: the one that
owns partition 0 of ``journey.visits`` (Kafka's assignment elects it; another
takes over when it goes). Every ``ALERT_CHECK_S`` it computes the merged map
(all workers, as ``/journey-map``) and publishes each alert episode's opening
and closing once, keyed by a deterministic alert id::

    {"id": ID, "event": "opened" | "closed", "kind", "stage", "touchpoint",
     "opened_at", "closed_at", "rate", "baseline_rate", "p_value"}

A worker that becomes the evaluator first reads ``journey.alerts`` to its end,
so a takeover does not publish again what was published before (a consumer
that must never see a repeat keys on ``id`` and ``event``). It also sets the
map's gauges (touchpoint impact counts and lift, open alerts), which only the
evaluator reports, so Prometheus sums over workers stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import faust
import orjson

from stream import security
from stream.analytics.report import STAGE_ADVANCE_DROP, TOUCHPOINT_SPIKE
from stream.faust_ext.fastpath import send_direct
from stream.journeymap.views import MapViews
from stream.observability import metrics as m
from stream.settings import Settings
from stream.topics import client_options, read_topic

log = logging.getLogger(__name__)

#: How often the evaluator looks at the map.
ALERT_CHECK_S = 5.0
OPENED = "opened"
CLOSED = "closed"
#: Touchpoint rows the gauges report per stage (the most visited).
GAUGE_TOUCHPOINTS = 50


def alert_id(alert: dict[str, Any]) -> str:
    """A deterministic id of an alert episode: its kind, stage, touchpoint and opening."""
    key = orjson.dumps([alert["kind"], alert["stage"], alert["touchpoint"], alert["opened_at"]])
    return hashlib.sha256(key).hexdigest()[:32]


def changes(report_alerts: list[dict[str, Any]], published: set[tuple[str, str]]) -> list[Any]:
    """(event, id, alert) to publish for ``report_alerts``, given (id, event) already published."""
    out = []
    for alert in report_alerts:
        aid = alert_id(alert)
        if (aid, OPENED) not in published:
            out.append((OPENED, aid, alert))
        if alert["closed_at"] is not None and (aid, CLOSED) not in published:
            out.append((CLOSED, aid, alert))
    return out


class AlertEvaluator:
    def __init__(self, app: faust.App, settings: Settings, topics: Any, views: MapViews) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.views = views
        #: (alert id, event) published; None until read from the topic.
        self.published: set[tuple[str, str]] | None = None
        self.token = next(
            (t for t, role in settings.worker.api_tokens.items() if role in security.ROLES), None
        )
        self._gauged: dict[Any, set[tuple[str, ...]]] = {}

    def leads(self) -> bool:
        name = self.settings.topics.visits
        return any(
            tp.topic == name and tp.partition == 0 for tp in self.app.assignor.assigned_actives()
        )

    async def tick(self) -> None:
        if self.app.rebalancing or self.app.in_recovery:
            return
        if not self.leads():
            self.published = None  # read again if this worker leads later
            self._clear_gauges()
            return
        if self.published is None:
            self.published = await asyncio.to_thread(self._read_published)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = await self.views.report(headers, {})
        if isinstance(body, str):
            log.warning("journey map alerts not evaluated: %s", body)
            return
        for event, aid, alert in changes(body["alerts"], self.published):
            record = {"id": aid, "event": event, **{k: v for k, v in alert.items()}}
            await send_direct(
                self.app, self.topics.alerts, orjson.dumps(record), key=aid.encode(), partition=0
            )
            self.published.add((aid, event))
            m.MAP_ALERT_CHANGES.labels(kind=alert["kind"], event=event).inc()
            log.info(
                "journey map alert %s: %s %s %s",
                event,
                alert["kind"],
                alert["stage"],
                alert["touchpoint"] or "",
            )
        self._set_gauges(body)

    def _read_published(self) -> set[tuple[str, str]]:
        b = self.settings.broker
        out: set[tuple[str, str]] = set()
        for rec in read_topic(b.bootstrap, self.settings.topics.alerts, 30.0, client_options(b)):
            with contextlib.suppress(Exception):
                body = orjson.loads(rec.value)
                out.add((str(body["id"]), str(body["event"])))
        return out

    def _set_gauges(self, body: dict[str, Any]) -> None:
        series: dict[Any, set[tuple[str, ...]]] = {
            m.MAP_TOUCHPOINT_VISITS: set(),
            m.MAP_TOUCHPOINT_LIFT: set(),
            m.MAP_ALERTS_OPEN: set(),
        }
        per_stage: dict[str, int] = {}
        rows = sorted(
            (t for t in body["touchpoints"] if t["channel"] is None),
            key=lambda t: -int(t["visits_with"]),
        )
        for t in rows:
            stage, name = t["stage"], t["touchpoint"]
            per_stage[stage] = per_stage.get(stage, 0) + 1
            if per_stage[stage] > GAUGE_TOUCHPOINTS:
                continue
            for group, advanced, value in (
                ("with", "no", t["visits_with"] - t["advanced_with"]),
                ("with", "yes", t["advanced_with"]),
                ("without", "no", t["visits_without"] - t["advanced_without"]),
                ("without", "yes", t["advanced_without"]),
            ):
                four: tuple[str, ...] = (stage, name, group, advanced)
                m.MAP_TOUCHPOINT_VISITS.labels(*four).set(value)
                series[m.MAP_TOUCHPOINT_VISITS].add(four)
            if t["lift"] is not None:
                three: tuple[str, ...] = (stage, name, t["verdict"])
                m.MAP_TOUCHPOINT_LIFT.labels(*three).set(t["lift"])
                series[m.MAP_TOUCHPOINT_LIFT].add(three)
        for alert in body["alerts"]:
            if alert["closed_at"] is None:
                kind: tuple[str, ...] = (alert["kind"], alert["stage"], alert["touchpoint"] or "")
                m.MAP_ALERTS_OPEN.labels(*kind).set(1)
                series[m.MAP_ALERTS_OPEN].add(kind)
        for gauge, now in series.items():
            for labels in self._gauged.get(gauge, set()) - now:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._gauged = series

    def _clear_gauges(self) -> None:
        for gauge, labels_set in self._gauged.items():
            for labels in labels_set:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._gauged = {}


def register_alerts(app: faust.App, settings: Settings, topics: Any, views: MapViews) -> None:
    evaluator = AlertEvaluator(app, settings, topics, views)
    for kind in (STAGE_ADVANCE_DROP, TOUCHPOINT_SPIKE):
        for event in (OPENED, CLOSED):
            m.MAP_ALERT_CHANGES.labels(kind=kind, event=event)

    @app.timer(interval=ALERT_CHECK_S)
    async def journey_map_alerts() -> None:
        try:
            await evaluator.tick()
        except Exception:
            log.exception(
                "journey map alerts: evaluation failed; tried again in %.0f s", ALERT_CHECK_S
            )
