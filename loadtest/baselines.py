"""The two baselines the pipeline is measured beside, in the same run.

- raw: an aiokafka consumer decoding every message with orjson and updating a
  dict per key: the limit of this machine and broker, with no stream framework.
- naive: a Faust agent that does one table write per event (memory store), the
  way a first Faust journey engine would be written.

Run as ``python -m loadtest.baselines raw|naive TOPIC EVENTS BOOTSTRAP``; each
prints one JSON line ``{"events": n, "seconds": s, "eps": n/s}`` and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import orjson


def count_events(value: bytes) -> list[dict]:
    decoded = orjson.loads(value)
    return decoded if isinstance(decoded, list) else [decoded]


async def raw(topic: str, expected: int, bootstrap: str) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        per_key: dict[str, int] = {}
        n = 0
        start = None
        while n < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                if start is None:
                    start = time.perf_counter()
                for rec in records:
                    for event in count_events(rec.value):
                        key = event.get("customer_id") or event.get("anonymous_id") or ""
                        per_key[key] = per_key.get(key, 0) + 1
                        n += 1
        seconds = time.perf_counter() - (start or time.perf_counter())
    finally:
        await consumer.stop()
    return {"events": n, "seconds": seconds, "eps": n / seconds}


def naive(topic: str, expected: int, bootstrap: str) -> None:
    """A Faust worker; exits the process after ``expected`` events."""
    import faust

    app = faust.App(
        f"naive-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=6.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        topic_partitions=len_partitions(bootstrap, topic),
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    table = app.Table("naive", default=int, partitions=app.conf.topic_partitions)
    progress = {"n": 0, "start": 0.0}

    @app.agent(source)
    async def journeys(stream: faust.StreamT) -> None:
        async for value in stream:
            if not progress["n"]:
                progress["start"] = time.perf_counter()
            for event in count_events(value):
                key = event.get("customer_id") or event.get("anonymous_id") or ""
                table[key] = table[key] + 1
                progress["n"] += 1
            if progress["n"] >= expected:
                seconds = time.perf_counter() - progress["start"]
                n = progress["n"]
                print(
                    orjson.dumps({"events": n, "seconds": seconds, "eps": n / seconds}).decode(),
                    flush=True,
                )
                os._exit(0)

    from faust.worker import Worker

    Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


def len_partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or {1})
    finally:
        consumer.close()


def main(argv: list[str]) -> int:
    kind, topic, expected, bootstrap = argv[0], argv[1], int(argv[2]), argv[3]
    if kind == "raw":
        print(orjson.dumps(asyncio.run(raw(topic, expected, bootstrap))).decode(), flush=True)
    elif kind == "naive":
        naive(topic, expected, bootstrap)
    else:
        raise SystemExit(f"unknown baseline {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
