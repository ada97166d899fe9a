"""Table recovery reads each changelog to the end a fetch reports (embedded broker only).

Upstream: ``faust.tables.recovery.Recovery._build_highwaters`` (faust-streaming
0.15.3) takes the end of each changelog partition from ListOffsets and stops
recovering there. The embedded Tansu broker answers ListOffsets with the start
of a partition's last record batch + 1, not its end, so a worker taking over
partitions would miss the journeys written last. The patched method raises
each end to the high watermark a fetch response reports. It acts only for an
app whose ``journey_ext.fetched_end_bootstrap`` is set, which ``faust_app``
does when ``worker.recovery_consistency_check`` is off (the embedded stack).

Test: tests/integration/test_faust_ext.py::test_recovery_reads_to_the_fetched_end.
Remove when the embedded broker reports true end offsets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stream.faust_ext._patch import Patch

log = logging.getLogger(__name__)


async def fetched_end_offsets(bootstrap: str, ends: dict[Any, int]) -> dict[Any, int]:
    """``max(end, high watermark of a fetch at end - 1)`` for each partition of ``ends``."""
    from aiokafka import AIOKafkaConsumer

    wanted = {tp: end for tp, end in ends.items() if end > 0}
    if not wanted:
        return dict(ends)
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=1024,
    )
    await probe.start()
    try:
        probe.assign(list(wanted))
        for tp, end in wanted.items():
            probe.seek(tp, end - 1)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if all(probe.highwater(tp) is not None for tp in wanted):
                break
            await probe.getmany(timeout_ms=200, max_records=1)
        out = dict(ends)
        for tp, end in wanted.items():
            out[tp] = max(end, probe.highwater(tp) or end)
        return out
    finally:
        await probe.stop()


def _make(original: Any) -> Any:
    async def _build_highwaters(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await original(self, consumer, tps, destination, title)
        options = getattr(self.app, "journey_ext", None)
        bootstrap = options.fetched_end_bootstrap if options is not None else None
        if bootstrap is None:
            return
        # Faust keeps "last offset" (end - 1); -1 for an empty partition.
        ends = {tp: destination[tp] + 1 for tp in tps if destination.get(tp, -1) >= 0}
        fetched = await fetched_end_offsets(bootstrap, ends)
        for tp, end in fetched.items():
            if end - 1 != destination[tp]:
                log.info("changelog %s ends at %d, not %d", tp, end, destination[tp] + 1)
            destination[tp] = end - 1

    return _build_highwaters


def patches() -> list[Patch]:
    from faust.tables.recovery import Recovery

    return [Patch(Recovery, "_build_highwaters", _make)]
