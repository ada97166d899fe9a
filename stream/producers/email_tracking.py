"""Email tracking on the collector: opens, clicks and unsubscribes flow back as touchpoints.

Links in follow-ups carry a signed token (:mod:`stream.dispatch.tokens`) naming
the trigger and the customer. Each endpoint verifies it (a bad token is
answered 4xx with a JSON reason) and publishes an ``email_open``,
``email_click`` or ``unsubscribe`` touchpoint (channel ``email``, properties
with ``trigger_id`` and ``rule``) through the
:class:`~stream.producers.http.TouchpointPublisher` the collector hands in
when it mounts these routes.

- ``GET /e/open/{token}.gif``: a 1x1 GIF (served even if the broker is down).
- ``GET /e/click/{token}?u=URL``: 302 to URL, only on the shop's host.
- ``POST /e/unsubscribe/{token}``: RFC 8058 one-click (``List-Unsubscribe-Post``);
  200 only once the broker acknowledged. ``GET`` shows a page whose button
  POSTs: link scanners prefetch GET links and must not unsubscribe anyone.
"""

from __future__ import annotations

import html
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from stream.contract import Touchpoint
from stream.dispatch import tokens
from stream.dispatch.links import CLICK_PATH, OPEN_PATH, UNSUBSCRIBE_PATH, same_host
from stream.observability import metrics
from stream.producers.http import Refusal, TouchpointPublisher
from stream.settings import DispatchSettings

log = logging.getLogger(__name__)

SOURCE = "email"
#: The smallest transparent GIF.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


class EmailTracking:
    """Handlers sharing the dispatch settings (tracking secret, shop host) and a publisher."""

    def __init__(self, publisher: TouchpointPublisher, config: DispatchSettings) -> None:
        self.publisher = publisher
        self.config = config

    def _token(self, request: web.Request) -> tokens.TrackingToken:
        try:
            return tokens.verify(request.match_info["token"], self.config.tracking_secret)
        except tokens.InvalidToken as exc:
            raise Refusal(400, "invalid_token", str(exc)) from None

    def touchpoint(
        self, type_: str, token: tokens.TrackingToken, event_id: str, **properties: Any
    ) -> Touchpoint:
        return Touchpoint(
            event_id=event_id,
            type=type_,
            channel="email",
            timestamp=int(time.time() * 1000),
            customer_id=token.customer_id or token.journey_key,
            properties={"trigger_id": token.trigger_id, "rule": token.rule, **properties},
            source=SOURCE,
        )

    async def _publish(self, tp: Touchpoint) -> None:
        await self.publisher.publish([tp])
        metrics.COLLECTOR_EVENTS.labels(type=tp.type).inc()

    async def open(self, request: web.Request) -> web.Response:
        token = self._token(request)
        try:
            await self._publish(self.touchpoint("email_open", token, f"open-{uuid.uuid4().hex}"))
        except Exception as exc:  # the image is served whatever happens to the event
            log.warning("email open of %s not recorded: %s", token.trigger_id, exc)
        return web.Response(body=PIXEL, content_type="image/gif", headers=NO_STORE)

    async def click(self, request: web.Request) -> web.Response:
        token = self._token(request)
        url = request.query.get("u", "")
        if not same_host(url, self.config.shop_base_url):
            raise Refusal(400, "invalid_target", "redirect target is not on the shop's host")
        try:
            tp = self.touchpoint("email_click", token, f"click-{uuid.uuid4().hex}", url=url)
            await self._publish(tp)
        except Exception as exc:  # the customer still gets where they clicked
            log.warning("email click of %s not recorded: %s", token.trigger_id, exc)
        # Returned, not raised: the collector's middleware turns raised HTTP errors into JSON.
        return web.Response(status=302, headers={"Location": url, **NO_STORE})

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        self._token(request)
        action = html.escape(request.path, quote=True)
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Unsubscribe</title></head>"
            f"<body><form method='post' action='{action}'>"
            "<p>Stop receiving follow-up emails from us?</p>"
            "<button type='submit' name='List-Unsubscribe' value='One-Click'>Unsubscribe</button>"
            "</form></body></html>"
        )
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)

    async def unsubscribe(self, request: web.Request) -> web.Response:
        token = self._token(request)
        # One id per trigger: repeated clicks are exact duplicates that ingest drops.
        tp = self.touchpoint("unsubscribe", token, f"unsubscribe-{token.trigger_id}")
        await self._publish(tp)  # 503 when the broker does not acknowledge: must not be lost
        if request.headers.get("Accept", "").startswith("text/html"):
            return web.Response(
                text="<!DOCTYPE html><html><body><p>You are unsubscribed.</p></body></html>",
                content_type="text/html",
                headers=NO_STORE,
            )
        return web.json_response({"success": True, "unsubscribed": True}, headers=NO_STORE)


def add_routes(
    app: web.Application, publisher: TouchpointPublisher, config: DispatchSettings
) -> None:
    """Route the open, click and unsubscribe endpoints, publishing through ``publisher``."""
    tracking = EmailTracking(publisher, config)
    app.router.add_get(OPEN_PATH, tracking.open)
    app.router.add_get(CLICK_PATH, tracking.click)
    app.router.add_get(UNSUBSCRIBE_PATH, tracking.unsubscribe_page)
    app.router.add_post(UNSUBSCRIBE_PATH, tracking.unsubscribe)
