"""The worker's consumer waits ``worker.fetch_max_wait_ms`` for a fetch to fill.

Upstream: ``faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.
_create_worker_consumer`` (faust-streaming 0.15.3) builds the consumer with
``fetch_max_wait_ms=1500``. A broker that answers a waiting fetch only when
the wait runs out (the embedded one) then delivers what ingest forwards to the
journey agent up to that late, and the two agents of one worker wait on each
other. The patched method sets the app's ``journey_ext.fetch_max_wait_ms``
(none: Faust's value) on the consumer before it starts.

Test: tests/integration/test_faust_ext.py::test_consumer_gets_the_configured_fetch_wait.
Remove when Faust takes ``fetch_max_wait_ms`` as a setting.
"""

from __future__ import annotations

import functools
from typing import Any

from stream.faust_ext._patch import Patch


def _make(original: Any) -> Any:
    @functools.wraps(original)
    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        options = getattr(transport.app, "journey_ext", None)
        if options is not None and options.fetch_max_wait_ms is not None:
            # Read by the consumer's start(), which builds its fetcher.
            consumer._fetch_max_wait_ms = options.fetch_max_wait_ms
        return consumer

    return _create_worker_consumer


def patches() -> list[Patch]:
    from faust.transport.drivers import aiokafka as driver

    return [Patch(driver.AIOKafkaConsumerThread, "_create_worker_consumer", _make)]
