"""A seek made while Faust's fetch loop runs stops the loop first.

Upstream: ``faust.transport.consumer.Consumer.perform_seek`` and
``Consumer._wait_next_records`` (faust-streaming 0.15.3). After a rebalance
Faust seeks the input partitions to their committed offsets, but table
recovery has already turned the flow on, so a fetch made before the seek can
be handed out after it: Faust takes the jump for a hole (counted as done and
committed past) or drops the re-fetched records as already read, and journeys
lose events. Patched, a seek made with the flow on stops it, clears the
agents' queues (as Faust does when a rebalance starts), waits at most
``PARK_TIMEOUT_S`` until the fetch loop waits for the flow, seeks, then resumes.
A seek made with the flow stopped is unchanged.

Test: tests/integration/test_faust_ext.py::test_seek_waits_for_the_fetch_loop_to_park,
and the crash and scale-out oracle tests under load.
Remove when Faust stops its flow before seeking.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stream.faust_ext._patch import Patch

log = logging.getLogger(__name__)

#: Longest a seek waits for the fetch loop to stop handing out records.
PARK_TIMEOUT_S = 10.0


def parked(consumer: Any) -> asyncio.Event:
    """Set while ``consumer``'s fetch loop waits for the flow with no records in hand."""
    event: asyncio.Event | None = consumer.__dict__.get("_journey_parked")
    if event is None:
        event = consumer.__dict__["_journey_parked"] = asyncio.Event()
    return event


def _make_wait(original: Any) -> Any:
    async def _wait_next_records(self: Any, timeout: float) -> Any:
        # Entered with the flow stopped: the loop waits for the flow and holds no records.
        if not self.flow_active:
            parked(self).set()
        try:
            return await original(self, timeout)
        finally:
            parked(self).clear()

    return _wait_next_records


def _make_seek(original: Any) -> Any:
    async def perform_seek(self: Any) -> None:
        app = self.app
        fetcher = app._fetcher
        if not self.flow_active or not fetcher.started or fetcher.should_stop:
            await original(self)
            return
        self.stop_flow()
        app.flow_control.suspend()
        app.flow_control.clear()
        try:
            try:
                await asyncio.wait_for(parked(self).wait(), timeout=PARK_TIMEOUT_S)
            except TimeoutError:
                log.warning("fetch loop still busy after %.0f s; seeking anyway", PARK_TIMEOUT_S)
            await original(self)
        finally:
            app.flow_control.resume()
            self.resume_flow()

    return perform_seek


def patches() -> list[Patch]:
    from faust.transport.consumer import Consumer

    return [
        Patch(Consumer, "_wait_next_records", _make_wait),
        Patch(Consumer, "perform_seek", _make_seek),
    ]
