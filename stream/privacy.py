"""``journey forget`` and ``journey export``: erase or export one customer by hand.

``forget`` puts the erase request straight on ``touchpoints.resolved`` (no
worker needs to be up: the journey agent and the dispatcher act on it when
they read it); ``export`` asks a worker's API (``GET /customers/{id}/export``),
which holds the journey, and the dispatcher's Redis data beside it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kafka import KafkaProducer

from stream.dispatch.signals import partition_for
from stream.journey.privacy import erase_message, valid_key
from stream.security import ADMIN
from stream.settings import Settings
from stream.topics import client_options


def forget(settings: Settings, customer_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """Request the erasure of ``customer_id``'s journey; returns what was sent where."""
    problem = valid_key(customer_id, settings)
    if problem:
        raise SystemExit(f"journey forget: {problem}")
    topic = settings.topics.resolved
    partition = partition_for(customer_id, settings.topics.partitions)
    at = int(time.time() * 1000)
    producer = KafkaProducer(**client_options(settings.broker), acks="all")
    try:
        meta = producer.send(topic, value=erase_message(customer_id, at), partition=partition).get(
            timeout=timeout_s
        )
    finally:
        producer.close(timeout=timeout_s)
    return {
        "customer_id": customer_id,
        "erase_requested_at": at,
        "topic": topic,
        "partition": partition,
        "offset": meta.offset,
    }


def admin_token(settings: Settings) -> str | None:
    return next((t for t, role in settings.worker.api_tokens.items() if role == ADMIN), None)


def export(settings: Settings, customer_id: str, worker_url: str | None) -> dict[str, Any]:
    """What the engine holds on ``customer_id``, from a worker's API."""
    problem = valid_key(customer_id, settings)
    if problem:
        raise SystemExit(f"journey export: {problem}")
    base = (worker_url or f"http://127.0.0.1:{settings.worker.web_port}").rstrip("/")
    url = f"{base}/customers/{urllib.parse.quote(customer_id, safe='')}/export"
    request = urllib.request.Request(url)
    token = admin_token(settings)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"journey export: {url} answered {exc.code}: {exc.read()[:200]!r}"
        ) from exc
    except OSError as exc:
        raise SystemExit(f"journey export: cannot reach the worker at {base}: {exc}") from exc
