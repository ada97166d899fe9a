"""``GET /journey-map``, ``/journey-map/local`` and ``/map``: the journey map over HTTP.

``/journey-map/local`` answers this worker's part: the aggregates of the
partitions it owns, merged, and their lowest watermark. ``/journey-map`` asks
every worker for its part (as ``/funnel`` does), merges them and answers the
report (:func:`stream.analytics.report.report`) for all customers, as of the
lowest watermark. ``/map`` is the live page, which polls ``/journey-map``;
the vendored ECharts it loads is served at its own, versioned path. Counts
only, never a customer's data; the paths are open to the ``read`` token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from faust.web import Request, Response, View

from stream import contract
from stream.analytics.aggregate import Aggregate
from stream.analytics.report import parse_segment, report
from stream.journey.clock import NEVER
from stream.journey.stages import StageModel
from stream.journeymap.agent import MapShell
from stream.security import forward_headers
from stream.settings import Settings
from stream.web import echarts_asset, render_live_page

log = logging.getLogger(__name__)

#: Query parameters ``/journey-map`` takes, and the longest value accepted.
PARAMS = frozenset({"since", "until", "segment", "token"})
MAX_PARAM_CHARS = 200
#: How often the live page asks for the map again.
REFRESH_S = 5


class BadQuery(ValueError):
    """A query parameter ``/journey-map`` refuses; the message is the reason (a 400)."""


def _time(name: str, text: str) -> int:
    try:
        return contract.parse_timestamp(int(text) if text.isdigit() else text)
    except (contract.InvalidTouchpoint, ValueError, OverflowError):
        raise BadQuery(f"{name}: {text[:64]!r} is not RFC 3339 or epoch milliseconds") from None


def parse_query(query: Mapping[str, str], segment_dimension: str) -> dict[str, Any]:
    """``since``, ``until`` (epoch ms) and ``segment`` of a ``/journey-map`` query, checked."""
    unknown = sorted(set(query) - PARAMS)
    if unknown:
        raise BadQuery(f"unknown parameter {unknown[0][:64]!r}: use since, until, segment")
    for name, value in query.items():
        if len(value) > MAX_PARAM_CHARS:
            raise BadQuery(f"{name} is longer than {MAX_PARAM_CHARS} characters")
    since = _time("since", query["since"]) if query.get("since") else None
    until = _time("until", query["until"]) if query.get("until") else None
    if since is not None and until is not None and since >= until:
        raise BadQuery("since must be before until")
    segment = query.get("segment") or None
    if segment is not None:
        try:
            dim, _ = parse_segment(segment)
        except ValueError as exc:
            raise BadQuery(str(exc)) from None
        if dim != segment_dimension:
            raise BadQuery(f"segment {segment!r}: this map is cut by {segment_dimension!r}")
    return {"since": since, "until": until, "segment": segment}


def local_part(shell: MapShell, watermarks: list[int]) -> dict[str, Any]:
    """This worker's part of the map: merged aggregates and the lowest watermark."""
    known = [wm for wm in watermarks if wm != NEVER]
    return {
        "aggregate": shell.local_aggregate().to_dict(),
        "watermark": min(known) if known else None,
    }


def combine(parts: list[dict[str, Any]], shell: MapShell) -> tuple[Aggregate, int | None]:
    """The workers' parts merged: one aggregate, and the lowest watermark (None: unknown)."""
    agg = Aggregate.for_settings(shell.analytics)
    marks = []
    for part in parts:
        agg.merge(Aggregate.from_dict(part["aggregate"]))
        if part.get("watermark") is not None:
            marks.append(int(part["watermark"]))
    return agg, (min(marks) if marks else None)


class MapViews:
    """What the views and the alert evaluator share: gathering the workers' parts."""

    def __init__(
        self,
        app: faust.App,
        shell: MapShell,
        model: StageModel,
        watermarks: Any,
    ) -> None:
        self.app = app
        self.shell = shell
        self.model = model
        #: () -> the watermarks of the journey partitions this worker owns.
        self.watermarks = watermarks

    def local(self) -> dict[str, Any]:
        return local_part(self.shell, self.watermarks())

    async def parts(self, headers: Mapping[str, str]) -> list[dict[str, Any]] | str:
        """Every worker's part (this one's first), or why one could not be had."""
        own = str(self.app.conf.canonical_url).rstrip("/")
        hosts = {str(h).rstrip("/") for h in self.app.router.tables_metadata()} - {own}
        parts = [self.local()]
        for host in sorted(hosts):
            async with self.app.http_client.get(
                f"{host}/journey-map/local", headers=dict(headers)
            ) as resp:
                if resp.status != 200:
                    return f"worker {host} answered {resp.status}"
                parts.append(await resp.json())
        return parts

    async def report(
        self, headers: Mapping[str, str], query: Mapping[str, Any]
    ) -> dict[str, Any] | str:
        parts = await self.parts(headers)
        if isinstance(parts, str):
            return parts
        agg, now = combine(parts, self.shell)
        return report(agg, self.model, now=now, settings=self.shell.analytics, **query)


def register_map_views(app: faust.App, views: MapViews, settings: Settings) -> None:
    shell = views.shell
    asset = echarts_asset()
    page = render_live_page(REFRESH_S, "/journey-map", followups_url="/followups")

    @app.page("/journey-map/local")
    async def journey_map_local(self: View, request: Request) -> Response:
        return self.json(views.local())

    @app.page("/journey-map")
    async def journey_map(self: View, request: Request) -> Response:
        try:
            query = parse_query(request.query, shell.analytics.segment)
        except BadQuery as exc:
            return self.json({"error": str(exc)}, status=400)
        body = await views.report(forward_headers(request), query)
        if isinstance(body, str):
            return self.json({"error": body}, status=503)
        return self.json(body)

    @app.page("/map")
    async def live_map(self: View, request: Request) -> Response:
        return self.html(page)

    @app.page(asset.path)
    async def echarts(self: View, request: Request) -> Response:
        # As a header: aiohttp refuses a charset in its content_type argument.
        headers = {"Content-Type": asset.content_type, "Cache-Control": asset.cache_control}
        return self.bytes(asset.body, headers=headers)
