"""RudderStack's and Segment's own SDKs against the collector: every call arrives, whole.

rudder-sdk-python and the Node SDKs (@rudderstack/rudder-sdk-node,
@segment/analytics-node, installed from the npm registry into tests/sdk/node by
`make test`) send what their users' code sends: RudderStack's identify carries
its traits in ``context.traits``, and rudder-sdk-python builds batch requests
up to 4 MB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient

from stream.embedded import create_topics
from stream.producers.publisher import Publisher
from stream.settings import Settings
from tests.helpers import REPO, wait_for
from tests.integration.test_collector import KEY, on_topic, running, with_keys

NODE_CLIENTS = REPO / "tests" / "sdk" / "node"


@pytest.fixture
def collector(broker: Any, settings: Settings) -> Iterator[tuple[str, Settings]]:
    """A real collector app on a free port, publishing to the session broker."""
    t = settings.topics
    create_topics(broker.bootstrap, {t.touchpoints: t.partitions, t.dlq: 1})
    s = with_keys(settings)
    publisher = Publisher(s.broker, s.collector.ack_timeout_s)
    try:
        with running(s, publisher) as url:
            yield url, s
    finally:
        publisher.close()


def arrived(broker: Any, settings: Settings, user: str) -> list[Any]:
    return [tp for _, _, tp in on_topic(broker, settings.topics.touchpoints) if user in str(tp)]


def test_rudder_python_identify_traits_and_4_mb_batches_arrive_whole(
    broker: Any, collector: tuple[str, Settings]
) -> None:
    base, collector_settings = collector
    errors: list[Any] = []
    client = RudderClient(
        KEY,
        host=base,
        on_error=lambda exc, batch: errors.append(exc),
        max_retries=0,
        upload_size=200,
        gzip=True,
    )
    user = f"rudder-{uuid.uuid4().hex[:8]}"
    try:
        client.identify(user, {"email": f"{user}@example.com", "firstName": "Ruth"})
        # 200 calls of ~20 KB: the SDK posts them as batches of up to 4 MB.
        for i in range(200):
            client.track(
                user,
                "Product Viewed",
                {"sku": f"SKU-{i}", "price": 1.0, **{f"note{n}": "z" * 7_000 for n in range(3)}},
            )
        client.flush()
    finally:
        client.join()
    assert not errors, errors
    seen = wait_for(
        lambda: arrived(broker, collector_settings, user), lambda tps: len(tps) >= 201, 60
    )
    counts = Counter(tp.type for tp in seen)
    assert counts == {"product_view": 200, "identify": 1}, counts
    (identify,) = [tp for tp in seen if tp.type == "identify"]
    # RudderStack's SDK put the traits in context.traits only.
    assert identify.properties["email"] == f"{user}@example.com"
    assert identify.properties["first_name"] == "Ruth"


@pytest.mark.parametrize("sdk", ["rudderstack", "segment"])
def test_node_sdks_calls_arrive_with_their_traits(
    sdk: str, broker: Any, collector: tuple[str, Settings]
) -> None:
    base, collector_settings = collector
    node = shutil.which("node")
    assert node, "node is not installed: scripts/install-system-deps installs it"
    assert (NODE_CLIENTS / "node_modules").is_dir(), "run `make test` (it installs the SDKs)"
    user = f"{sdk}-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [node, "send.mjs", sdk, base, KEY, user, "12"],
        cwd=NODE_CLIENTS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sent = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sent["errors"] == [], sent
    seen = wait_for(
        lambda: arrived(broker, collector_settings, user),
        lambda tps: len(tps) >= sent["calls"],
        60,
    )
    counts = Counter(tp.type for tp in seen)
    assert counts == {"identify": 1, "product_view": 12, "add_to_cart": 1}, counts
    (identify,) = [tp for tp in seen if tp.type == "identify"]
    assert identify.properties["email"] == f"{user}@example.com"
    assert identify.properties["first_name"] == "Node"
    assert identify.properties["loyalty_id"] == f"L-{user}"
    library = {tp.context.get("library") for tp in seen}
    assert len(library) == 1 and library != {None}, library


def test_node_clients_are_pinned() -> None:
    lock = json.loads((NODE_CLIENTS / "package-lock.json").read_text())
    deps = json.loads((NODE_CLIENTS / "package.json").read_text())["dependencies"]
    for name, version in deps.items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
