"""Email tracking publishes through any TouchpointPublisher (no collector, no broker)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from stream.contract import Touchpoint
from stream.dispatch import tokens
from stream.dispatch.links import TrackingLinks
from stream.producers import email_tracking
from stream.producers.email_tracking import PIXEL
from stream.producers.http import Refusal, json_errors
from stream.settings import DispatchSettings

SECRET = "tracking-secret"
SHOP = "https://shop.example.com"
CONFIG = DispatchSettings(tracking_secret=SECRET, shop_base_url=SHOP)


class Recorded:
    """A publisher that keeps what it was given, or refuses as a broker outage does."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.published: list[Touchpoint] = []

    async def publish(self, touchpoints: Sequence[Touchpoint]) -> None:
        if self.refuse:
            raise Refusal(503, "broker_unavailable", "broker down")
        self.published.extend(touchpoints)


def app_with(publisher: Recorded) -> web.Application:
    app = web.Application(middlewares=[json_errors(frozenset(), {}, "/v1/")])
    email_tracking.add_routes(app, publisher, CONFIG)
    return app


def links() -> TrackingLinks:
    token = tokens.sign(tokens.TrackingToken("trig-1", "cart_abandoned", "c-1", "c-1"), SECRET)
    return TrackingLinks("", SHOP, token)


async def test_opens_clicks_and_unsubscribes_go_to_the_publisher_given() -> None:
    publisher = Recorded()
    lk = links()
    async with TestClient(TestServer(app_with(publisher))) as client:
        opened = await client.get(lk.open_pixel)
        assert opened.status == 200 and await opened.read() == PIXEL
        clicked = await client.get(lk.click(f"{SHOP}/p/1"), allow_redirects=False)
        assert clicked.status == 302 and clicked.headers["Location"] == f"{SHOP}/p/1"
        unsubscribed = await client.post(lk.unsubscribe)
        assert unsubscribed.status == 200
    assert [tp.type for tp in publisher.published] == ["email_open", "email_click", "unsubscribe"]
    assert {tp.properties["trigger_id"] for tp in publisher.published} == {"trig-1"}


async def test_a_refusing_publisher_fails_the_unsubscribe_but_not_the_pixel() -> None:
    lk = links()
    async with TestClient(TestServer(app_with(Recorded(refuse=True)))) as client:
        opened = await client.get(lk.open_pixel)
        assert opened.status == 200 and await opened.read() == PIXEL
        unsubscribed = await client.post(lk.unsubscribe)
        assert unsubscribed.status == 503
        assert (await unsubscribed.json())["code"] == "broker_unavailable"
