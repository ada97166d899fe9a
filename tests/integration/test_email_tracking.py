"""Email tracking on the collector: opens, clicks and unsubscribes become touchpoints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest

from stream.dispatch import tokens
from stream.dispatch.links import TrackingLinks
from stream.producers.email_tracking import PIXEL
from stream.producers.publisher import Publisher
from stream.settings import Settings
from tests.helpers import wait_for
from tests.integration.test_collector import on_topic, request, running

SECRET = "tracking-secret"
SHOP = "https://shop.example.com"


@pytest.fixture
def tracking(broker: Any, settings: Settings) -> Iterator[tuple[str, Settings]]:
    from stream.embedded import create_topics

    t = settings.topics
    create_topics(broker.bootstrap, {t.touchpoints: t.partitions, t.dlq: 1})
    s = replace(
        settings,
        dispatch=replace(settings.dispatch, tracking_secret=SECRET, shop_base_url=SHOP),
    )
    publisher = Publisher(s.broker, s.collector.ack_timeout_s)
    try:
        with running(s, publisher) as url:
            yield url, s
    finally:
        publisher.close()


def links(url: str, secret: str = SECRET) -> TrackingLinks:
    token = tokens.sign(tokens.TrackingToken("trig-1", "cart_abandoned", "c-1", "c-1"), secret)
    return TrackingLinks(url, SHOP, token)


def path_of(link: str, url: str) -> str:
    return link.removeprefix(url)


def test_open_click_unsubscribe_publish_touchpoints(
    broker: Any, tracking: tuple[str, Settings]
) -> None:
    url, settings = tracking
    lk = links(url)
    opened = request(url, "GET", path_of(lk.open_pixel, url), key=None)
    assert opened.status == 200 and opened.body == PIXEL
    assert opened.headers["content-type"] == "image/gif"

    target = f"{SHOP}/products/SKU-1"
    clicked = request(url, "GET", path_of(lk.click(target), url), key=None)
    assert clicked.status == 302 and clicked.headers["location"] == target

    page = request(url, "GET", path_of(lk.unsubscribe, url), key=None)
    assert page.status == 200 and b"<form method='post'" in page.body
    one_click = request(
        url,
        "POST",
        path_of(lk.unsubscribe, url),
        b"List-Unsubscribe=One-Click",
        key=None,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status == 200 and one_click.body["unsubscribed"] is True

    seen = wait_for(
        lambda: on_topic(broker, settings.topics.touchpoints), lambda r: len(r) >= 3, timeout_s=20
    )
    by_type = {tp.type: (key, tp) for key, _, tp in seen}
    assert set(by_type) == {"email_open", "email_click", "unsubscribe"}
    for key, tp in by_type.values():
        assert key == b"c-1" and tp.channel == "email" and tp.customer_id == "c-1"
        assert tp.properties["trigger_id"] == "trig-1"
        assert tp.properties["rule"] == "cart_abandoned"
    assert by_type["email_click"][1].properties["url"] == target
    # Only the POST unsubscribes: the GET page published nothing.
    assert sum(1 for _, _, tp in seen if tp.type == "unsubscribe") == 1


def test_bad_tokens_and_foreign_redirects_are_refused(
    broker: Any, tracking: tuple[str, Settings]
) -> None:
    url, settings = tracking
    forged = links(url, secret="someone-else")
    good = links(url)
    cases = [
        ("GET", path_of(forged.open_pixel, url)),
        ("GET", path_of(forged.click(f"{SHOP}/"), url)),
        ("POST", path_of(forged.unsubscribe, url)),
        ("GET", "/e/open/not-a-token.gif"),
        ("GET", "/e/click/abc.def?u=" + quote(f"{SHOP}/")),
    ]
    for method, path in cases:
        answer = request(url, method, path, key=None)
        assert answer.status == 400, (path, answer)
        assert answer.body["code"] == "invalid_token" and answer.body["success"] is False
    evil = request(url, "GET", path_of(good.click("https://evil.example.net/"), url), key=None)
    assert evil.status == 400 and evil.body["code"] == "invalid_target"
    # A target with CR/LF (%0D%0A) would split the redirect's headers: refused, not recorded.
    split = path_of(good.click(f"{SHOP}/x\r\nSet-Cookie: a=b"), url)
    assert "%0D%0A" in split.upper()
    answer = request(url, "GET", split, key=None)
    assert answer.status == 400 and answer.body["code"] == "invalid_target"
    seen = on_topic(broker, settings.topics.touchpoints)
    assert not [tp for _, _, tp in seen if tp.type == "email_click"]
