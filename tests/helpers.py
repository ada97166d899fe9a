"""Test helpers that read what really reached the broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition

T = TypeVar("T")


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every record currently on ``topic`` (all partitions, from the beginning).

    Reads up to the end offsets taken at call time, so it returns as soon as
    everything already acknowledged has been read.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s}s")
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 30.0, every_s: float = 0.2
) -> T:
    """Call ``probe`` until ``done(result)`` or the deadline; return the last result.

    Raises ``AssertionError`` with the last result when the deadline passes, so a
    failing test shows what it saw.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s; last: {result!r}"[:2000])
        time.sleep(every_s)
