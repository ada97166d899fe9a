"""The worker's consumer waits at most ``worker.fetch_max_wait_ms`` for a fetch to fill.

Faust builds the aiokafka consumer with ``fetch_max_wait_ms=1500`` whatever the
configuration; the embedded Tansu broker answers a waiting fetch when its wait
runs out, not when records arrive (see ``stream.app.consumer_fetch_max_wait``). These
tests build the consumer through Faust's real driver, without starting it (no
broker is involved), and read the wait its fetcher will be built with.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faust

from stream.app import faust_app
from stream.settings import Settings, load_settings


def fetch_wait(tmp_path: Path, **worker: object) -> int:
    """The fetch wait of the consumer a worker app with these settings builds."""
    base: Settings = load_settings(environ={})
    settings = replace(
        base,
        worker=replace(base.worker, data_dir=str(tmp_path / "worker"), **worker),  # type: ignore[arg-type]
    )
    app: faust.App = faust_app(settings, store="memory://")
    app.finalize()
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    return int(consumer._fetch_max_wait_ms)


async def test_the_configured_wait_reaches_the_consumer(tmp_path: Path) -> None:
    assert fetch_wait(tmp_path, fetch_max_wait_ms=123) == 123


async def test_the_default_is_far_below_faust_s_1500_ms(tmp_path: Path) -> None:
    assert fetch_wait(tmp_path) == 100


async def test_a_second_app_does_not_stack_the_patch(tmp_path: Path) -> None:
    fetch_wait(tmp_path / "a", fetch_max_wait_ms=50)
    assert fetch_wait(tmp_path / "b", fetch_max_wait_ms=70) == 70
