"""The web collector against the real embedded broker: what reaches the topics, what it answers."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from segment.analytics import Client

from stream import contract
from stream.contract import Touchpoint
from stream.producers.collector import BrokerConnection, create_app
from stream.producers.publisher import Publisher, partition_of
from stream.settings import Settings
from tests.helpers import REPO as ROOT
from tests.helpers import read_topic, wait_for

KEY = "test-key"
APP_KEY = "app-key"
TS = "2024-11-04T09:00:00.000+00:00"


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@pytest.fixture
def collector_settings(broker: Any, settings: Settings) -> Settings:
    from stream.embedded import create_topics

    t = settings.topics
    create_topics(broker.bootstrap, {t.touchpoints: t.partitions, t.dlq: 1})
    return with_keys(settings)


def with_keys(settings: Settings, **collector: Any) -> Settings:
    keys = {KEY: "web", APP_KEY: "ios-app"}
    return replace(settings, collector=replace(settings.collector, write_keys=keys, **collector))


@pytest.fixture
def publisher(collector_settings: Settings) -> Iterator[Publisher]:
    p = Publisher(collector_settings.broker, collector_settings.collector.ack_timeout_s)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def base(collector_settings: Settings, publisher: Publisher) -> Iterator[str]:
    with running(collector_settings, publisher) as url:
        yield url


@contextmanager
def running(settings: Settings, publisher: Publisher | BrokerConnection) -> Iterator[str]:
    """The collector app on a free loopback port, its event loop on a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="collector-loop", daemon=True)
    thread.start()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(create_app(settings, publisher))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Answer:
    """One HTTP request with the standard library; any status is returned, not raised."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = basic(key)
    sent.update(headers or {})
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    try:
        if chunked and data is not None:
            parts = [data[i : i + 16384] for i in range(0, len(data), 16384)]
            conn.request(method, path, body=iter(parts), headers=sent, encode_chunked=True)
        else:
            conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        raw = resp.read()
        answer_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    is_json = answer_headers.get("content-type", "").startswith("application/json")
    return Answer(resp.status, orjson.loads(raw) if is_json else raw, answer_headers)


def post(url: str, path: str, body: Any = None, **kw: Any) -> Answer:
    return request(url, "POST", path, body, **kw)


def on_topic(broker: Any, topic: str) -> list[tuple[bytes, Any, Touchpoint]]:
    """(record key, decoded record value, touchpoint) for every touchpoint on ``topic``."""
    out = []
    for rec in read_topic(broker.bootstrap, topic):
        value = orjson.loads(rec.value)
        for item in value if isinstance(value, list) else [value]:
            out.append((rec.key, value, contract.parse(item)))
    return out


def track(event: str, **fields: Any) -> dict[str, Any]:
    msg = {
        "type": "track",
        "event": event,
        "messageId": f"m-{uuid.uuid4().hex}",
        "anonymousId": "anon-1",
        "timestamp": TS,
        "properties": {"sku": "SKU-1", "price": 9.5, "quantity": 1},
    }
    msg.update(fields)
    return msg


def shopper_journey(client: Client, n: int) -> dict[str, str]:
    """Ten calls of one shopper through the funnel; returns messageId -> expected type."""
    anon, user = f"anon-{n}", f"cust-{n}"
    product = {"product_id": f"P{n}", "sku": f"SKU-{n}", "name": "Mug", "price": 9.95}
    calls = [
        ("page_view", lambda: client.page(anonymous_id=anon, name="Home", properties={"url": "/"})),
        (
            "search",
            lambda: client.track(
                anonymous_id=anon, event="Products Searched", properties={"query": "mug"}
            ),
        ),
        (
            "product_view",
            lambda: client.track(anonymous_id=anon, event="Product Viewed", properties=product),
        ),
        (
            "add_to_cart",
            lambda: client.track(
                anonymous_id=anon,
                event="Product Added",
                properties={**product, "quantity": 2, "cart_id": f"cart-{n}"},
            ),
        ),
        (
            "remove_from_cart",
            lambda: client.track(
                anonymous_id=anon, event="Product Removed", properties={**product, "quantity": 1}
            ),
        ),
        (
            "identify",
            lambda: client.identify(
                user_id=user,
                anonymous_id=anon,
                traits={"email": f"s{n}@example.com", "firstName": "Sam"},
            ),
        ),
        (
            "checkout_started",
            lambda: client.track(
                user_id=user,
                anonymous_id=anon,
                event="Checkout Started",
                properties={
                    "cart_id": f"cart-{n}",
                    "value": 9.95,
                    "currency": "EUR",
                    "products": [product],
                },
            ),
        ),
        (
            "purchase",
            lambda: client.track(
                user_id=user,
                anonymous_id=anon,
                event="Order Completed",
                properties={
                    "order_id": f"O-{n}",
                    "total": 9.95,
                    "revenue": 8.36,
                    "currency": "EUR",
                    "products": [{**product, "quantity": 1}],
                },
            ),
        ),
        ("alias", lambda: client.alias(previous_id=anon, user_id=user)),
        (
            "coupon_shared",
            lambda: client.track(user_id=user, event="Coupon Shared", properties={"coupon": "X"}),
        ),
    ]
    expected = {}
    for type_, send in calls:
        ok, msg = send()
        assert ok
        expected[msg["messageId"]] = type_
    return expected


def test_segment_sdk_batches_arrive_once_each(
    base: str, broker: Any, collector_settings: Settings
) -> None:
    errors: list[Any] = []
    client = Client(KEY, host=base, on_error=lambda exc, batch: errors.append(exc), max_retries=0)
    expected: dict[str, str] = {}
    try:
        for n in range(5):
            expected.update(shopper_journey(client, n))
        client.flush()
    finally:
        client.join()
    assert not errors
    assert len(expected) == 50

    seen = on_topic(broker, collector_settings.topics.touchpoints)
    counts = Counter(tp.event_id for _, _, tp in seen)
    assert counts == Counter(set(expected)), "every call exactly once"
    assert {tp.event_id: tp.type for _, _, tp in seen} == expected
    partitions = collector_settings.topics.partitions
    for key, _, tp in seen:
        # Packed per destination partition, keyed by the first event's routing key.
        assert partition_of(key, partitions) == partition_of(tp.routing_key.encode(), partitions)
        assert tp.source == "web"
        assert tp.channel == "web"
    # Events of one partition travel together: several per record, in call order.
    arrays = [value for _, value, _ in seen if isinstance(value, list)]
    assert arrays
    order = list(expected)
    for array in arrays:
        ids = [item["event_id"] for item in array]
        assert ids == sorted(ids, key=order.index)
    purchase = next(tp for _, _, tp in seen if tp.type == "purchase" and tp.customer_id == "cust-0")
    assert purchase.properties["order_id"] == "O-0"
    assert purchase.properties["products"][0]["sku"] == "SKU-0"
    assert purchase.context["library"] == "analytics-python"
    assert purchase.timestamp > 0
    identify = next(tp for _, _, tp in seen if tp.type == "identify" and tp.customer_id == "cust-1")
    assert identify.properties["email"] == "s1@example.com"
    assert identify.properties["first_name"] == "Sam"


def test_segment_sdk_gzip_sync_calls(base: str, broker: Any, collector_settings: Settings) -> None:
    client = Client(APP_KEY, host=base, sync_mode=True, gzip=True, max_retries=0)
    ids = {}
    for i in range(5):
        _, msg = client.screen(user_id=f"u-{i}", name="Cart", context={"device": {"type": "ios"}})
        ids[msg["messageId"]] = "page_view"
        _, msg = client.group(user_id=f"u-{i}", group_id="acme", traits={"plan": "pro"})
        ids[msg["messageId"]] = "group"
    seen = on_topic(broker, collector_settings.topics.touchpoints)
    assert sorted(tp.event_id for _, _, tp in seen) == sorted(ids)
    assert {tp.event_id: tp.type for _, _, tp in seen} == ids
    assert {tp.source for _, _, tp in seen} == {"ios-app"}
    assert {tp.channel for _, _, tp in seen if tp.type == "page_view"} == {"app"}


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_missing_or_unknown_write_key_is_401(
    base: str, broker: Any, collector_settings: Settings, path: str
) -> None:
    msg = track("Product Viewed")
    body = {"batch": [msg]} if path == "/v1/batch" else msg
    for answer in (
        post(base, path, body, key=None),
        post(base, path, body, key="wrong-key"),
        post(base, path, body, key=""),
        post(base, path, body, key=None, headers={"Authorization": "Bearer abc"}),
        post(base, path, body, key=None, headers={"Authorization": "Basic !!notbase64"}),
        post(base, path, {**body, "writeKey": "wrong-key"}, key=None),
        post(base, path, b"not json", key=None),
    ):
        assert answer.status == 401, answer
        assert answer.body["success"] is False
        assert answer.body["error"]
    assert on_topic(broker, collector_settings.topics.touchpoints) == []


def test_write_key_in_the_body_is_accepted(
    base: str, broker: Any, collector_settings: Settings
) -> None:
    msg = track("Product Added")
    answer = post(
        base,
        "/v1/track",
        {**msg, "writeKey": KEY},
        key=None,
        headers={"Content-Type": "text/plain"},
    )
    assert (answer.status, answer.body) == (200, {"success": True})
    assert answer.headers["access-control-allow-origin"] == "*"
    [(_, _, tp)] = on_topic(broker, collector_settings.topics.touchpoints)
    assert (tp.event_id, tp.type, tp.source) == (msg["messageId"], "add_to_cart", "web")


def test_each_endpoint_maps_its_call(base: str, broker: Any, collector_settings: Settings) -> None:
    common = {"anonymousId": "anon-e", "timestamp": TS}
    calls: dict[str, tuple[dict[str, Any], str]] = {
        "/v1/track": ({"event": "Order Refunded", "properties": {"order_id": 7}}, "return"),
        "/v1/page": ({"name": "Home"}, "page_view"),
        "/v1/screen": ({"name": "Home"}, "page_view"),
        "/v1/identify": ({"userId": "c-e", "traits": {"loyalty_id": "L-1"}}, "identify"),
        "/v1/alias": ({"previousId": "anon-e", "userId": "c-e"}, "alias"),
        "/v1/group": ({"groupId": "g-1", "userId": "c-e"}, "group"),
    }
    expected = {}
    for path, (fields, type_) in calls.items():
        mid = f"m-{path}"
        # The endpoint names the call, whatever the body's "type" says.
        answer = post(base, path, {**common, **fields, "messageId": mid, "type": "track"})
        assert answer.status == 200, answer
        expected[mid] = type_
    seen = on_topic(broker, collector_settings.topics.touchpoints)
    assert {tp.event_id: tp.type for _, _, tp in seen} == expected


def test_invalid_json_and_invalid_calls_are_400(
    base: str, broker: Any, collector_settings: Settings
) -> None:
    topics = collector_settings.topics
    answer = post(base, "/v1/track", b'{"event": "Product Added",')
    assert answer.status == 400
    assert answer.body["success"] is False
    assert "not valid JSON" in answer.body["error"]

    answer = post(base, "/v1/batch", {"batch": {"not": "a list"}})
    assert answer.status == 400
    assert "batch must be an array" in answer.body["error"]

    no_ids = track("Product Added", anonymousId=None)
    del no_ids["anonymousId"]
    raw = orjson.dumps(no_ids)
    answer = post(base, "/v1/track", raw)
    assert answer.status == 400
    assert "customer_id or anonymous_id is required" in answer.body["error"]
    assert on_topic(broker, topics.touchpoints) == []
    [dead] = read_topic(broker.bootstrap, topics.dlq)
    assert dead.value == raw
    assert dict(dead.headers)["source"] == b"collector"
    assert b"customer_id or anonymous_id" in dict(dead.headers)["reason"]


def test_batch_with_bad_calls_publishes_the_good_ones(
    base: str, broker: Any, collector_settings: Settings
) -> None:
    topics = collector_settings.topics
    good = [track("Product Viewed"), track("Product Added", anonymousId="anon-2")]
    bad_time = track("Product Added", timestamp="last tuesday")
    huge = track("Product Added", properties={"note": "x" * 33 * 1024})
    not_object = ["track"]
    batch = [good[0], bad_time, good[1], huge, not_object]
    context = {"ip": "198.51.100.7", "library": {"name": "analytics-ios"}}
    answer = post(base, "/v1/batch", {"batch": batch, "context": context, "sentAt": TS})
    assert answer.status == 400
    assert answer.body["success"] is False
    assert answer.body["accepted"] == 2
    rejected = {r["index"]: r for r in answer.body["rejected"]}
    assert set(rejected) == {1, 3, 4}
    assert rejected[1]["messageId"] == bad_time["messageId"]
    assert "timestamp" in rejected[1]["reason"]
    assert "over the 32768-byte limit" in rejected[3]["reason"]
    assert rejected[4]["messageId"] is None

    seen = on_topic(broker, topics.touchpoints)
    assert sorted(tp.event_id for _, _, tp in seen) == sorted(m["messageId"] for m in good)
    for _, _, tp in seen:
        # The batch context lies under each call's own, so the iOS library makes it an app event.
        assert tp.context["ip"] == "198.51.100.7"
        assert tp.channel == "app"

    dead = read_topic(broker.bootstrap, topics.dlq)
    by_index = {int(dict(r.headers)["index"]): r for r in dead}
    assert set(by_index) == {1, 3, 4}
    assert by_index[1].value == orjson.dumps(bad_time)
    assert by_index[3].value == orjson.dumps(huge)
    assert by_index[4].value == orjson.dumps(not_object)
    for index, rec in by_index.items():
        headers = dict(rec.headers)
        assert headers["source"] == b"collector"
        assert headers["reason"].decode() == rejected[index]["reason"]


def test_oversized_requests_are_413(base: str, broker: Any, collector_settings: Settings) -> None:
    big_call = track("Product Added", properties={"note": "x" * 33 * 1024})
    answer = post(base, "/v1/track", big_call)
    assert answer.status == 413
    assert answer.body["success"] is False
    assert "32768-byte limit" in answer.body["error"]

    calls = [track("Product Viewed", properties={"note": "y" * 7_000}) for _ in range(640)]
    big_batch = orjson.dumps({"batch": calls})
    assert len(big_batch) > 4 * 1024 * 1024 + 64 * 1024
    for chunked in (False, True):  # Content-Length checked early; a chunked body while reading
        answer = post(base, "/v1/batch", big_batch, chunked=chunked)
        assert answer.status == 413, answer
        assert "4259840-byte limit" in answer.body["error"]

    bomb = gzip.compress(
        orjson.dumps({"batch": [track("Product Viewed", properties={"pad": " " * 30_000})] * 150})
    )
    assert len(bomb) < 10_000
    answer = post(base, "/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status == 413
    assert "decompressed body" in answer.body["error"]
    assert on_topic(broker, collector_settings.topics.touchpoints) == []


def test_gzip_batch_is_accepted(base: str, broker: Any, collector_settings: Settings) -> None:
    calls = [track("Product Viewed", anonymousId=f"anon-{i}") for i in range(10)]
    body = gzip.compress(orjson.dumps({"batch": calls}))
    answer = post(base, "/v1/batch", body, headers={"Content-Encoding": "gzip"})
    assert (answer.status, answer.body) == (200, {"success": True})
    seen = on_topic(broker, collector_settings.topics.touchpoints)
    assert sorted(tp.event_id for _, _, tp in seen) == sorted(c["messageId"] for c in calls)
    answer = post(base, "/v1/batch", body[:-8], headers={"Content-Encoding": "gzip"})
    assert answer.status == 400


def test_unknown_path_and_wrong_method_answer_json(base: str) -> None:
    answer = post(base, "/v1/purchase", track("Product Added"))
    assert answer.status == 404
    assert answer.body["success"] is False
    answer = request(base, "GET", "/v1/track")
    assert answer.status == 405
    assert answer.body["success"] is False
    assert "POST" in answer.headers["allow"]
    answer = request(base, "OPTIONS", "/v1/batch", key=None)
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "*"


def test_health_and_metrics(base: str, broker: Any) -> None:
    answer = request(base, "GET", "/health", key=None)
    assert answer.status == 200
    assert answer.body["status"] == "ok"
    assert answer.body["broker"]["connected"] is True
    assert answer.body["broker"]["reachable"] is True
    assert answer.body["broker"]["bootstrap"] == broker.bootstrap

    assert post(base, "/v1/track", track("Product Added")).status == 200
    assert post(base, "/v1/track", track("Product Added"), key="nope").status == 401
    text = request(base, "GET", "/metrics", key=None).body.decode()
    assert 'journey_collector_requests_total{endpoint="/v1/track",status="200"}' in text
    assert 'journey_collector_requests_total{endpoint="/v1/track",status="401"}' in text
    assert 'journey_collector_events_total{type="add_to_cart"}' in text


def test_broker_unreachable_answers_503_quickly(settings: Settings) -> None:
    from stream.embedded import free_port

    down = with_keys(settings.with_broker(f"kafka://127.0.0.1:{free_port()}"), ack_timeout_s=2.0)
    connection = BrokerConnection(down.broker, down.collector.ack_timeout_s)
    try:
        with running(down, connection) as url:
            for path, body in (
                ("/v1/track", track("Product Added")),
                ("/v1/batch", {"batch": [track("Product Viewed")]}),
            ):
                started = time.monotonic()
                answer = post(url, path, body)
                assert time.monotonic() - started < 10
                assert answer.status == 503
                assert answer.body["success"] is False
                assert "broker" in answer.body["error"]
                assert answer.headers["retry-after"]
            health = request(url, "GET", "/health", key=None)
            assert health.status == 200
            assert health.body["status"] == "degraded"
            assert health.body["broker"]["reachable"] is False
            assert health.body["broker"]["connected"] is False
    finally:
        connection.close()


def test_broker_outage_while_running_answers_503(settings: Settings, tmp_path: Path) -> None:
    from stream.embedded import EmbeddedBroker, create_topics

    own = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    try:
        local = with_keys(settings.with_broker(own.url), ack_timeout_s=2.0)
        create_topics(own.bootstrap, {local.topics.touchpoints: 2, local.topics.dlq: 1})
        publisher = Publisher(local.broker, local.collector.ack_timeout_s)
        try:
            with running(local, publisher) as url:
                assert post(url, "/v1/track", track("Product Viewed")).status == 200
                own.stop()
                started = time.monotonic()
                answer = post(url, "/v1/track", track("Product Added"))
                elapsed = time.monotonic() - started
                assert answer.status == 503, answer
                assert answer.body["success"] is False
                assert answer.body["error"]
                assert elapsed < 15
        finally:
            publisher.close()
    finally:
        own.stop()


def test_run_serves_until_sigterm(
    collector_settings: Settings, broker: Any, tmp_path: Path
) -> None:
    from stream.embedded import free_port

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JOURNEY_BROKER_URL": broker.url,
        "JOURNEY_COLLECTOR_PORT": str(port),
        "JOURNEY_COLLECTOR_WRITE_KEYS": f"{KEY}=web",
        "JOURNEY_TOPICS_TOUCHPOINTS": collector_settings.topics.touchpoints,
        "JOURNEY_TOPICS_DLQ": collector_settings.topics.dlq,
    }
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "
        "from stream.settings import load_settings; "
        "from stream.producers.collector import run; run(load_settings())"
    )
    log_path = tmp_path / "collector.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def health() -> Any:
            try:
                return request(url, "GET", "/health", key=None).body
            except OSError:
                return None

        wait_for(health, lambda body: bool(body) and body["broker"]["connected"], timeout_s=60)
        msg = track("Checkout Started")
        assert post(url, "/v1/track", msg).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert "Traceback" not in output, output
    assert "stopping the collector" in output
    [(_, _, tp)] = on_topic(broker, collector_settings.topics.touchpoints)
    assert tp.event_id == msg["messageId"]
