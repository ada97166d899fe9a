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
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.settings import BrokerSettings

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes]  # (topic, key, value)


class PublishError(RuntimeError):
    """The broker did not acknowledge in time (outage, timeout, rejection)."""


def client_options(broker: BrokerSettings) -> dict[str, Any]:
    """kafka-python connection options, including SASL/TLS pass-through."""
    opts: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap.split(","),
        "security_protocol": broker.security_protocol,
    }
    if broker.sasl_mechanism:
        opts["sasl_mechanism"] = broker.sasl_mechanism
        opts["sasl_plain_username"] = broker.sasl_username
        opts["sasl_plain_password"] = broker.sasl_password
    if broker.ssl_cafile:
        opts["ssl_cafile"] = broker.ssl_cafile
    return opts


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
