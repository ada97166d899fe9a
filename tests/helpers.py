"""Test helpers that read what really reached the broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stream.settings import Settings, load_settings

__all__ = ["API_TOKEN", "REPO", "isolated_settings", "read_topic", "wait_for"]

#: The admin token of every test worker's HTTP API.
API_TOKEN = "test-admin-token"

#: The checkout the tests run from (deployment files under config/, docs, compose).
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every record of ``topic`` (``stream.topics.read_topic``; imported here on use, so
    pure unit tests importing these helpers do not load a Kafka client)."""
    from stream.topics import read_topic as read

    return read(bootstrap, topic, timeout_s)


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


def isolated_settings(broker_url: str, unique: str, tmp_path: Path) -> Settings:
    """Settings pointing at ``broker_url``, with topic names and files unique to ``unique``."""
    t = {
        "touchpoints": f"touchpoints-{unique}",
        "resolved": f"touchpoints.resolved-{unique}",
        "dlq": f"journey.dlq-{unique}",
        "transitions": f"journey.transitions-{unique}",
        "triggers": f"journey.triggers-{unique}",
        "timers": f"journey.timers-{unique}",
        "dispatch": f"journey.dispatch-{unique}",
        "dispatch_dlq": f"journey.dispatch.dlq-{unique}",
        "links": f"journey.links-{unique}",
        "conversions": f"journey.conversions-{unique}",
        "visits": f"journey.visits-{unique}",
        "alerts": f"journey.alerts-{unique}",
        "partitions": 4,
    }
    shipped = load_settings(environ={}).journey
    return load_settings(
        environ={},
        overrides={
            # Every customer gets every follow-up unless a test sets a holdout itself.
            "journey": {
                "abandonment": [{**r, "holdout": 0.0} for r in shipped.abandonment],
                "followups": [{**f, "holdout": 0.0} for f in shipped.followups],
            },
            "broker": {"url": broker_url},
            "topics": t,
            "worker": {
                "app_id": f"journey-{unique}",
                "data_dir": str(tmp_path / "worker"),
                # Tansu under-reports end offsets after batched writes (see settings).
                "recovery_consistency_check": False,
                "api_tokens": {API_TOKEN: "admin"},
            },
            "pos": {
                "checkpoint": str(tmp_path / "pos" / "checkpoint.json"),
                "rejects": str(tmp_path / "pos" / "rejects.jsonl"),
            },
            # A loopback test stack: the packaged placeholder secrets are fine here.
            "security": {"allow_default_secrets": True},
        },
    )
