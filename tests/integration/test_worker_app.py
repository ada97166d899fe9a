"""How the worker reads its inputs: which agent reads what, and the poll size.

Faust's conductor delivers each polled record into its agent's stream buffer
one at a time and waits while that buffer is full. Under a backlog ingest's
buffer is full most of the time, so identity links must not share it (a link,
and the journey waiting for its answer, would wait behind thousands of packed
touchpoints), and a poll must stay small enough that the records behind a full
buffer are few. These tests build the worker app and its consumer through
Faust's real code, without starting them (no broker is involved).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faust
import pytest

from stream.app import faust_app
from stream.ingest.agent import register_ingest
from stream.journey.agent import register_journey
from stream.settings import Settings, load_settings
from stream.worker import declare_topics


def worker_app(tmp_path: Path, **worker: object) -> faust.App:
    """The worker's app and agents (``build_worker_app`` without its web pages and
    Prometheus sensors, which register process-wide metrics once)."""
    base: Settings = load_settings(environ={})
    settings = replace(
        base,
        worker=replace(base.worker, data_dir=str(tmp_path / "worker"), **worker),  # type: ignore[arg-type]
    )
    app = faust_app(settings, store="memory://")
    topics = declare_topics(app, settings)
    register_ingest(app, settings, topics, register_journey(app, settings, topics))
    return app


def test_links_have_an_agent_and_a_stream_buffer_of_their_own(tmp_path: Path) -> None:
    app = worker_app(tmp_path)
    topics = {name: tuple(agent.channel.topics) for name, agent in app.agents.items()}
    assert topics == {
        "ingest": ("touchpoints",),
        "links": ("journey.links",),
        "journey": ("touchpoints.resolved", "journey.timers"),
    }
    channels = [agent.channel for agent in app.agents.values()]
    assert len({id(channel) for channel in channels}) == len(channels)


def max_poll_records(app: faust.App) -> int:
    app.finalize()
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    return int(consumer._max_poll_records)


async def test_the_consumer_polls_at_most_500_records_by_default(tmp_path: Path) -> None:
    assert max_poll_records(worker_app(tmp_path)) == 500


async def test_the_configured_poll_size_reaches_the_consumer(tmp_path: Path) -> None:
    assert max_poll_records(worker_app(tmp_path, max_poll_records=64)) == 64


def compression_type(app: faust.App) -> str | None:
    app.finalize()
    producer = app.producer._new_producer()  # type: ignore[attr-defined]
    return producer._compression_type  # type: ignore[no-any-return]


async def test_the_worker_compresses_what_it_produces_with_zstd_by_default(tmp_path: Path) -> None:
    from aiokafka.codec import has_zstd
    from kafka.codec import has_zstd as kafka_python_has_zstd

    assert compression_type(worker_app(tmp_path)) == "zstd"
    # Both clients can read it: aiokafka (dispatcher, workers) and kafka-python.
    assert has_zstd() and kafka_python_has_zstd()


async def test_compression_can_be_turned_off_and_a_wrong_name_is_refused(tmp_path: Path) -> None:
    assert compression_type(worker_app(tmp_path / "a", compression="none")) is None
    assert compression_type(worker_app(tmp_path / "b", compression="gzip")) == "gzip"
    with pytest.raises(ValueError, match=r"worker\.compression"):
        worker_app(tmp_path / "c", compression="lz4")
