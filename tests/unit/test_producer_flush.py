"""Faust's producer flush (run before every offset commit) waits for its whole buffer.

Unpatched, ``ProducerBuffer.flush`` returned once 0.1 s passed without a message
leaving the buffer, so a commit could go ahead with table writes still queued
(see ``stream.app.flush_waits_for_buffer``). These tests drive Faust's real
buffer service; only the channel a message is published on is a stand-in
whose sends take longer than that 0.1 s.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.producer import ProducerBuffer

from stream.app import flush_waits_for_buffer

SEND_S = 0.15


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
    flush_waits_for_buffer()
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


async def stop(buffer: ProducerBuffer) -> None:
    # What a test left queued is dropped (stopping Faust's buffer refuses to flush it).
    while not buffer.pending.empty():
        buffer.pending.get_nowait()
    await buffer.stop()


async def test_flush_returns_only_when_every_queued_message_was_handed_on() -> None:
    buffer = await started_buffer()
    channel = SlowChannel()
    try:
        for n in range(5):
            buffer.put(message(channel, n))
        await asyncio.wait_for(buffer.flush(), timeout=10)
        assert channel.published == [0, 1, 2, 3, 4]
        assert buffer.size == 0
    finally:
        await stop(buffer)


async def test_flush_does_not_wait_for_messages_queued_after_it_began() -> None:
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
