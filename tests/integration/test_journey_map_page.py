"""The journey-map page in a real browser (Debian's chromium through Playwright).

The standalone file is opened from disk and read back as a marketer would: stage
columns, the Sankey's links, touchpoint cards, alerts, follow-ups. The live page is
served by a small aiohttp server that demands the bearer token, and must redraw in
place when the JSON behind it changes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import BrowserContext, ConsoleMessage, Page

from stream.web import echarts_asset, render_html, render_live_page
from tests.browser import chromium, screenshot_report
from tests.helpers import wait_for
from tests.journey_map_reports import empty_report, partial_report, realistic_report

TOKEN = "map-token-0123456789"
#: Online and offline channels (a touchpoint with no channel has its own lane).
LANES = {
    "web": "online",
    "app": "online",
    "email": "online",
    "pos": "offline",
    "support": "offline",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    with chromium() as context:
        yield context


class Problems:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.seen.append(f"pageerror: {err}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.seen.append(f"console.{msg.type}: {msg.text}")


def open_file(
    browser: BrowserContext, tmp_path: Path, report: dict[str, Any]
) -> tuple[Page, Problems]:
    path = tmp_path / "journey-map.html"
    path.write_text(render_html(report), encoding="utf-8")
    page = browser.new_page()
    problems = Problems(page)
    page.goto(path.as_uri())
    page.wait_for_selector("main[data-renders='1']", timeout=10_000)
    return page, problems


def percent(rate: float, digits: int = 0) -> str:
    """The page's percentages (Intl rounds half away from zero)."""
    q = Decimal(1).scaleb(-digits)
    return f"{Decimal(repr(rate * 100)).quantize(q, rounding=ROUND_HALF_UP)}%"


def points(diff: float, digits: int) -> str:
    q = Decimal(1).scaleb(-digits)
    value = Decimal(repr(diff * 100)).quantize(q, rounding=ROUND_HALF_UP)
    sign = "+" if value > 0 else "\u2212" if value < 0 else ""
    return f"{sign}{abs(value)} pts"


def times(ratio: float) -> str:
    """The page's lifts: a ratio with two decimals (Intl rounds half away from zero)."""
    return f"\u00d7{Decimal(repr(ratio)).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}"


def sankey_series(page: Page) -> dict[str, Any]:
    return page.evaluate(
        "() => echarts.getInstanceByDom(document.getElementById('jm-sankey')).getOption().series[0]"
    )


def test_standalone_report_shows_stages_flows_touchpoints_alerts_and_followups(
    browser: BrowserContext, tmp_path: Path
) -> None:
    report = realistic_report()
    page, problems = open_file(browser, tmp_path, report)

    # Header.
    facts = page.inner_text("#jm-facts")
    assert "five-stage" in facts and f"{report['customers']:,}" in facts
    assert page.inner_text("[data-field=window]") == (
        "2 Mar 2026, 16:00 UTC \u2013 9 Mar 2026, 16:00 UTC"
    )

    # Stage columns, in model order, with the report's numbers.
    columns = page.eval_on_selector_all("section.jm-stage", "els => els.map(e => e.dataset.stage)")
    assert columns == [s["stage"] for s in report["stages"]]
    for st in report["stages"]:
        col = f"section.jm-stage[data-stage='{st['stage']}']"
        assert page.inner_text(f"{col} [data-field=visits]").startswith(f"{st['visits']:,}")
        assert page.inner_text(f"{col} [data-field=open]") == f"{st['open']:,}"
        finished = st["advanced"] + st["dropped"]
        if st["advance_rate"] is None:
            assert page.inner_text(f"{col} [data-field=advance_rate]") == "—"
        else:
            assert page.inner_text(f"{col} [data-field=advance_rate]") == percent(
                st["advance_rate"]
            )
        assert page.inner_text(f"{col} [data-field=drop_rate]") == percent(st["dropped"] / finished)
    awareness = "section[data-stage=awareness]"
    assert page.inner_text(f"{awareness} [data-field=median]") == "1 h 30 min"
    assert page.inner_text(f"{awareness} [data-field=p90]") == "9 h 45 min"
    loyalty_time = page.inner_text("section[data-stage=loyalty] [data-field=time]")
    assert "Not measured yet" in loyalty_time

    # The Sankey: an ECharts sankey series whose links are the report's flows.
    series = sankey_series(page)
    assert series["type"] == "sankey"
    links = sorted((ln["flow"]["from"], ln["flow"]["to"], ln["value"]) for ln in series["links"])
    assert links == sorted((f["from"], f["to"], f["count"]) for f in report["flows"])
    dropped = {n["name"] for n in series["data"] if n["kind"] == "dropped"}
    assert dropped == {f"dropped:{s['stage']}" for s in report["stages"] if s["dropped"]}
    assert page.get_attribute("#jm-sankey", "aria-label")

    # Touchpoint cards: one per touchpoint, in its stage, with its lift and verdict marks.
    cards = page.eval_on_selector_all(
        "article.jm-tp",
        """els => els.map(e => ({stage: e.dataset.stage, touchpoint: e.dataset.touchpoint,
             verdict: e.dataset.verdict, lift: e.querySelector('.jm-lift-value').textContent,
             text: e.textContent, badge: e.querySelector('.jm-badge').className}))""",
    )
    assert len(cards) == len(report["touchpoints"])
    by_key = {(c["stage"], c["touchpoint"]): c for c in cards}
    marks = {
        "moment_of_truth": "Moment of truth",
        "pain_point": "Pain point",
        "neutral": "No clear effect",
        "insufficient": "Not enough data yet",
    }
    for tp in report["touchpoints"]:
        card = by_key[(tp["stage"], tp["touchpoint"])]
        assert card["verdict"] == tp["verdict"]
        assert marks[tp["verdict"]] in card["text"]
        assert LANES.get(tp["channel"], "other") in card["badge"]
        if tp["lift"] is None:
            assert card["lift"] == "—"
        else:
            assert card["lift"] == times(tp["lift"])
    pain = page.locator("section[data-stage=decision] article[data-touchpoint=payment_failed]")
    assert pain.locator("svg.icon").count() >= 1  # an icon beside the words, not colour alone
    assert "Pain point" in pain.inner_text()

    # Open alerts on top, in plain language; the closed one folded away below them.
    alerts = page.locator("li.jm-alert strong").all_inner_texts()
    assert alerts == [
        "Decision → Purchase advance rate fell from 61% to 34% since 12:00 (p < 0.001)",
        "“Payment failed” in Decision rose from 3% to 18% of visits since 12:10 (p < 0.001)",
    ]
    assert page.locator(".jm-resolved summary").inner_text() == "Resolved alerts (1)"
    top_alert = page.locator("#jm-alerts").bounding_box()
    assert top_alert is not None
    flow_box = page.locator("#jm-flow").bounding_box()
    assert flow_box is not None and top_alert["y"] < flow_box["y"]

    # Follow-ups: treated vs control, uplift with its interval, revenue, verdict.
    rows = page.eval_on_selector_all(
        "#jm-followups tr[data-rule]",
        """els => els.map(e => ({rule: e.dataset.rule, verdict: e.dataset.verdict,
             uplift: e.querySelector('.jm-uplift-value').textContent, text: e.textContent}))""",
    )
    assert [r["rule"] for r in rows] == [f["rule"] for f in report["followups"]]
    for row, fu in zip(rows, report["followups"], strict=True):
        assert row["verdict"] == fu["verdict"]
        assert row["uplift"] == points(fu["uplift_abs"], 1)  # conversion uplifts are small
        assert percent(fu["treated_rate"], 1) in row["text"]
        assert percent(fu["control_rate"], 1) in row["text"]
        assert f"€{round(fu['revenue_attributed']):,}" in row["text"]
    assert page.is_visible("#jm-followups")

    assert problems.seen == []


def test_partial_and_hostile_reports_render_without_errors(
    browser: BrowserContext, tmp_path: Path
) -> None:
    report = partial_report()
    page, problems = open_file(browser, tmp_path, report)

    hostile = report["touchpoints"][0]["touchpoint"]
    assert page.evaluate("() => window.__pwned") is None
    card = page.locator("article.jm-tp[data-stage=see]")
    assert card.get_attribute("data-touchpoint") == hostile
    assert "<img src=x" in card.locator("h3").inner_text()
    # A stage only a touchpoint names still gets its column; unknown values fall back.
    assert (
        page.locator("section.jm-stage[data-stage=do] article[data-verdict=neutral]").count() == 1
    )
    assert "Channel unknown" in page.inner_text("section.jm-stage[data-stage=do]")
    # The backward move cannot be a Sankey link (it must be acyclic): it is said in words.
    assert [ln["flow"]["to"] for ln in sankey_series(page)["links"]] == ["think"]
    assert page.locator("[data-skipped-flow='care>think']").count() == 1
    assert "No follow-up has been decided" in page.inner_text("#jm-followups")
    assert problems.seen == []

    page, problems = open_file(browser, tmp_path, empty_report())
    assert "No stage visits in this window yet" in page.inner_text("#jm-stages")
    assert "No moves between stages" in page.inner_text("#jm-flow")
    assert page.locator(".jm-calm").inner_text() == "No open alerts."
    assert not page.is_visible("#jm-followups")
    assert problems.seen == []


class LiveServer:
    """The worker's side of the live page, on a loopback port in its own thread."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report
        self.data_requests: list[tuple[str, str | None]] = []
        self.followup_requests: list[tuple[str, str | None]] = []
        self.paths: list[str] = []
        self.referers: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> LiveServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        asset = echarts_asset()

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.paths.append(request.path_qs)
            self.referers.append(request.headers.get("Referer", ""))
            return await handler(request)

        async def page(_: web.Request) -> web.Response:
            return web.Response(
                text=render_live_page(1, "/journey-map", followups_url="/followups"),
                content_type="text/html",
                headers={"Cache-Control": "no-store"},
            )

        async def static(_: web.Request) -> web.Response:
            return web.Response(
                body=asset.body,
                headers={"Content-Type": asset.content_type, "Cache-Control": asset.cache_control},
            )

        async def data(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization")
            self.data_requests.append((request.path_qs, auth))
            if auth != f"Bearer {TOKEN}":
                return web.json_response({"error": "unauthorised"}, status=401)
            # As a worker answers: the map without follow-ups, which /followups gives.
            body = dict(self.report, segment=request.query.get("segment"))
            body.pop("followups", None)
            return web.Response(
                text=json.dumps(body),
                content_type="application/json",
                headers={"Cache-Control": "no-store"},
            )

        async def followups(request: web.Request) -> web.Response:
            auth = request.headers.get("Authorization")
            self.followup_requests.append((request.path_qs, auth))
            if auth != f"Bearer {TOKEN}":
                return web.json_response({"error": "unauthorised"}, status=401)
            return web.json_response({"followups": self.report.get("followups", [])})

        app = web.Application(middlewares=[record])
        app.router.add_get("/map", page)
        app.router.add_get(asset.path, static)
        app.router.add_get("/journey-map", data)
        app.router.add_get("/followups", followups)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]


@pytest.fixture
def live() -> Iterator[LiveServer]:
    server = LiveServer(realistic_report()).start()
    try:
        yield server
    finally:
        server.stop()


def test_live_page_fetches_with_the_token_and_redraws_in_place(
    browser: BrowserContext, live: LiveServer
) -> None:
    page = browser.new_page()
    problems = Problems(page)
    page.goto(f"{live.url}/map?segment=context.platform:ios&since=2026-03-01&token={TOKEN}")
    page.wait_for_selector("main[data-renders='1']", timeout=10_000)

    path, auth = live.data_requests[0]
    assert auth == f"Bearer {TOKEN}"
    assert path == "/journey-map?segment=context.platform%3Aios&since=2026-03-01"
    # Follow-ups come from /followups, for the same window and every segment.
    assert live.followup_requests[0] == ("/followups?since=2026-03-01", f"Bearer {TOKEN}")
    rules = [f["rule"] for f in live.report["followups"]]
    assert (
        rules
        and page.eval_on_selector_all(
            "#jm-followups tr[data-rule]", "rows => rows.map(r => r.dataset.rule)"
        )
        == rules
    )
    assert page.input_value("#jm-segment") == "context.platform:ios"
    assert page.inner_text("section[data-stage=decision] [data-field=visits]").startswith("4,386")
    # The token goes nowhere but the Authorization header: not in any other URL asked for.
    assert [p for p in live.paths if TOKEN in p] == [p for p in live.paths if p.startswith("/map")]
    assert all(TOKEN not in r for r in live.referers)

    page.evaluate("() => { window.__sameDocument = true; }")
    changed = copy.deepcopy(live.report)
    changed["stages"][2]["visits"] = 5_123
    changed["alerts"] = [a for a in changed["alerts"] if a["kind"] != "touchpoint_spike"]
    changed["flows"] = [f for f in changed["flows"] if f["to"] != "dropped"]
    live.report = changed
    page.wait_for_function(
        """() => document.querySelector("section[data-stage=decision] [data-field=visits]")
                   .textContent.startsWith("5,123")""",
        timeout=5_000,
    )
    assert page.evaluate("() => window.__sameDocument") is True
    assert page.locator("li.jm-alert").count() == 1
    assert all(ln["flow"]["to"] != "dropped" for ln in sankey_series(page)["links"])
    assert "Live · every 1 s" in page.inner_text("#jm-status")

    # Choosing a segment asks for it at once and keeps the token in the page's address only.
    page.select_option("#jm-segment", "context.channel:pos")
    asked = wait_for(
        lambda: [p for p, _ in live.data_requests],
        lambda paths: "/journey-map?segment=context.channel%3Apos&since=2026-03-01" in paths,
        timeout_s=5,
    )
    assert all(TOKEN not in p for p in asked)
    assert f"token={TOKEN}" in page.url and "segment=context.channel%3Apos" in page.url
    assert problems.seen == []


def test_live_page_without_a_token_says_it_is_not_authorised(
    browser: BrowserContext, live: LiveServer
) -> None:
    page = browser.new_page()
    page.goto(f"{live.url}/map")
    page.wait_for_selector("#jm-status.is-error", timeout=10_000)

    assert live.data_requests and live.data_requests[0][1] is None
    assert "not authorised (HTTP 401)" in page.inner_text("#jm-status")
    assert "could not be loaded" in page.inner_text("#jm-problem")


def test_screenshot_of_a_realistic_report_is_1440_wide(
    browser: BrowserContext, tmp_path: Path
) -> None:
    out = tmp_path / "journey-map.png"
    screenshot_report(out, browser)

    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1440
    assert int.from_bytes(png[20:24], "big") > 1500  # the whole page, not one screen
