"""Each workaround of Faust and aiokafka internals (``stream.faust_ext``), on its own.

Every test drives Faust's real code (a buffer service, an app's consumer
thread, a store) with the patch applied, and the patches are undone after each
test; where it shows, the same test without the patch shows the upstream
behaviour the patch exists for. The canary test fails when the source of a
patched upstream function changes: re-check the patch, then the recorded hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from prometheus_client import CollectorRegistry

from stream import faust_ext
from stream.app import faust_app
from stream.faust_ext import (
    CHECKED_VERSIONS,
    ExtOptions,
    check_versions,
    fetch_wait,
    monitor,
    offset_gaps,
    producer_flush,
    recovery,
    seek_flow,
    seek_uncommitted,
    store,
)
from stream.settings import Settings, load_settings

SEND_S = 0.15


@pytest.fixture(autouse=True)
def undo_patches() -> Iterator[None]:
    """Every test starts and ends with Faust as upstream ships it."""
    faust_ext.undo_all()
    yield
    faust_ext.undo_all()


def settings_in(tmp_path: Path, **worker: Any) -> Settings:
    base = load_settings(environ={})
    return replace(base, worker=replace(base.worker, data_dir=str(tmp_path / "worker"), **worker))


# -- versions and the canary ------------------------------------------------------
#: sha256 of the upstream source each patch replaces or wraps (faust-streaming 0.15.3).
UPSTREAM_SOURCE = {
    "faust.tables.recovery:Recovery._build_highwaters": (
        "91b4cc0d3724ae7bfc398e873684fc6f667ef8feb61a3b3314346ef11f2823de"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7"
    ),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed": (
        "775ab0adc4b052abee204d5347a556412b1f77ed4de971adde69a55a1cb6f908"
    ),
    "faust.transport.consumer:Consumer.perform_seek": (
        "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6"
    ),
    "faust.transport.consumer:Consumer._wait_next_records": (
        "6218e1969a636b3ff504ad1b8e7ad58a113572e43d746cc96d684ed5153032c6"
    ),
    "faust.transport.consumer:Consumer._add_gap": (
        "4df2573ded7c1c2cde04dc6bde6d4480cb5875ef565256e56966b585ae39b1c1"
    ),
    "faust.transport.producer:ProducerBuffer.put": (
        "bf26dfbc01d910885635a5a8cb83726ba90f7eac819404564bbfdba2856900a3"
    ),
    "faust.transport.producer:ProducerBuffer._send_pending": (
        "4a9d5f932b56bc6842151bfc868aec1570d53cab7ff129ece408d966ac7f7da8"
    ),
    "faust.transport.producer:ProducerBuffer.flush": (
        "26fbebb124ad9c9890f19b4615585cf3eda102b61203e6aa885d3fabfda9b157"
    ),
    "faust.stores.rocksdb:Store._open_for_partition": (
        "1dc4e0113d67379dd61c0a396fa92636577d5fc6be60d4312253fa566080377b"
    ),
    "faust.stores.rocksdb:Store.apply_changelog_batch": (
        "ea3344d369fc4ab5e3cdace30565691136035a463acb7b2551fdc0b8af71643b"
    ),
    "faust.stores.rocksdb:Store.set_persisted_offset": (
        "b4c811926678346ebb8c40486dbc46d0fbac2bbeaa592384bd955112556acf45"
    ),
    "faust.sensors.prometheus:PrometheusMonitor.on_message_in": (
        "ca24793cbc41deb7998cef2c78cf95604dbe96de13e1ae599d8d66797920470d"
    ),
}


def upstream_source(name: str) -> str:
    import importlib

    module, _, attribute = name.partition(":")
    owner_name, _, member = attribute.partition(".")
    owner = getattr(importlib.import_module(module), owner_name)
    return inspect.getsource(getattr(owner, member))


def test_upstream_functions_the_patches_rely_on_are_unchanged() -> None:
    changed = {
        name: hashlib.sha256(upstream_source(name).encode()).hexdigest()
        for name, digest in UPSTREAM_SOURCE.items()
        if hashlib.sha256(upstream_source(name).encode()).hexdigest() != digest
    }
    assert changed == {}, (
        "upstream source changed: re-check the patches in stream/faust_ext, "
        f"then record the new hashes: {changed}"
    )


def test_versions_outside_the_checked_ranges_are_refused() -> None:
    check_versions()  # what is installed passes
    with pytest.raises(faust_ext.UnsupportedVersion, match=r"faust-streaming 0\.16\.0"):
        check_versions({"faust-streaming": "0.16.0", "aiokafka": "0.14.0"})
    with pytest.raises(faust_ext.UnsupportedVersion, match=r"aiokafka 0\.12\.0"):
        check_versions({"faust-streaming": "0.15.3", "aiokafka": "0.12.0"})


def test_pyproject_pins_the_checked_versions() -> None:
    """pip cannot install a Faust or aiokafka that :func:`check_versions` would refuse."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    pins = {
        req.name: req.specifier
        for req in map(Requirement, pyproject["project"]["dependencies"])
        if req.name in CHECKED_VERSIONS
    }
    assert set(pins) == set(CHECKED_VERSIONS)
    for package, (low, high) in CHECKED_VERSIONS.items():
        lowest, above = ".".join(map(str, low)), ".".join(map(str, high))
        assert pins[package] == SpecifierSet(f">={lowest},<{above}"), (package, pins[package])


def test_patches_apply_once_and_undo() -> None:
    original = ProducerBuffer.flush
    faust_ext.patch_all()
    patched = ProducerBuffer.flush
    assert patched is not original
    faust_ext.patch_all()
    assert ProducerBuffer.flush is patched, "applying twice changes nothing"
    faust_ext.undo_all()
    assert ProducerBuffer.flush is original


# -- producer flush ----------------------------------------------------------------
class SlowChannel:
    """Publishes after ``SEND_S`` (a busy loop or a full accumulator), or fails."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.published: list[int] = []
        self.fail_at = fail_at

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(SEND_S)
        if self.fail_at is not None and fut.n == self.fail_at:
            raise ConnectionError("broker gone")
        self.published.append(fut.n)


def message(channel: SlowChannel, n: int) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


async def started_buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


async def stop(buffer: ProducerBuffer) -> None:
    # What a test left queued is dropped (stopping Faust's buffer refuses to flush it).
    while not buffer.pending.empty():
        buffer.pending.get_nowait()
    await buffer.stop()


@pytest.mark.parametrize("patched", [True, False])
async def test_flush_waits_for_every_queued_message(patched: bool) -> None:
    if patched:
        for patch in producer_flush.patches():
            patch.apply()
    buffer = await started_buffer()
    channel = SlowChannel()
    try:
        for n in range(5):
            buffer.put(message(channel, n))
        await asyncio.wait_for(buffer.flush(), timeout=10)
        if patched:
            assert channel.published == [0, 1, 2, 3, 4]
            assert buffer.size == 0
        else:
            # Upstream gives up after 0.1 s without progress: the commit would go ahead.
            assert len(channel.published) < 5
    finally:
        await stop(buffer)


async def test_flush_does_not_wait_for_messages_queued_after_it_began() -> None:
    for patch in producer_flush.patches():
        patch.apply()
    buffer = await started_buffer()
    channel = SlowChannel()
    try:
        buffer.put(message(channel, 0))
        flushing = asyncio.ensure_future(buffer.flush())
        await asyncio.sleep(0)
        for n in range(1, 30):
            buffer.put(message(channel, n))
        await asyncio.wait_for(flushing, timeout=10)
        # Done once message 0 was handed on, long before the 29 later ones.
        assert channel.published[0] == 0 and len(channel.published) < 29
    finally:
        await stop(buffer)


async def test_flush_raises_when_the_buffer_dies_with_messages_queued() -> None:
    for patch in producer_flush.patches():
        patch.apply()
    buffer = await started_buffer()
    channel = SlowChannel(fail_at=1)
    try:
        for n in range(4):
            buffer.put(message(channel, n))
        with pytest.raises(RuntimeError, match="unsent"):
            await asyncio.wait_for(buffer.flush(), timeout=10)
        assert channel.published == [0]
    finally:
        await stop(buffer)


# -- consumer fetch wait ------------------------------------------------------------
def consumer_fetch_wait(tmp_path: Path, **worker: Any) -> int:
    """The fetch wait of the consumer a worker app with these settings builds (not started)."""
    app: faust.App = faust_app(settings_in(tmp_path, **worker), store="memory://")
    app.finalize()
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    return int(consumer._fetch_max_wait_ms)


async def test_consumer_gets_the_configured_fetch_wait(tmp_path: Path) -> None:
    assert consumer_fetch_wait(tmp_path / "a", fetch_max_wait_ms=123) == 1500  # upstream
    for patch in fetch_wait.patches():
        patch.apply()
    assert consumer_fetch_wait(tmp_path / "b", fetch_max_wait_ms=123) == 123
    # Each app reads its own setting: no first caller's value captured.
    assert consumer_fetch_wait(tmp_path / "c", fetch_max_wait_ms=70) == 70
    assert consumer_fetch_wait(tmp_path / "d") == 100


# -- offset holes ----------------------------------------------------------------------
async def test_an_offset_hole_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for patch in offset_gaps.patches():
        patch.apply()
    app: faust.App = faust_app(settings_in(tmp_path), store="memory://")
    app.finalize()
    consumer = app.consumer
    with caplog.at_level(logging.WARNING, logger="stream.faust_ext.offset_gaps"):
        await consumer._add_gap(TP("touchpoints", 2), 748, 855)  # type: ignore[attr-defined]
    assert "offsets 748 to 854 skipped" in caplog.text


# -- seeks -------------------------------------------------------------------------
def test_seek_patches_wrap_the_upstream_methods() -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    upstream = (Consumer.perform_seek, AIOKafkaConsumerThread.seek_to_committed)
    for patch in seek_flow.patches() + seek_uncommitted.patches():
        patch.apply()
    assert (Consumer.perform_seek, AIOKafkaConsumerThread.seek_to_committed) != upstream
    assert [p.original() for p in seek_flow.patches() if p.attribute == "perform_seek"] == [
        upstream[0]
    ]


async def test_the_fetch_loop_counts_as_parked_only_while_the_flow_is_stopped(
    tmp_path: Path,
) -> None:
    for patch in seek_flow.patches():
        patch.apply()
    app: faust.App = faust_app(settings_in(tmp_path), store="memory://")
    app.finalize()
    consumer = app.consumer
    consumer.stop_flow()
    waiting = asyncio.ensure_future(consumer._wait_next_records(5.0))  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    assert seek_flow.parked(consumer).is_set()
    consumer.resume_flow()
    await asyncio.wait_for(waiting, 5)
    assert not seek_flow.parked(consumer).is_set()


# -- the store: no WAL, epochs, contiguous offsets ----------------------------------
def wal_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.log"))


def journey_store(tmp_path: Path) -> store.Store:
    faust_ext.patch_all()
    app: faust.App = faust_app(settings_in(tmp_path))
    table = app.Table("journeys", default=None, key_type=bytes, value_type=bytes, partitions=1)
    assert isinstance(table.data, store.Store)
    return table.data


def test_store_runs_without_wal(tmp_path: Path) -> None:
    s = journey_store(tmp_path)
    db = s._db_for_partition(0)
    for i in range(500):
        db.put(f"customer-{i}".encode(), b"x" * 2000)
    assert wal_bytes(s.partition_path(0)) == 0
    # Upstream's store keeps the log.
    upstream_db = faust.stores.rocksdb.RocksDBOptions(use_rocksdict=True).open(tmp_path / "up.db")
    upstream_db.put(b"k", b"x" * 2000)
    assert wal_bytes(tmp_path / "up.db") > 0
    upstream_db.close()


def record(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    tp = TP("journey-journeys-changelog", partition)
    return SimpleNamespace(
        message=SimpleNamespace(tp=tp, offset=offset, partition=partition, key=key, value=value)
    )


def test_restore_never_overwrites_a_value_of_a_later_owner(tmp_path: Path) -> None:
    s = journey_store(tmp_path)
    old, new = (10, 3), (25, 4)
    batch = [
        record(0, 10, b"k", store.encode(old, b"first owner")),
        record(0, 25, b"k", store.encode(new, b"second owner")),
        # A paused first owner wakes up and writes once more: ignored on restore.
        record(0, 26, b"k", store.encode(old, b"stale")),
        record(0, 27, b"other", store.encode(old, b"only the first owner wrote this")),
    ]
    s.apply_changelog_batch(batch, lambda k: k, lambda v: v)
    db = s._db_for_partition(0)
    assert store.payload(db.get(b"k")) == b"second owner"
    assert store.payload(db.get(b"other")) == b"only the first owner wrote this"
    assert s.persisted_offset(batch[0].message.tp) == 27


def test_an_own_write_past_anothers_records_does_not_move_the_recorded_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = journey_store(tmp_path)
    tp = TP("journey-journeys-changelog", 0)
    faust.stores.rocksdb.Store.set_persisted_offset(s, tp, 66)
    asyncio.run(s.on_recovery_completed({tp}, set()))
    assert s.epochs[0][0] == 67
    s.confirm_written(tp, 68, 2)  # offsets 67, 68: ours, contiguous
    assert s.persisted_offset(tp) == 68
    with caplog.at_level(logging.WARNING, logger="stream.faust_ext.store"):
        s.confirm_written(tp, 79, 1)  # 69-78 were written by someone else
    assert s.persisted_offset(tp) == 68, "recovery must start before the other's records"
    assert "offsets 69 to 78" in caplog.text
    s.confirm_written(tp, 80, 1)  # not even contiguous own writes after the hole
    assert s.persisted_offset(tp) == 68
    # Recovered again (reading 69 onwards), the store records its offset again.
    faust.stores.rocksdb.Store.set_persisted_offset(s, tp, 80)
    asyncio.run(s.on_recovery_completed({tp}, set()))
    assert s.epochs[0][0] == 81
    s.confirm_written(tp, 81, 1)
    assert s.persisted_offset(tp) == 81


# -- recovery on the embedded broker ------------------------------------------------
def test_recovery_patch_acts_only_for_apps_that_ask(tmp_path: Path) -> None:
    on = faust_app(settings_in(tmp_path / "on", recovery_consistency_check=False))
    off = faust_app(settings_in(tmp_path / "off", recovery_consistency_check=True))
    assert isinstance(on.journey_ext, ExtOptions)  # type: ignore[attr-defined]
    assert on.journey_ext.fetched_end_bootstrap is not None  # type: ignore[attr-defined]
    assert off.journey_ext.fetched_end_bootstrap is None  # type: ignore[attr-defined]
    (patch,) = recovery.patches()
    patch.apply()
    assert patch.applied


# -- the monitor -----------------------------------------------------------------------
def test_cached_monitor_counts_as_faust_does(tmp_path: Path) -> None:
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    registries = CollectorRegistry(), CollectorRegistry()
    cached = monitor.CachedLabelsMonitor(FaustMetrics.create(registries[0], "faust_test"))
    upstream = PrometheusMonitor(metrics=FaustMetrics.create(registries[1], "faust_test"))
    message = SimpleNamespace(time_in=None)
    for m in (cached, upstream):
        for offset in range(5):
            m.on_message_in(TP("touchpoints", offset % 2), offset, message)  # type: ignore[arg-type]

    def samples(registry: CollectorRegistry) -> dict[Any, float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect()
            for s in family.samples
            if "messages_received" in s.name and not s.name.endswith("_created")
        }

    assert samples(registries[0]) == samples(registries[1]) != {}
