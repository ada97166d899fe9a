"""Seeking to committed offsets rewinds partitions the group never committed.

Faust drops records fetched but not yet handed to an agent when a rebalance
stops its flow, and relies on seeking every partition to its committed offset
afterwards. aiokafka seeks only offsets above 0, so a partition without a
commit stayed past the dropped records (a worker taking over from a killed one
was seen stopped at the end of such a partition, nothing processed). These
tests run the worker's seek (``stream.faust_ext.seek_uncommitted.rewind_to_committed``) on a real
consumer of the embedded broker, after it has read everything.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from kafka import KafkaProducer

from stream.embedded import create_topics
from stream.faust_ext.seek_uncommitted import rewind_to_committed


async def read_to_the_end(broker: Any, group: str, tps: list[TopicPartition]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    deadline = time.monotonic() + 20
    read = 0
    while read < 10 * len(tps):
        assert time.monotonic() < deadline, f"read {read} of {10 * len(tps)}"
        read += sum(len(r) for r in (await consumer.getmany(timeout_ms=200)).values())
    return consumer


async def positions(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> list[int]:
    return [await consumer.position(tp) for tp in tps]


async def test_uncommitted_partitions_go_back_to_their_beginning(broker: Any, unique: str) -> None:
    source, changelog = f"rewind-{unique}", f"rewind-{unique}-changelog"
    create_topics(broker.bootstrap, {source: 3, changelog: 1})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for topic, partitions in ((source, 3), (changelog, 1)):
        for p in range(partitions):
            for i in range(10):
                producer.send(topic, value=b"%d" % i, partition=p)
    producer.flush()
    producer.close()

    never, at_four, at_zero = (TopicPartition(source, p) for p in range(3))
    log = TopicPartition(changelog, 0)
    tps = [never, at_four, at_zero, log]

    # Without the worker's seek: aiokafka leaves an uncommitted partition where it is.
    plain = await read_to_the_end(broker, f"plain-{unique}", tps)
    try:
        await plain.commit({at_four: OffsetAndMetadata(4, "")})
        committed = await plain.seek_to_committed()
        assert committed[never] is None
        assert await positions(plain, tps) == [10, 4, 10, 10]
    finally:
        await plain.stop()

    consumer = await read_to_the_end(broker, f"rewind-{unique}", tps)
    try:
        await consumer.commit(
            {at_four: OffsetAndMetadata(4, ""), at_zero: OffsetAndMetadata(0, "")}
        )
        committed = await rewind_to_committed(consumer, {changelog})
        assert (committed[never], committed[at_four], committed[at_zero]) == (None, 4, 0)
        # Changelogs are left to table recovery, which seeks them itself.
        assert await positions(consumer, tps) == [0, 4, 0, 10]
        # And the records are read again from there.
        again: dict[TopicPartition, list[bytes]] = {}
        deadline = time.monotonic() + 20
        while sum(len(v) for v in again.values()) < 26:
            assert time.monotonic() < deadline, again
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                again.setdefault(tp, []).extend(r.value or b"" for r in records)
        assert again == {
            never: [b"%d" % i for i in range(10)],
            at_four: [b"%d" % i for i in range(4, 10)],
            at_zero: [b"%d" % i for i in range(10)],
        }
    finally:
        await consumer.stop()
