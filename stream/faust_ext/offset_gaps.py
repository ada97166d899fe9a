"""A hole in an input partition's offsets is logged as a warning.

Upstream: ``faust.transport.consumer.Consumer._add_gap`` (faust-streaming
0.15.3) counts offsets it never received between two records as done, so the
next commit moves past them, silently. The engine's topics are neither
compacted nor transactional, so such a hole means skipped records; the wrapper
names them and changes nothing else.

Test: tests/integration/test_faust_ext.py::test_an_offset_hole_is_logged.
Remove if Faust logs holes itself.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from stream.faust_ext._patch import Patch

log = logging.getLogger(__name__)


def _make(original: Any) -> Any:
    @functools.wraps(original)
    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        log.warning("%s: offsets %d to %d skipped (never received)", tp, offset_from, offset_to - 1)
        await original(self, tp, offset_from, offset_to)

    return _add_gap


def patches() -> list[Patch]:
    from faust.transport.consumer import Consumer

    return [Patch(Consumer, "_add_gap", _make)]
