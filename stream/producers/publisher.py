"""Publishing touchpoints to Kafka with kafka-python: acks=all, retries, no silent drop.

The collector and the POS producer share this. ``send_and_wait`` returns only
after the broker acknowledged every record (or raises ``PublishError``), so a
caller can answer 200 or advance a checkpoint knowing the data is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from stream import contract
from stream.contract import Touchpoint
from stream.settings import BrokerSettings
from stream.topics import client_options

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes]  # (topic, key, value)

#: Kafka's default message.max.bytes is ~1 MB; packed records stay well below it.
MAX_RECORD_BYTES = 512 * 1024


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in Java, aiokafka
    and kafka-python) sends ``key`` to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def packed_records(
    topic: str,
    tps: Sequence[Touchpoint],
    partitions: int,
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[Record]:
    """Touchpoints packed into one record per destination partition (see ``stream.contract``).

    Each record is a JSON array of touchpoints whose routing keys all hash to
    one partition, keyed by the first one's routing key (so the default
    partitioner puts it on that partition). Events keep their order within a
    partition, hence within each routing key; a group is split only past
    ``max_bytes``. Consumers pay the broker's and the stream framework's
    per-message cost once per partition instead of once per customer.
    """
    groups: dict[int, list[Touchpoint]] = {}
    keys: dict[str, int] = {}
    for tp in tps:
        key = tp.routing_key
        p = keys.get(key)
        if p is None:
            p = keys[key] = partition_of(key.encode(), partitions)
        groups.setdefault(p, []).append(tp)
    return [
        (topic, part[0].routing_key.encode(), value)
        for group in groups.values()
        for part, value in _packed_values(group, max_bytes)
    ]


def _packed_values(
    group: Sequence[Touchpoint], max_bytes: int
) -> list[tuple[Sequence[Touchpoint], bytes]]:
    value = contract.dumps(group[0]) if len(group) == 1 else contract.dumps_many(group)
    if len(value) <= max_bytes or len(group) == 1:
        return [(group, value)]
    mid = len(group) // 2
    return _packed_values(group[:mid], max_bytes) + _packed_values(group[mid:], max_bytes)


class PublishError(RuntimeError):
    """The broker did not acknowledge in time (outage, timeout, rejection)."""


class Publisher:
    """A kafka-python producer with acknowledged, timed sends.

    ``ack_timeout_s`` bounds how long a send may wait for the broker; past it
    the caller gets :class:`PublishError` (the collector turns that into 503).
    """

    def __init__(self, broker: BrokerSettings, ack_timeout_s: float = 10.0) -> None:
        self.ack_timeout_s = ack_timeout_s
        timeout_ms = int(ack_timeout_s * 1000)
        self._producer = KafkaProducer(
            **client_options(broker),
            acks="all",
            retries=5,
            retry_backoff_ms=100,
            linger_ms=5,
            max_in_flight_requests_per_connection=1,  # keeps per-key order across retries
            max_block_ms=timeout_ms,
            request_timeout_ms=max(1000, timeout_ms // 2),
            delivery_timeout_ms=timeout_ms + max(1000, timeout_ms // 2),
            max_request_size=4 * 1024 * 1024,
        )
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="publish")

    def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has (waits for metadata up to the ack timeout)."""
        parts = self._producer.partitions_for(topic)
        if not parts:
            raise PublishError(f"no partitions known for topic {topic!r}")
        return len(parts)

    def send_and_wait(self, records: Iterable[Record]) -> int:
        """Send records and block until all are acknowledged; returns the count."""
        futures = []
        try:
            for topic, key, value in records:
                futures.append(self._producer.send(topic, key=key, value=value))
            self._producer.flush(timeout=self.ack_timeout_s)
            for fut in futures:
                fut.get(timeout=self.ack_timeout_s)
        except KafkaError as exc:
            raise PublishError(f"broker did not acknowledge: {exc!r}") from exc
        return len(futures)

    async def publish(self, records: Sequence[Record]) -> int:
        """Async wrapper: the blocking send runs on a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.send_and_wait, records)

    def close(self) -> None:
        try:
            self._producer.close(timeout=self.ack_timeout_s)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
