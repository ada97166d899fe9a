"""The collector's broker connection: a :class:`Publisher` made in the background.

A request is answered 200 only once the broker acknowledged its records; this
is the one place the collector waits for that, under a deadline, so a broker
that is down or slow turns into a 503 the SDKs retry instead of a hung request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka.errors import KafkaError

from stream.producers.collector.records import HeaderRecord
from stream.producers.publisher import Publisher, PublishError, Record
from stream.settings import BrokerSettings

log = logging.getLogger(__name__)


class BrokerConnection:
    """The collector's :class:`Publisher`, connected in the background.

    kafka-python's producer bootstraps in its constructor, blocking for up to
    30 s and raising when no broker answers. Creating it on a thread lets the
    collector start, answer 503 and report its state while Kafka is down, and
    begin publishing as soon as Kafka is up.
    """

    def __init__(
        self, broker: BrokerSettings, ack_timeout_s: float, publisher: Publisher | None = None
    ) -> None:
        self.bootstrap = broker.bootstrap
        self.ack_timeout_s = ack_timeout_s
        # Publisher.publish may wait for metadata, the flush and each future in
        # turn; past this the request is answered 503 whatever the thread does.
        self.deadline_s = 2 * ack_timeout_s + 1
        self._broker = broker
        self._publisher = publisher
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_ack_at: float | None = None
        self._partitions: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    def start(self) -> None:
        """Begin connecting on a daemon thread (a no-op once connected)."""
        if self._publisher is not None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._connect, name="collector-connect", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        delay = 0.5
        while not self._closed.is_set():
            try:
                publisher = Publisher(self._broker, self.ack_timeout_s)
            except Exception as exc:  # any failure to bootstrap: keep trying
                self.last_error = f"cannot connect to the broker at {self.bootstrap}: {exc!r}"
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            with self._lock:
                if self._closed.is_set():
                    publisher.close()
                    return
                self._publisher = publisher
            log.info("connected to the broker at %s", self.bootstrap)
            return

    async def publish(
        self, records: Sequence[Record], dead_letters: Sequence[HeaderRecord]
    ) -> None:
        """Publish ``records`` and ``dead_letters``; return once the broker acknowledged all.

        Raises :class:`PublishError` when not connected, on a broker error, or
        past ``deadline_s``.
        """
        publisher = self._publisher
        if publisher is None:
            raise PublishError(
                f"not connected to the broker at {self.bootstrap}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        loop = asyncio.get_running_loop()
        sends: list[asyncio.Future[Any]] = []
        if records:
            sends.append(asyncio.ensure_future(publisher.publish(records)))
        if dead_letters:
            sends.append(
                loop.run_in_executor(None, self._send_with_headers, publisher, dead_letters)
            )
        try:
            await asyncio.wait_for(asyncio.gather(*sends), timeout=self.deadline_s)
        except TimeoutError:
            self.last_error = f"broker did not acknowledge within {self.deadline_s:g}s"
            raise PublishError(self.last_error) from None
        except PublishError as exc:
            self.last_error = str(exc)
            raise
        self.last_ack_at = time.time()

    async def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic`` (cached), or None while unknown (not connected)."""
        count = self._partitions.get(topic)
        publisher = self._publisher
        if count is None and publisher is not None:
            loop = asyncio.get_running_loop()
            try:
                count = await asyncio.wait_for(
                    loop.run_in_executor(None, publisher.partition_count, topic),
                    timeout=self.deadline_s,
                )
            except (PublishError, KafkaError, TimeoutError) as exc:
                log.warning("partitions of %s unknown (%r): one record per shopper", topic, exc)
                return None
            self._partitions[topic] = count
        return count

    def _send_with_headers(self, publisher: Publisher, records: Sequence[HeaderRecord]) -> None:
        # Publisher's Record has no headers and the dead-letter topic needs them,
        # so these go straight to its producer, with the same acknowledgement rules.
        producer = publisher._producer
        try:
            futures = [
                producer.send(topic, key=key, value=value, headers=headers)
                for topic, key, value, headers in records
            ]
            producer.flush(timeout=self.ack_timeout_s)
            for fut in futures:
                fut.get(timeout=self.ack_timeout_s)
        except KafkaError as exc:
            raise PublishError(f"broker did not acknowledge: {exc!r}") from exc

    def status(self) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "connected": self.connected,
            "last_ack_at": self.last_ack_at,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        """Stop connecting and close the publisher (blocks up to ``ack_timeout_s``)."""
        with self._lock:
            self._closed.set()
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
