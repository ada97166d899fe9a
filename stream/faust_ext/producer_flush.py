"""The producer's flush before an offset commit waits until its buffer is empty.

Upstream: ``faust.transport.producer.ProducerBuffer.flush`` (faust-streaming
0.15.3) gives up as soon as 0.1 s pass without a message leaving the buffer
(``flush_atmost``: a busy event loop is enough), and the offset commit goes
ahead. Table writes queue in that buffer, so a worker killed then could have
committed input whose state changes never reached the changelog. Patched,
``put`` and ``_send_pending`` count what is queued and handed on, and
``flush`` returns once everything queued before the call was handed to
aiokafka (whose own flush, next in ``Producer.flush``, waits for delivery);
it raises if the buffer stops with messages unsent.

Test: tests/integration/test_faust_ext.py::test_flush_waits_for_every_queued_message,
and the crash-recovery oracle test.
Remove when Faust's flush drains its buffer before a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from stream.faust_ext._patch import Patch

log = logging.getLogger(__name__)


def _make_put(original: Any) -> Any:
    def put(self: Any, fut: Any) -> None:
        original(self, fut)
        self._journey_queued = getattr(self, "_journey_queued", 0) + 1

    return put


def _make_send_pending(original: Any) -> Any:
    async def _send_pending(self: Any, fut: Any) -> None:
        await original(self, fut)
        self._journey_handed = getattr(self, "_journey_handed", 0) + 1

    return _send_pending


def _make_flush(original: Any) -> Any:
    async def flush(self: Any) -> None:
        app = self.app
        if app is None or app.conf.producer_threaded or self.should_stop:
            # Threaded producers have their own queue; a stopping buffer sends no more.
            await original(self)
            return
        target = getattr(self, "_journey_queued", 0)
        started = time.monotonic()
        warned = False
        while (handed := getattr(self, "_journey_handed", 0)) < target:
            if self.crashed or self.should_stop:
                unsent = target - handed
                raise RuntimeError(f"producer buffer stopped with {unsent} messages unsent")
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.5)
            if not warned and time.monotonic() - started > 10.0:
                warned = True
                log.warning("producer flush waiting for %d buffered messages", target - handed)

    return flush


def patches() -> list[Patch]:
    from faust.transport.producer import ProducerBuffer

    return [
        Patch(ProducerBuffer, "put", _make_put),
        Patch(ProducerBuffer, "_send_pending", _make_send_pending),
        Patch(ProducerBuffer, "flush", _make_flush),
    ]
